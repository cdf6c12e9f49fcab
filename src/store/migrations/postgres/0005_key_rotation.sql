-- When each signing key starts signing. A rotated-in key is published
-- (JWKS) from its creation and signs only from this time on, so every
-- replica and every relying party knows it before any token carries it.
-- Keys from before rotation existed signed from their creation.
ALTER TABLE signing_keys ADD COLUMN activates_at BIGINT;
UPDATE signing_keys SET activates_at = created_at;
ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL;

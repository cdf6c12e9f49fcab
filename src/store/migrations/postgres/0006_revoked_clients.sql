-- A client removed, or its secret rotated: every access token of it issued
-- up to `issued_until` is revoked, JWTs included (which are recorded
-- nowhere else). Kept until the last of those tokens has expired.
CREATE TABLE revoked_clients (
    client_id     TEXT PRIMARY KEY,
    issued_until  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX revoked_clients_expires_at ON revoked_clients (expires_at);

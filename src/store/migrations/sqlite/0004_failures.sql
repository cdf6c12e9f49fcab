-- Failed attempts (sign-ins, client authentications) by kind and key, so
-- the throttles count across every replica that shares the store.
CREATE TABLE failures (
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    at          INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX failures_kind_key_at ON failures (kind, key, at);
CREATE INDEX failures_expires_at ON failures (expires_at);

-- Signing keys: generated on first start, published at the JWKS endpoint.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    private_der BYTEA NOT NULL,
    public_key  BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Opaque access tokens, looked up by the SHA-256 of the token (never the token).
CREATE TABLE access_tokens (
    token_hash  BYTEA PRIMARY KEY,
    jti         TEXT NOT NULL UNIQUE,
    client_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    scope       TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX access_tokens_expires_at ON access_tokens (expires_at);

-- Revoked access tokens (by jti) until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);

-- The three-party flow: grants (one per user approval, the root of a
-- refresh-token family), one-time codes, rotating refresh tokens, the
-- access tokens issued under each grant, login sessions and consents.

CREATE TABLE grants (
    grant_id    TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX grants_expires_at ON grants (expires_at);

CREATE TABLE authorization_codes (
    code_hash         BYTEA PRIMARY KEY,
    grant_id          TEXT NOT NULL,
    client_id         TEXT NOT NULL,
    subject           TEXT NOT NULL,
    redirect_uri      TEXT NOT NULL,
    redirect_uri_sent BOOLEAN NOT NULL,
    scope             TEXT NOT NULL,
    code_challenge    TEXT,
    expires_at        BIGINT NOT NULL,
    used_at           BIGINT
);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);

CREATE TABLE refresh_tokens (
    token_hash  BYTEA PRIMARY KEY,
    grant_id    TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    scope       TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX refresh_tokens_grant_id ON refresh_tokens (grant_id);
CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);

-- Every access token issued under a grant, so revoking the grant revokes them.
CREATE TABLE grant_access_tokens (
    jti         TEXT PRIMARY KEY,
    grant_id    TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX grant_access_tokens_grant_id ON grant_access_tokens (grant_id);

CREATE TABLE sessions (
    session_hash BYTEA PRIMARY KEY,
    subject      TEXT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE consents (
    subject     TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    PRIMARY KEY (subject, client_id)
);

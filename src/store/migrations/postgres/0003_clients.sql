-- Clients registered at run time (`portcullis clients add`), beside those
-- in the config file. Lists are stored newline-separated.
CREATE TABLE clients (
    client_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_hash   TEXT,
    public        BOOLEAN NOT NULL,
    require_pkce  BOOLEAN NOT NULL,
    redirect_uris TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    grant_types   TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

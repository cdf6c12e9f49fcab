//! Persistent state behind one trait, so the backend is chosen once at
//! start-up (SQLite embedded, the default; PostgreSQL for several replicas
//! on one database) and nothing above this module knows which one runs.
//!
//! It imports no other room: records in, records out, `StoreError` when the
//! backend cannot answer. What the rows mean is decided above it.

mod postgres;
mod shared;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

pub use postgres::PostgresStore;
pub use sqlite::{ServeLock, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("storage URL {url:?} cannot be opened: {reason}")]
    Open { url: String, reason: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// A token-signing key pair as stored. `private_der` never leaves the
/// process except into this store.
#[derive(Clone)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub private_der: Vec<u8>,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    /// When it starts signing (it is published from `created_at`).
    pub activates_at: i64,
}

/// An issued opaque access token, keyed by the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRecord {
    pub token_hash: [u8; 32],
    pub jti: String,
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// A revocation, as replicas tell each other: never a token, its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// One access token, by the SHA-256 of its value.
    Token([u8; 32]),
    /// The access tokens with these `jti`s: a grant ended.
    Grant(Vec<String>),
}

/// What one replica tells the others that share its store: what it
/// changed that they hold copies of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Revoked(Revocation),
    /// A client registered in the store was added, changed or removed.
    Client(String),
    /// A signing key was added or deleted.
    Keys,
}

/// What a replica hears from the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Told(Notice),
    /// The feed was cut and is back: anything may have been missed while
    /// it was, so what was learnt from the store before must be asked again.
    Resumed,
}

/// What the other replicas announce, in the order they announce it.
#[async_trait]
pub trait ReplicaFeed: Send {
    /// Waits for the next notice; a cut connection is retried here, and
    /// told as `Heard::Resumed` once it is back.
    async fn next(&mut self) -> Heard;
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Tells the other replicas that share this store (PostgreSQL: NOTIFY).
    /// A store that serves one process has nobody to tell.
    async fn announce(&self, _what: &Notice) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the other replicas announce; `None` for a store that serves one
    /// process.
    async fn replica_feed(&self) -> Result<Option<Box<dyn ReplicaFeed>>, StoreError> {
        Ok(None)
    }

    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// All signing keys, the one that activates last first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// Stores `key`, unless `unless_created_since` is given and a key of
    /// the same algorithm was created at or after it: so replicas starting
    /// together settle on one first key (`Some(i64::MIN)`: unless there is
    /// any), and replicas rotating on a schedule add one key, not one each.
    /// Whether it was stored.
    async fn add_signing_key(&self, key: &StoredKey, unless_created_since: Option<i64>) -> Result<bool, StoreError>;

    /// Removes a key no longer published. Whether there was one.
    async fn delete_signing_key(&self, kid: &str) -> Result<bool, StoreError>;

    async fn save_access_token(&self, record: &AccessTokenRecord) -> Result<(), StoreError>;

    async fn find_access_token(&self, token_hash: &[u8; 32]) -> Result<Option<AccessTokenRecord>, StoreError>;

    /// Marks the token `jti` revoked until `expires_at`. Idempotent.
    async fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;

    /// Revokes every access token of `client_id` issued up to
    /// `issued_until` (unix seconds), JWTs included, until `expires_at`
    /// (when the last of them has expired); with `grants`, ends its grants
    /// too, so no refresh token of it works again. Idempotent.
    async fn revoke_client(
        &self,
        client_id: &str,
        issued_until: i64,
        expires_at: i64,
        grants: bool,
    ) -> Result<(), StoreError>;

    /// Whether the access token `jti` of `client_id`, issued at
    /// `issued_at`, is revoked: by itself, or with its client's.
    async fn is_revoked(&self, jti: &str, client_id: &str, issued_at: i64) -> Result<bool, StoreError>;

    /// Deletes what expired before `now`; returns how many rows went.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;

    // --- Throttles shared by replicas -----------------------------------

    /// Counts a failed attempt of `kind` (a sign-in, a client
    /// authentication) for `key` at `at`, kept until `until`.
    async fn record_failure(&self, kind: &str, key: &str, at: i64, until: i64) -> Result<(), StoreError>;

    /// Failed attempts of `kind` for `key` since `since`, on every replica.
    async fn failures_since(&self, kind: &str, key: &str, since: i64) -> Result<u32, StoreError>;

    // --- The authorization code flow -------------------------------------

    async fn create_grant(&self, grant: &GrantRecord) -> Result<(), StoreError>;

    async fn grant_is_revoked(&self, grant_id: &str) -> Result<bool, StoreError>;

    /// Revokes a grant and everything issued under it: its refresh tokens
    /// and the jtis of its access tokens (which join `revoked_tokens`).
    /// Returns those jtis, so caches can forget them.
    async fn revoke_grant(&self, grant_id: &str, now: i64) -> Result<Vec<String>, StoreError>;

    async fn save_code(&self, code: &CodeRecord) -> Result<(), StoreError>;

    /// A code and whether it was used, without using it.
    async fn find_code(&self, code_hash: &[u8; 32]) -> Result<Option<(CodeRecord, bool)>, StoreError>;

    /// Marks a code used, atomically: of any number of concurrent calls for
    /// one code, exactly one gets `Consumed`.
    async fn consume_code(&self, code_hash: &[u8; 32], now: i64) -> Result<Consumed<CodeRecord>, StoreError>;

    async fn save_refresh_token(&self, token: &RefreshRecord) -> Result<(), StoreError>;

    /// Marks a refresh token used (rotated), atomically like `consume_code`.
    async fn consume_refresh_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Consumed<RefreshRecord>, StoreError>;

    async fn find_refresh_token(&self, token_hash: &[u8; 32]) -> Result<Option<RefreshRecord>, StoreError>;

    /// Records that access token `jti` was issued under `grant_id`.
    async fn record_grant_access_token(&self, grant_id: &str, jti: &str, expires_at: i64) -> Result<(), StoreError>;

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    async fn find_session(&self, session_hash: &[u8; 32], now: i64) -> Result<Option<SessionRecord>, StoreError>;

    async fn delete_session(&self, session_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// Ends every session of `subject` (a user removed from the config).
    async fn delete_sessions_of(&self, subject: &str) -> Result<u64, StoreError>;

    /// The grants of `subject` not yet revoked.
    async fn live_grants_of(&self, subject: &str) -> Result<Vec<String>, StoreError>;

    /// The scopes `subject` has approved for `client_id`, if any.
    async fn find_consent(&self, subject: &str, client_id: &str) -> Result<Option<String>, StoreError>;

    /// Records (replacing) the scopes `subject` approved for `client_id`.
    async fn save_consent(&self, subject: &str, client_id: &str, scope: &str, now: i64) -> Result<(), StoreError>;

    /// Every consent, or those of one subject: (subject, client_id, scope, granted_at).
    async fn list_consents(&self, subject: Option<&str>) -> Result<Vec<ConsentRecord>, StoreError>;

    /// Withdraws a consent, and revokes the grants it backed. Returns
    /// whether there was one.
    async fn delete_consent(&self, subject: &str, client_id: &str, now: i64) -> Result<bool, StoreError>;

    // --- Clients registered at run time ----------------------------------

    async fn find_client(&self, client_id: &str) -> Result<Option<StoredClient>, StoreError>;

    async fn list_clients(&self) -> Result<Vec<StoredClient>, StoreError>;

    /// Inserts a client; false when the id is taken.
    async fn insert_client(&self, client: &StoredClient) -> Result<bool, StoreError>;

    /// Deletes a client; false when there was none.
    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError>;

    /// Replaces a client's secret hash; false when there is no such client.
    async fn set_client_secret(&self, client_id: &str, secret_hash: &str) -> Result<bool, StoreError>;
}

/// A client as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClient {
    pub client_id: String,
    pub name: String,
    /// `None` for a public client.
    pub secret_hash: Option<String>,
    pub public: bool,
    pub require_pkce: bool,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub created_at: i64,
}

/// The outcome of consuming a one-time item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed<T> {
    /// This call used it.
    Consumed(T),
    /// It had been used before (a replay).
    AlreadyUsed(T),
    Unknown,
}

/// One user's approval of one client: the root of a refresh-token family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    pub code_hash: [u8; 32],
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub redirect_uri: String,
    /// Whether the authorization request named the redirect URI (then the
    /// token request must repeat it, RFC 6749 §4.1.3).
    pub redirect_uri_sent: bool,
    pub scope: String,
    pub code_challenge: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub token_hash: [u8; 32],
    pub grant_id: String,
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub used: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub session_hash: [u8; 32],
    pub subject: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    pub subject: String,
    pub client_id: String,
    pub scope: String,
    pub granted_at: i64,
}

/// Claims the store a URL names for one serving process, if it is a file
/// that two would corrupt each other's view of (see [`ServeLock`]).
pub fn lock_for_serving(url: &str) -> Result<Option<ServeLock>, StoreError> {
    if url.starts_with("sqlite:") { sqlite::lock_for_serving(url) } else { Ok(None) }
}

/// Whether a storage URL names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// How many connections a PostgreSQL store keeps, and how long a request
/// waits for one (the embedded SQLite store sizes its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { max_connections: 8, acquire_timeout: std::time::Duration::from_secs(5) }
    }
}

/// Opens the store a URL names, with the default pool.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, PoolOptions::default()).await
}

/// Opens the store a URL names.
pub async fn open_with(url: &str, pool: PoolOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if is_postgres(url) {
        Ok(Arc::new(PostgresStore::open_with(url, pool).await?))
    } else {
        Err(StoreError::Open { url: url.to_string(), reason: "unsupported scheme".into() })
    }
}

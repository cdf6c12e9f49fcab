//! Persistent state behind one trait, so the backend is chosen once at
//! start-up (SQLite embedded today; PostgreSQL for several replicas later)
//! and nothing above this module knows which one runs.

mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

pub use sqlite::SqliteStore;

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

#[async_trait]
pub trait Store: Send + Sync {
    /// A cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// All signing keys, newest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// Stores `key` unless one with the same algorithm exists already (so
    /// replicas starting together settle on one key).
    async fn insert_signing_key_if_none(&self, key: &StoredKey) -> Result<(), StoreError>;

    async fn save_access_token(&self, record: &AccessTokenRecord) -> Result<(), StoreError>;

    async fn find_access_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<AccessTokenRecord>, StoreError>;

    /// Marks the token `jti` revoked until `expires_at`. Idempotent.
    async fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), StoreError>;

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    /// Deletes what expired before `now`; returns how many rows went.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;
}

/// Opens the store a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::Open {
            url: url.to_string(),
            reason: "unsupported scheme".into(),
        })
    }
}

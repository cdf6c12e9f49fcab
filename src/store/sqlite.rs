//! The embedded SQLite store: WAL mode with a busy timeout, so readers never
//! wait for the writer and concurrent writers queue instead of failing.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::shared::{add_signing_key_query, impl_store, migrator, stored_client};
use super::{
    AccessTokenRecord, CodeRecord, ConsentRecord, Consumed, GrantRecord, RefreshRecord, SessionRecord, Store,
    StoreError, StoredClient, StoredKey,
};

/// Schema migrations, numbered alike for every backend.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/sqlite/0001_init.sql")),
    (2, "authorization_code", include_str!("migrations/sqlite/0002_authorization_code.sql")),
    (3, "clients", include_str!("migrations/sqlite/0003_clients.sql")),
    (4, "failures", include_str!("migrations/sqlite/0004_failures.sql")),
    (5, "key_rotation", include_str!("migrations/sqlite/0005_key_rotation.sql")),
    (6, "revoked_clients", include_str!("migrations/sqlite/0006_revoked_clients.sql")),
];

pub struct SqliteStore {
    pool: SqlitePool,
}

/// A serving gateway's claim on its SQLite file: an exclusive `flock` on
/// `<file>.lock`, held while it lives. Two gateways on one file would
/// each cache what the other revoked and race on its writes; the second is
/// refused instead. The `clients` and `consents` commands take no claim:
/// they are meant to run beside the gateway.
pub struct ServeLock {
    _file: std::fs::File,
}

/// Whether a `sqlite:` URL names an in-memory database, which sqlx opens
/// under a made-up file name (`file:sqlx-in-memory-N`), not a file of its
/// own.
fn is_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.starts_with(":memory:") || rest.split(['?', '&']).any(|param| param == "mode=memory")
}

/// Claims the file a `sqlite:` URL names for one serving process (nothing
/// to claim for `:memory:`).
pub fn lock_for_serving(url: &str) -> Result<Option<ServeLock>, StoreError> {
    use std::io::{Read as _, Seek as _, Write as _};
    let open_err = |reason: String| StoreError::Open { url: url.to_string(), reason };
    let options = SqliteConnectOptions::from_str(url).map_err(|e| open_err(e.to_string()))?;
    if is_in_memory(url) {
        return Ok(None);
    }
    let file = options.get_filename();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let path = {
        let mut p = file.as_os_str().to_owned();
        p.push(".lock");
        std::path::PathBuf::from(p)
    };
    let mut lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| open_err(format!("cannot open {}: {e}", path.display())))?;
    if let Err(e) = rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        if e != rustix::io::Errno::WOULDBLOCK {
            return Err(open_err(format!("cannot lock {}: {e}", path.display())));
        }
        let mut holder = String::new();
        let _ = lock.read_to_string(&mut holder);
        let holder = holder.trim();
        let who = if holder.is_empty() { String::new() } else { format!(" (process {holder})") };
        return Err(open_err(format!(
            "another portcullis serve{who} holds {}: two gateways must not share one SQLite file",
            path.display()
        )));
    }
    // Who holds it, for the next one's error message.
    let _ = lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| writeln!(lock, "{}", std::process::id()));
    Ok(Some(ServeLock { _file: lock }))
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite:` URL names, and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let open_err = |reason: String| StoreError::Open { url: url.to_string(), reason };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_err(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses nothing on a process crash (kill -9);
            // only an OS crash may lose the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let file = options.get_filename().to_path_buf();
        let in_memory = file == Path::new(":memory:");
        // A file's connections keep 512 KiB of its pages each (2 MiB for
        // the four), not SQLite's 2,000 KiB: the kernel's page cache holds
        // the file anyway, and a 10-minute soak saw the gateway's memory
        // climb 2 MB at a time for as long as it ran, as the default
        // caches filled with a growing database. (An in-memory database
        // is its page cache.)
        let options = if in_memory { options } else { options.pragma("cache_size", "-512") };
        if !in_memory && let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Each connection to ":memory:" would be a database of its own.
        let connections = if in_memory { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(connections)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        migrator(MIGRATIONS).run(&pool).await.map_err(|e| open_err(format!("migration failed: {e}")))?;
        // The rest of the connections, opened here and kept (no idle timeout,
        // no lifetime): each has a thread of its own, which takes the CPU set
        // of the thread that opens it, and a public worker may be pinned to
        // one CPU (`affinity`). One after the other, and only now: opened
        // together on a new file, they would race to switch it to WAL, and
        // the loser gets "database is locked" without waiting.
        let mut opened = Vec::with_capacity(connections as usize);
        for _ in 0..connections {
            opened.push(pool.acquire().await.map_err(|e| open_err(e.to_string()))?);
        }
        drop(opened);
        Ok(SqliteStore { pool })
    }
}

impl SqliteStore {
    /// A transaction for a revocation, taking the write lock at its start
    /// (`BEGIN IMMEDIATE`): no writer slips between its reads and writes.
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn in_memory_databases_have_no_file_to_claim() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://x.db?mode=memory",
            "sqlite:x.db?cache=shared&mode=memory",
        ] {
            assert!(is_in_memory(url), "{url}");
            assert!(lock_for_serving(url).expect("no error").is_none(), "{url}");
        }
        assert!(!is_in_memory("sqlite://data/portcullis.db"));
        assert!(!is_in_memory("sqlite://memory.db"));
    }
}

impl_store!(SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // A table the hot path reads (revocation checks), not a bare
        // `SELECT 1`, which SQLite answers without touching the database:
        // readiness should fail when validation would.
        sqlx::query("SELECT 1 FROM revoked_tokens LIMIT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn add_signing_key(&self, key: &StoredKey, unless_created_since: Option<i64>) -> Result<bool, StoreError> {
        // One statement, and SQLite has one writer: the check and the
        // insert cannot interleave with another's.
        let added = add_signing_key_query!(key, unless_created_since)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        Ok(added)
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let mut rows = 0;
        for table in [
            "access_tokens",
            "revoked_tokens",
            "authorization_codes",
            "refresh_tokens",
            "grant_access_tokens",
            "sessions",
            "grants",
            "failures",
            "revoked_clients",
        ] {
            // Table names come from the list above, never from input.
            let sql = format!("DELETE FROM {table} WHERE expires_at < ?");
            rows += sqlx::query(&sql).bind(now).execute(&self.pool).await?.rows_affected();
        }
        Ok(rows)
    }

    async fn save_refresh_token(&self, t: &RefreshRecord) -> Result<(), StoreError> {
        sqlx::query(
            // A refresh token minted after its grant was revoked starts out
            // used, so it can never refresh.
            "INSERT INTO refresh_tokens (token_hash, grant_id, client_id, subject, scope, issued_at, expires_at, used_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT revoked_at FROM grants WHERE grant_id = ?))",
        )
        .bind(&t.token_hash[..])
        .bind(&t.grant_id)
        .bind(&t.client_id)
        .bind(&t.subject)
        .bind(&t.scope)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .bind(&t.grant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_grant_access_token(&self, grant_id: &str, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        // One transaction with revoke_grant's: either the revocation sees
        // this jti, or this sees the grant already revoked and revokes the
        // jti itself (a token won in a race with a replay dies with it).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO grant_access_tokens (jti, grant_id, expires_at) VALUES (?, ?, ?)")
            .bind(jti)
            .bind(grant_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at)
             SELECT ?, ? WHERE EXISTS (SELECT 1 FROM grants WHERE grant_id = ? AND revoked_at IS NOT NULL)
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(expires_at)
        .bind(grant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_settle_on_one_and_revocations_are_idempotent() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let key = |kid: &str| StoredKey {
            kid: kid.into(),
            alg: "EdDSA".into(),
            private_der: vec![1],
            public_key: vec![2],
            created_at: 1,
            activates_at: 1,
        };
        assert!(store.add_signing_key(&key("a"), Some(i64::MIN)).await.unwrap());
        assert!(!store.add_signing_key(&key("b"), Some(i64::MIN)).await.unwrap());
        let keys = store.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, "a");

        assert!(!store.is_revoked("j", "app", 5).await.unwrap());
        store.revoke("j", 10).await.unwrap();
        store.revoke("j", 10).await.unwrap();
        assert!(store.is_revoked("j", "app", 5).await.unwrap());
        assert_eq!(store.purge_expired(11).await.unwrap(), 1);
        assert!(!store.is_revoked("j", "app", 5).await.unwrap());
    }
}

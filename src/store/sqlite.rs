//! The embedded SQLite store: WAL mode with a busy timeout, so readers never
//! wait for the writer and concurrent writers queue instead of failing.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

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
        let file = options.get_filename();
        let in_memory = file == Path::new(":memory:");
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
        let migrator = Migrator {
            migrations: Cow::Owned(
                MIGRATIONS
                    .iter()
                    .map(|(v, d, sql)| {
                        Migration::new(*v, Cow::Borrowed(d), MigrationType::Simple, Cow::Borrowed(sql), false)
                    })
                    .collect(),
            ),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        migrator.run(&pool).await.map_err(|e| open_err(format!("migration failed: {e}")))?;
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

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // A table the hot path reads (revocation checks), not a bare
        // `SELECT 1`, which SQLite answers without touching the database:
        // readiness should fail when validation would.
        sqlx::query("SELECT 1 FROM revoked_tokens LIMIT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_der, public_key, created_at FROM signing_keys ORDER BY created_at DESC, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredKey {
                kid: r.get("kid"),
                alg: r.get("alg"),
                private_der: r.get("private_der"),
                public_key: r.get("public_key"),
                created_at: r.get("created_at"),
            })
            .collect())
    }

    async fn insert_signing_key_if_none(&self, key: &StoredKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_der, public_key, created_at)
             SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE alg = ?)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.private_der)
        .bind(&key.public_key)
        .bind(key.created_at)
        .bind(&key.alg)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn save_access_token(&self, r: &AccessTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, jti, client_id, subject, scope, issued_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.token_hash[..])
        .bind(&r.jti)
        .bind(&r.client_id)
        .bind(&r.subject)
        .bind(&r.scope)
        .bind(r.issued_at)
        .bind(r.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_access_token(&self, token_hash: &[u8; 32]) -> Result<Option<AccessTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT jti, client_id, subject, scope, issued_at, expires_at FROM access_tokens WHERE token_hash = ?",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| AccessTokenRecord {
            token_hash: *token_hash,
            jti: r.get("jti"),
            client_id: r.get("client_id"),
            subject: r.get("subject"),
            scope: r.get("scope"),
            issued_at: r.get("issued_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    async fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = ?").bind(jti).fetch_optional(&self.pool).await?;
        Ok(row.is_some())
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
        ] {
            // Table names come from the list above, never from input.
            let sql = format!("DELETE FROM {table} WHERE expires_at < ?");
            rows += sqlx::query(&sql).bind(now).execute(&self.pool).await?.rows_affected();
        }
        Ok(rows)
    }

    async fn record_failure(&self, kind: &str, key: &str, at: i64, until: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO failures (kind, key, at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(kind)
            .bind(key)
            .bind(at)
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn failures_since(&self, kind: &str, key: &str, since: i64) -> Result<u32, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM failures WHERE kind = ? AND key = ? AND at >= ?")
            .bind(kind)
            .bind(key)
            .bind(since)
            .fetch_one(&self.pool)
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn create_grant(&self, g: &GrantRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO grants (grant_id, client_id, subject, scope, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&g.grant_id)
        .bind(&g.client_id)
        .bind(&g.subject)
        .bind(&g.scope)
        .bind(g.created_at)
        .bind(g.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn grant_is_revoked(&self, grant_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT revoked_at FROM grants WHERE grant_id = ?")
            .bind(grant_id)
            .fetch_optional(&self.pool)
            .await?;
        // An unknown grant (purged after expiry) counts as revoked.
        Ok(row.is_none_or(|r| r.get::<Option<i64>, _>("revoked_at").is_some()))
    }

    async fn revoke_grant(&self, grant_id: &str, now: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE grants SET revoked_at = COALESCE(revoked_at, ?) WHERE grant_id = ?")
            .bind(now)
            .bind(grant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE refresh_tokens SET used_at = COALESCE(used_at, ?) WHERE grant_id = ?")
            .bind(now)
            .bind(grant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at)
             SELECT jti, expires_at FROM grant_access_tokens WHERE grant_id = ?
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(grant_id)
        .execute(&mut *tx)
        .await?;
        let jtis = sqlx::query("SELECT jti FROM grant_access_tokens WHERE grant_id = ?")
            .bind(grant_id)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| r.get("jti"))
            .collect();
        tx.commit().await?;
        Ok(jtis)
    }

    async fn save_code(&self, c: &CodeRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, grant_id, client_id, subject, redirect_uri, redirect_uri_sent,
                scope, code_challenge, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.code_hash[..])
        .bind(&c.grant_id)
        .bind(&c.client_id)
        .bind(&c.subject)
        .bind(&c.redirect_uri)
        .bind(c.redirect_uri_sent)
        .bind(&c.scope)
        .bind(&c.code_challenge)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_code(&self, code_hash: &[u8; 32]) -> Result<Option<(CodeRecord, bool)>, StoreError> {
        let row = sqlx::query(
            "SELECT grant_id, client_id, subject, redirect_uri, redirect_uri_sent, scope, code_challenge, expires_at,
                used_at FROM authorization_codes WHERE code_hash = ?",
        )
        .bind(&code_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            let record = CodeRecord {
                code_hash: *code_hash,
                grant_id: r.get("grant_id"),
                client_id: r.get("client_id"),
                subject: r.get("subject"),
                redirect_uri: r.get("redirect_uri"),
                redirect_uri_sent: r.get("redirect_uri_sent"),
                scope: r.get("scope"),
                code_challenge: r.get("code_challenge"),
                expires_at: r.get("expires_at"),
            };
            (record, r.get::<Option<i64>, _>("used_at").is_some())
        }))
    }

    async fn consume_code(&self, code_hash: &[u8; 32], now: i64) -> Result<Consumed<CodeRecord>, StoreError> {
        // The conditional UPDATE is the atomic step: SQLite serialises
        // writers, and only one sees `used_at IS NULL`.
        let won = sqlx::query("UPDATE authorization_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL")
            .bind(now)
            .bind(&code_hash[..])
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1;
        let Some((record, _)) = self.find_code(code_hash).await? else { return Ok(Consumed::Unknown) };
        Ok(if won { Consumed::Consumed(record) } else { Consumed::AlreadyUsed(record) })
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

    async fn consume_refresh_token(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Consumed<RefreshRecord>, StoreError> {
        let won = sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL")
            .bind(now)
            .bind(&token_hash[..])
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1;
        Ok(match self.find_refresh_token(token_hash).await? {
            None => Consumed::Unknown,
            Some(r) if won => Consumed::Consumed(r),
            Some(r) => Consumed::AlreadyUsed(r),
        })
    }

    async fn find_refresh_token(&self, token_hash: &[u8; 32]) -> Result<Option<RefreshRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT grant_id, client_id, subject, scope, issued_at, expires_at, used_at FROM refresh_tokens
             WHERE token_hash = ?",
        )
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| RefreshRecord {
            token_hash: *token_hash,
            grant_id: r.get("grant_id"),
            client_id: r.get("client_id"),
            subject: r.get("subject"),
            scope: r.get("scope"),
            issued_at: r.get("issued_at"),
            expires_at: r.get("expires_at"),
            used: r.get::<Option<i64>, _>("used_at").is_some(),
        }))
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

    async fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (session_hash, subject, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&s.session_hash[..])
        .bind(&s.subject)
        .bind(&s.csrf_token)
        .bind(s.created_at)
        .bind(s.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(&self, session_hash: &[u8; 32], now: i64) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT subject, csrf_token, created_at, expires_at FROM sessions WHERE session_hash = ? AND expires_at > ?",
        )
        .bind(&session_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| SessionRecord {
            session_hash: *session_hash,
            subject: r.get("subject"),
            csrf_token: r.get("csrf_token"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    async fn delete_session(&self, session_hash: &[u8; 32]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE session_hash = ?").bind(&session_hash[..]).execute(&self.pool).await?;
        Ok(())
    }

    async fn find_consent(&self, subject: &str, client_id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT scope FROM consents WHERE subject = ? AND client_id = ?")
            .bind(subject)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("scope")))
    }

    async fn save_consent(&self, subject: &str, client_id: &str, scope: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO consents (subject, client_id, scope, granted_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (subject, client_id) DO UPDATE SET scope = excluded.scope, granted_at = excluded.granted_at",
        )
        .bind(subject)
        .bind(client_id)
        .bind(scope)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_consents(&self, subject: Option<&str>) -> Result<Vec<ConsentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT subject, client_id, scope, granted_at FROM consents WHERE ?1 IS NULL OR subject = ?1
             ORDER BY subject, client_id",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConsentRecord {
                subject: r.get("subject"),
                client_id: r.get("client_id"),
                scope: r.get("scope"),
                granted_at: r.get("granted_at"),
            })
            .collect())
    }

    async fn delete_consent(&self, subject: &str, client_id: &str, now: i64) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM consents WHERE subject = ? AND client_id = ?")
            .bind(subject)
            .bind(client_id)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0;
        // Withdrawing consent ends what it allowed: the grants it backed.
        let grants: Vec<String> =
            sqlx::query("SELECT grant_id FROM grants WHERE subject = ? AND client_id = ? AND revoked_at IS NULL")
                .bind(subject)
                .bind(client_id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| r.get("grant_id"))
                .collect();
        for grant in grants {
            self.revoke_grant(&grant, now).await?;
        }
        Ok(deleted)
    }

    async fn find_client(&self, client_id: &str) -> Result<Option<StoredClient>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM clients WHERE client_id = ?").bind(client_id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| stored_client(&r)))
    }

    async fn list_clients(&self) -> Result<Vec<StoredClient>, StoreError> {
        let rows = sqlx::query("SELECT * FROM clients ORDER BY client_id").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(stored_client).collect())
    }

    async fn insert_client(&self, c: &StoredClient) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO clients (client_id, name, secret_hash, public, require_pkce, redirect_uris, scopes, grant_types,
                created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO NOTHING",
        )
        .bind(&c.client_id)
        .bind(&c.name)
        .bind(&c.secret_hash)
        .bind(c.public)
        .bind(c.require_pkce)
        .bind(c.redirect_uris.join("\n"))
        .bind(c.scopes.join("\n"))
        .bind(c.grant_types.join("\n"))
        .bind(c.created_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("DELETE FROM clients WHERE client_id = ?").bind(client_id).execute(&self.pool).await?;
        Ok(n.rows_affected() == 1)
    }

    async fn set_client_secret(&self, client_id: &str, secret_hash: &str) -> Result<bool, StoreError> {
        let n = sqlx::query("UPDATE clients SET secret_hash = ? WHERE client_id = ? AND public = 0")
            .bind(secret_hash)
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        Ok(n.rows_affected() == 1)
    }
}

fn stored_client(r: &sqlx::sqlite::SqliteRow) -> StoredClient {
    let list = |col: &str| -> Vec<String> {
        r.get::<String, _>(col).split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    };
    StoredClient {
        client_id: r.get("client_id"),
        name: r.get("name"),
        secret_hash: r.get("secret_hash"),
        public: r.get("public"),
        require_pkce: r.get("require_pkce"),
        redirect_uris: list("redirect_uris"),
        scopes: list("scopes"),
        grant_types: list("grant_types"),
        created_at: r.get("created_at"),
    }
}

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
        };
        store.insert_signing_key_if_none(&key("a")).await.unwrap();
        store.insert_signing_key_if_none(&key("b")).await.unwrap();
        let keys = store.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, "a");

        assert!(!store.is_revoked("j").await.unwrap());
        store.revoke("j", 10).await.unwrap();
        store.revoke("j", 10).await.unwrap();
        assert!(store.is_revoked("j").await.unwrap());
        assert_eq!(store.purge_expired(11).await.unwrap(), 1);
        assert!(!store.is_revoked("j").await.unwrap());
    }
}

//! The PostgreSQL store, for several replicas on one database: the same
//! schema as SQLite's (numbered alike, BIGINT for integers, BYTEA for
//! hashes, BOOLEAN for flags), migrations run at start under sqlx's
//! advisory lock (so replicas starting together take turns), and every
//! one-time item consumed by a conditional UPDATE whose row count says who
//! won, whichever replica asks.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::shared::{add_signing_key_query, impl_store, migrator, stored_client};
use super::{
    AccessTokenRecord, CodeRecord, ConsentRecord, Consumed, GrantRecord, Heard, Notice, PoolOptions, RefreshRecord,
    ReplicaFeed, Revocation, SessionRecord, Store, StoreError, StoredClient, StoredKey,
};

/// Schema migrations, numbered as SQLite's are.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/postgres/0001_init.sql")),
    (2, "authorization_code", include_str!("migrations/postgres/0002_authorization_code.sql")),
    (3, "clients", include_str!("migrations/postgres/0003_clients.sql")),
    (4, "failures", include_str!("migrations/postgres/0004_failures.sql")),
    (5, "key_rotation", include_str!("migrations/postgres/0005_key_rotation.sql")),
    (6, "revoked_clients", include_str!("migrations/postgres/0006_revoked_clients.sql")),
];

/// The advisory lock that makes "add a signing key unless one is new
/// enough" one step across replicas (an arbitrary constant of this project's).
const SIGNING_KEY_LOCK: i64 = 0x706f_7274_6b65_7973; // "portkeys"

/// The channel replicas announce what they changed on.
const NOTICES: &str = "portcullis_notices";

/// jtis per notification: PostgreSQL caps a payload at 8000 bytes, and a
/// jti is 43 characters.
const JTIS_PER_NOTICE: usize = 150;

/// The advisory lock one replica holds while it purges expired rows.
const PURGE_LOCK: i64 = 0x706f_7274_7075_7267; // "portpurg"

/// Rows deleted per statement when purging.
const PURGE_BATCH: u64 = 5_000;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database a `postgres://` URL names, and brings its
    /// schema up to date.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::open_with(url, PoolOptions::default()).await
    }

    /// `open`, with a pool of `pool.max_connections` (one of them kept by
    /// the revocation feed) and requests waiting at most
    /// `pool.acquire_timeout` for a connection.
    pub async fn open_with(url: &str, pool: PoolOptions) -> Result<PostgresStore, StoreError> {
        let open_err = |reason: String| StoreError::Open { url: redacted(url), reason };
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .connect(url)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        migrator(MIGRATIONS).run(&pool).await.map_err(|e| open_err(format!("migration failed: {e}")))?;
        Ok(PostgresStore { pool })
    }
}

impl PostgresStore {
    /// A transaction for a revocation: under READ COMMITTED, the row locks
    /// its statements take order it against issuance (see
    /// `record_grant_access_token`).
    async fn write_transaction(&self) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

/// A URL as errors may show it: without its password
/// (`postgres://user:***@host/db`).
fn redacted(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && !userinfo.contains('/')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

/// A notification's payload: `t:<hex hash>` or `g:<jti>,<jti>,…` (a
/// revocation), `c:<client id>`, or `k:` (the signing keys).
fn payloads(what: &Notice) -> Vec<String> {
    match what {
        Notice::Revoked(Revocation::Token(hash)) => vec![format!("t:{}", hex(hash))],
        Notice::Revoked(Revocation::Grant(jtis)) => {
            jtis.chunks(JTIS_PER_NOTICE).map(|c| format!("g:{}", c.join(","))).collect()
        }
        Notice::Client(client_id) => vec![format!("c:{client_id}")],
        Notice::Keys => vec!["k:".to_string()],
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The notice a payload carries; `None` for anything else (a payload this
/// version does not know is ignored, not guessed at).
fn parse_payload(payload: &str) -> Option<Notice> {
    let (kind, rest) = payload.split_once(':')?;
    match kind {
        "t" => {
            let mut hash = [0u8; 32];
            if rest.len() != 64 {
                return None;
            }
            for (i, byte) in hash.iter_mut().enumerate() {
                *byte = u8::from_str_radix(rest.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(Notice::Revoked(Revocation::Token(hash)))
        }
        "g" => Some(Notice::Revoked(Revocation::Grant(
            rest.split(',').filter(|j| !j.is_empty()).map(str::to_owned).collect(),
        ))),
        "c" if !rest.is_empty() => Some(Notice::Client(rest.to_string())),
        "k" => Some(Notice::Keys),
        _ => None,
    }
}

/// Whether `grant_id` is revoked, read under a share lock on
/// its row, held to the end of `tx`: a revocation's UPDATE waits for the
/// transaction, or the read waits for the revocation's commit and sees it.
async fn grant_revoked_locked(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    grant_id: &str,
) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT revoked_at FROM grants WHERE grant_id = $1 FOR SHARE")
        .bind(grant_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some_and(|r| r.get::<Option<i64>, _>("revoked_at").is_some()))
}

/// `LISTEN` on the notice channel, on a connection of its own.
struct Feed {
    pool: PgPool,
    listener: PgListener,
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTICES).await?;
    Ok(listener)
}

#[async_trait]
impl ReplicaFeed for Feed {
    async fn next(&mut self) -> Heard {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(notice)) => match parse_payload(notice.payload()) {
                    Some(what) => return Heard::Told(what),
                    None => tracing::warn!("ignored a notice from a replica that this version cannot read"),
                },
                // Cut, and reconnected at once by sqlx.
                Ok(None) => {
                    tracing::warn!("the replica feed was cut and is back");
                    return Heard::Resumed;
                }
                Err(e) => {
                    // Reconnected here rather than by the next `try_recv`,
                    // which would say nothing until a notice came: the
                    // return is told as soon as it happens.
                    tracing::error!(error = %e, "the replica feed is cut; retrying every second");
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if let Ok(listener) = listen(&self.pool).await {
                            self.listener = listener;
                            tracing::warn!("the replica feed is back");
                            return Heard::Resumed;
                        }
                    }
                }
            }
        }
    }
}

impl_store!(PostgresStore {
    async fn announce(&self, what: &Notice) -> Result<(), StoreError> {
        for payload in payloads(what) {
            sqlx::query("SELECT pg_notify($1, $2)").bind(NOTICES).bind(payload).execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn replica_feed(&self) -> Result<Option<Box<dyn ReplicaFeed>>, StoreError> {
        let listener = listen(&self.pool).await?;
        Ok(Some(Box::new(Feed { pool: self.pool.clone(), listener })))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A table the hot path reads (revocation checks): readiness should
        // fail when validation would.
        sqlx::query("SELECT 1 FROM revoked_tokens LIMIT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn add_signing_key(&self, key: &StoredKey, unless_created_since: Option<i64>) -> Result<bool, StoreError> {
        // Replicas starting (or rotating) together: under READ COMMITTED
        // two could each see no recent key and insert their own, so the
        // check and the insert run under one lock, held to the end of the
        // transaction.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(SIGNING_KEY_LOCK).execute(&mut *tx).await?;
        let added = add_signing_key_query!(key, unless_created_since)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(added)
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        // One replica at a time: the others find the lock taken and skip
        // this round. A session lock, on the connection that deletes.
        let mut conn = self.pool.acquire().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(PURGE_LOCK).fetch_one(&mut *conn).await?;
        if !locked {
            return Ok(0);
        }
        let mut rows = 0;
        let purged: Result<(), sqlx::Error> = async {
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
                // Bounded batches: no statement holds millions of row locks
                // or one long transaction.
                let sql = format!(
                    "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE expires_at < $1 LIMIT {PURGE_BATCH})"
                );
                loop {
                    let n = sqlx::query(&sql).bind(now).execute(&mut *conn).await?.rows_affected();
                    rows += n;
                    if n < PURGE_BATCH {
                        break;
                    }
                }
            }
            Ok(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock($1)").bind(PURGE_LOCK).execute(&mut *conn).await?;
        purged?;
        Ok(rows)
    }

    async fn save_refresh_token(&self, t: &RefreshRecord) -> Result<(), StoreError> {
        // Under the grant's row lock, as `record_grant_access_token`.
        let mut tx = self.pool.begin().await?;
        grant_revoked_locked(&mut tx, &t.grant_id).await?;
        sqlx::query(
            // A refresh token minted after its grant was revoked starts out
            // used, so it can never refresh.
            "INSERT INTO refresh_tokens (token_hash, grant_id, client_id, subject, scope, issued_at, expires_at, used_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, (SELECT revoked_at FROM grants WHERE grant_id = $8))",
        )
        .bind(&t.token_hash[..])
        .bind(&t.grant_id)
        .bind(&t.client_id)
        .bind(&t.subject)
        .bind(&t.scope)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .bind(&t.grant_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_grant_access_token(&self, grant_id: &str, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        // Either the revocation sees this jti, or this sees the grant
        // revoked and revokes the jti itself (a token won in a race with a
        // replay dies with it). Under READ COMMITTED that takes the grant's
        // row lock: a revocation in progress holds it from its UPDATE to
        // its commit, and the read below then sees its result; a revocation
        // that comes after waits for this insert, and its later statements
        // see the jti.
        let mut tx = self.pool.begin().await?;
        let revoked = grant_revoked_locked(&mut tx, grant_id).await?;
        sqlx::query("INSERT INTO grant_access_tokens (jti, grant_id, expires_at) VALUES ($1, $2, $3)")
            .bind(jti)
            .bind(grant_id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        if revoked {
            sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
                .bind(jti)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_read_back_as_written_and_fit_a_notice() {
        for one in [Notice::Revoked(Revocation::Token([0xab; 32])), Notice::Client("app".into()), Notice::Keys] {
            assert_eq!(payloads(&one).iter().map(|p| parse_payload(p)).collect::<Vec<_>>(), [Some(one)]);
        }
        let jtis: Vec<String> = (0..400).map(|i| format!("{i:0>43}")).collect();
        let notices = payloads(&Notice::Revoked(Revocation::Grant(jtis.clone())));
        assert_eq!(notices.len(), 3);
        assert!(notices.iter().all(|p| p.len() < 8000), "PostgreSQL's payload limit");
        let back: Vec<String> = notices
            .iter()
            .flat_map(|p| match parse_payload(p) {
                Some(Notice::Revoked(Revocation::Grant(j))) => j,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(back, jtis);
        for junk in ["", "t:zz", "t:abc", "x:1", "t:\u{e9}\u{e9}", "c:", "k"] {
            assert_eq!(parse_payload(junk), None, "{junk:?}");
        }
    }
}

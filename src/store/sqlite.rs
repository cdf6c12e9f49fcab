//! The embedded SQLite store: WAL mode with a busy timeout, so readers never
//! wait for the writer and concurrent writers queue instead of failing.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{AccessTokenRecord, Store, StoreError, StoredKey};

/// Schema migrations, numbered alike for every backend.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("migrations/sqlite/0001_init.sql"))];

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database a `sqlite:` URL names, and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            url: url.to_string(),
            reason,
        };
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
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let pool = SqlitePoolOptions::new()
            // Each connection to ":memory:" would be a database of its own.
            .max_connections(if in_memory { 1 } else { 4 })
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
                        Migration::new(
                            *v,
                            Cow::Borrowed(d),
                            MigrationType::Simple,
                            Cow::Borrowed(sql),
                            false,
                        )
                    })
                    .collect(),
            ),
            ignore_missing: false,
            locking: true,
            no_tx: false,
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        Ok(SqliteStore { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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

    async fn find_access_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<AccessTokenRecord>, StoreError> {
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
        let row = sqlx::query("SELECT 1 FROM revoked_tokens WHERE jti = ?")
            .bind(jti)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        let a = sqlx::query("DELETE FROM access_tokens WHERE expires_at < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let b = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(a.rows_affected() + b.rows_affected())
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

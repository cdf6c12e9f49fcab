//! The queries both backends run alike, written once. Placeholders are
//! numbered (`$1`, `$2`, …), which PostgreSQL reads natively and SQLite
//! reads positionally; what differs (locks, transactions, dialect) stays
//! in each backend's own methods. `impl_store!` writes a backend's
//! `impl Store` from its own methods and these, where `self.pool` is its
//! pool and `self.write_transaction()` its way to begin a revocation.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::StoredClient;

/// The migrator for a backend's numbered migrations (`(version,
/// description, SQL)`), run at start under sqlx's lock, so replicas
/// starting together take turns.
pub(super) fn migrator(migrations: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            migrations
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(*v, Cow::Borrowed(d), MigrationType::Simple, Cow::Borrowed(sql), false)
                })
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

macro_rules! impl_store {
    ($store:ty { $($own:tt)* }) => {
        #[async_trait::async_trait]
        impl Store for $store {
            $($own)*

            async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
                let rows = sqlx::query(
                    "SELECT kid, alg, private_der, public_key, created_at, activates_at FROM signing_keys
                     ORDER BY activates_at DESC, created_at DESC, kid",
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
                        activates_at: r.get("activates_at"),
                    })
                    .collect())
            }

            async fn delete_signing_key(&self, kid: &str) -> Result<bool, StoreError> {
                let n = sqlx::query("DELETE FROM signing_keys WHERE kid = $1").bind(kid).execute(&self.pool).await?;
                Ok(n.rows_affected() == 1)
            }

            async fn save_access_token(&self, r: &AccessTokenRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO access_tokens (token_hash, jti, client_id, subject, scope, issued_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
                    "SELECT jti, client_id, subject, scope, issued_at, expires_at FROM access_tokens WHERE token_hash = $1",
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
                sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
                    .bind(jti)
                    .bind(expires_at)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn is_revoked(&self, jti: &str, client_id: &str, issued_at: i64) -> Result<bool, StoreError> {
                // One round trip for both: this is every cache miss's query.
                let row = sqlx::query(
                    "SELECT 1 FROM revoked_tokens WHERE jti = $1
                     UNION ALL
                     SELECT 1 FROM revoked_clients WHERE client_id = $2 AND issued_until >= $3
                     LIMIT 1",
                )
                .bind(jti)
                .bind(client_id)
                .bind(issued_at)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.is_some())
            }

            async fn revoke_client(
                &self,
                client_id: &str,
                issued_until: i64,
                expires_at: i64,
                grants: bool,
            ) -> Result<(), StoreError> {
                let mut tx = self.write_transaction().await?;
                // Never moved back by a second revocation with an earlier
                // time (a CLI on a clock behind).
                sqlx::query(
                    "INSERT INTO revoked_clients (client_id, issued_until, expires_at) VALUES ($1, $2, $3)
                     ON CONFLICT (client_id) DO UPDATE SET
                       issued_until = CASE WHEN excluded.issued_until > revoked_clients.issued_until
                                      THEN excluded.issued_until ELSE revoked_clients.issued_until END,
                       expires_at = CASE WHEN excluded.expires_at > revoked_clients.expires_at
                                    THEN excluded.expires_at ELSE revoked_clients.expires_at END",
                )
                .bind(client_id)
                .bind(issued_until)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                if grants {
                    sqlx::query("UPDATE grants SET revoked_at = COALESCE(revoked_at, $1) WHERE client_id = $2")
                        .bind(issued_until)
                        .bind(client_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE refresh_tokens SET used_at = COALESCE(used_at, $1) WHERE client_id = $2")
                        .bind(issued_until)
                        .bind(client_id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn record_failure(&self, kind: &str, key: &str, at: i64, until: i64) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO failures (kind, key, at, expires_at) VALUES ($1, $2, $3, $4)")
                    .bind(kind)
                    .bind(key)
                    .bind(at)
                    .bind(until)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn failures_since(&self, kind: &str, key: &str, since: i64) -> Result<u32, StoreError> {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM failures WHERE kind = $1 AND key = $2 AND at >= $3")
                    .bind(kind)
                    .bind(key)
                    .bind(since)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(u32::try_from(n).unwrap_or(u32::MAX))
            }

            async fn create_grant(&self, g: &GrantRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO grants (grant_id, client_id, subject, scope, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
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
                let row = sqlx::query("SELECT revoked_at FROM grants WHERE grant_id = $1")
                    .bind(grant_id)
                    .fetch_optional(&self.pool)
                    .await?;
                // An unknown grant (purged after expiry) counts as revoked.
                Ok(row.is_none_or(|r| r.get::<Option<i64>, _>("revoked_at").is_some()))
            }

            async fn save_code(&self, c: &CodeRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO authorization_codes (code_hash, grant_id, client_id, subject, redirect_uri, redirect_uri_sent,
                        scope, code_challenge, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
                        used_at FROM authorization_codes WHERE code_hash = $1",
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

            async fn consume_refresh_token(
                &self,
                token_hash: &[u8; 32],
                now: i64,
            ) -> Result<Consumed<RefreshRecord>, StoreError> {
                let won = sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL")
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
                     WHERE token_hash = $1",
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

            async fn create_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO sessions (session_hash, subject, csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
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
                    "SELECT subject, csrf_token, created_at, expires_at FROM sessions WHERE session_hash = $1 AND expires_at > $2",
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
                sqlx::query("DELETE FROM sessions WHERE session_hash = $1").bind(&session_hash[..]).execute(&self.pool).await?;
                Ok(())
            }

            async fn delete_sessions_of(&self, subject: &str) -> Result<u64, StoreError> {
                let n = sqlx::query("DELETE FROM sessions WHERE subject = $1").bind(subject).execute(&self.pool).await?;
                Ok(n.rows_affected())
            }

            async fn live_grants_of(&self, subject: &str) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query("SELECT grant_id FROM grants WHERE subject = $1 AND revoked_at IS NULL")
                    .bind(subject)
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows.into_iter().map(|r| r.get("grant_id")).collect())
            }

            async fn find_consent(&self, subject: &str, client_id: &str) -> Result<Option<String>, StoreError> {
                let row = sqlx::query("SELECT scope FROM consents WHERE subject = $1 AND client_id = $2")
                    .bind(subject)
                    .bind(client_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| r.get("scope")))
            }

            async fn save_consent(&self, subject: &str, client_id: &str, scope: &str, now: i64) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO consents (subject, client_id, scope, granted_at) VALUES ($1, $2, $3, $4)
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

            async fn list_clients(&self) -> Result<Vec<StoredClient>, StoreError> {
                let rows = sqlx::query("SELECT * FROM clients ORDER BY client_id").fetch_all(&self.pool).await?;
                Ok(rows.iter().map(stored_client).collect())
            }

            async fn insert_client(&self, c: &StoredClient) -> Result<bool, StoreError> {
                let inserted = sqlx::query(
                    "INSERT INTO clients (client_id, name, secret_hash, public, require_pkce, redirect_uris, scopes, grant_types,
                        created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (client_id) DO NOTHING",
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
                let n = sqlx::query("DELETE FROM clients WHERE client_id = $1").bind(client_id).execute(&self.pool).await?;
                Ok(n.rows_affected() == 1)
            }

            async fn find_client(&self, client_id: &str) -> Result<Option<StoredClient>, StoreError> {
                let row = sqlx::query("SELECT * FROM clients WHERE client_id = $1")
                    .bind(client_id)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|r| stored_client(&r)))
            }

            async fn list_consents(&self, subject: Option<&str>) -> Result<Vec<ConsentRecord>, StoreError> {
                let rows = sqlx::query(
                    "SELECT subject, client_id, scope, granted_at FROM consents WHERE subject = COALESCE($1, subject)
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
                let deleted = sqlx::query("DELETE FROM consents WHERE subject = $1 AND client_id = $2")
                    .bind(subject)
                    .bind(client_id)
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    > 0;
                // Withdrawing consent ends what it allowed: the grants it backed.
                let grants: Vec<String> =
                    sqlx::query("SELECT grant_id FROM grants WHERE subject = $1 AND client_id = $2 AND revoked_at IS NULL")
                        .bind(subject)
                        .bind(client_id)
                        .fetch_all(&self.pool)
                        .await?
                        .into_iter()
                        .map(|r| r.get("grant_id"))
                        .collect();
                let mut jtis = Vec::new();
                for grant in grants {
                    jtis.extend(self.revoke_grant(&grant, now).await?);
                }
                // Withdrawn from the command line, beside running replicas: they
                // hear of it as of any other revocation (a store serving one
                // process has no one to tell).
                if !jtis.is_empty() {
                    self.announce(&$crate::store::Notice::Revoked($crate::store::Revocation::Grant(jtis))).await?;
                }
                Ok(deleted)
            }

            async fn revoke_grant(&self, grant_id: &str, now: i64) -> Result<Vec<String>, StoreError> {
                let mut tx = self.write_transaction().await?;
                sqlx::query("UPDATE grants SET revoked_at = COALESCE(revoked_at, $1) WHERE grant_id = $2")
                    .bind(now)
                    .bind(grant_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE refresh_tokens SET used_at = COALESCE(used_at, $1) WHERE grant_id = $2")
                    .bind(now)
                    .bind(grant_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO revoked_tokens (jti, expires_at)
                     SELECT jti, expires_at FROM grant_access_tokens WHERE grant_id = $1
                     ON CONFLICT (jti) DO NOTHING",
                )
                .bind(grant_id)
                .execute(&mut *tx)
                .await?;
                let jtis = sqlx::query("SELECT jti FROM grant_access_tokens WHERE grant_id = $1")
                    .bind(grant_id)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|r| r.get("jti"))
                    .collect();
                tx.commit().await?;
                Ok(jtis)
            }

            async fn consume_code(&self, code_hash: &[u8; 32], now: i64) -> Result<Consumed<CodeRecord>, StoreError> {
                // The conditional UPDATE is the atomic step: of two writers, the
                // second finds `used_at` set and updates nothing (SQLite serialises
                // writers; PostgreSQL makes the second wait for the first's row
                // lock, then re-checks the condition).
                let won = sqlx::query("UPDATE authorization_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
                    .bind(now)
                    .bind(&code_hash[..])
                    .execute(&self.pool)
                    .await?
                    .rows_affected()
                    == 1;
                let Some((record, _)) = self.find_code(code_hash).await? else { return Ok(Consumed::Unknown) };
                Ok(if won { Consumed::Consumed(record) } else { Consumed::AlreadyUsed(record) })
            }

        async fn set_client_secret(&self, client_id: &str, secret_hash: &str) -> Result<bool, StoreError> {
            let n = sqlx::query("UPDATE clients SET secret_hash = $1 WHERE client_id = $2 AND NOT public")
                .bind(secret_hash)
                .bind(client_id)
                .execute(&self.pool)
                .await?;
            Ok(n.rows_affected() == 1)
        }
        }
    };
}

pub(super) use impl_store;

/// The statement that adds a signing key (`$key`) unless one of its
/// algorithm was created at or after `$since` (`None`: whatever there is),
/// for each backend to run its own way (PostgreSQL under a lock).
macro_rules! add_signing_key_query {
    ($key:expr, $since:expr) => {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_der, public_key, created_at, activates_at)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE NOT EXISTS (SELECT 1 FROM signing_keys WHERE alg = $2 AND created_at >= $7)",
        )
        .bind(&$key.kid)
        .bind(&$key.alg)
        .bind(&$key.private_der)
        .bind(&$key.public_key)
        .bind($key.created_at)
        .bind($key.activates_at)
        .bind($since.unwrap_or(i64::MAX))
    };
}
pub(super) use add_signing_key_query;

/// A `clients` row, from either backend. Lists are stored newline-separated.
pub(super) fn stored_client<R>(r: &R) -> StoredClient
where
    R: sqlx::Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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

//! Sign-in sessions and remembered consents: what the pages (`web`) keep
//! about a person between requests, kept here so the pages hold no store
//! of their own. A session is named in the store by its cookie's hash only.

use std::time::Duration;

use super::AuthorizationServer;
use super::throttle::Throttle;
use crate::auth::tokens::{random_token, token_hash};
use crate::scope::ScopeSet;
use crate::store::{SessionRecord, StoreError};

impl AuthorizationServer {
    /// The live session whose cookie value is `cookie`, if any, of a user
    /// the config still has (one removed is signed out, here at once,
    /// whether or not this replica was the one told to forget them).
    pub async fn session(&self, cookie: &str) -> Result<Option<SessionRecord>, StoreError> {
        let found = self.store().find_session(&token_hash(cookie), self.now()).await?;
        Ok(found.filter(|s| self.is_user(&s.subject)))
    }

    /// Forgets a user removed from the config: their grants are revoked
    /// (refresh tokens, and the access tokens issued under them, on every
    /// replica) and their sessions ended. How many grants were revoked.
    pub async fn forget_user(&self, subject: &str) -> Result<usize, StoreError> {
        let grants = self.store().live_grants_of(subject).await?;
        for grant in &grants {
            self.revoke_grant(grant).await?;
        }
        self.store().delete_sessions_of(subject).await?;
        Ok(grants.len())
    }

    /// Signs `subject` in for `ttl`, and returns the new session's cookie
    /// value. The session the browser came with (`replaced`, planted
    /// perhaps by a page on the same site) is ended first: a new session id
    /// at every sign-in.
    pub async fn sign_in(&self, subject: &str, ttl: Duration, replaced: Option<&str>) -> Result<String, StoreError> {
        if let Some(old) = replaced {
            self.store().delete_session(&token_hash(old)).await?;
        }
        let value = random_token();
        let now = self.now();
        let session = SessionRecord {
            session_hash: token_hash(&value),
            subject: subject.to_string(),
            csrf_token: random_token(),
            created_at: now,
            expires_at: now + ttl.as_secs() as i64,
        };
        self.store().create_session(&session).await?;
        Ok(value)
    }

    /// The scopes `subject` has consented to for `client_id`; `None` when
    /// they never consented.
    pub async fn consent(&self, subject: &str, client_id: &str) -> Result<Option<ScopeSet>, StoreError> {
        Ok(self.store().find_consent(subject, client_id).await?.and_then(|s| ScopeSet::parse(&s)))
    }

    /// `throttle`, counting its failures in the store, so every replica
    /// counts them together.
    pub fn share<K>(&self, throttle: Throttle<K>, kind: &'static str, name: fn(&K) -> String) -> Throttle<K>
    where
        K: std::hash::Hash + Eq + Send + Sync + Clone + 'static,
    {
        throttle.shared(self.store().clone(), kind, name)
    }

    /// Adds `scopes` to what `subject` has consented to for `client_id`.
    pub async fn add_consent(&self, subject: &str, client_id: &str, scopes: &ScopeSet) -> Result<(), StoreError> {
        let previous = self.consent(subject, client_id).await?.unwrap_or_default();
        let all = ScopeSet::from_iter(previous.iter().chain(scopes.iter()));
        self.store().save_consent(subject, client_id, &all.to_string(), self.now()).await
    }
}

//! The validation cache: what a token proved, remembered so the hot path does
//! no signature check and no store read on a hit.
//!
//! - Keyed by the SHA-256 of the token, never the token itself.
//! - A valid entry lives at most `cache.ttl` and never past the token's own
//!   `exp`; a refusal lives `cache.negative_ttl`, so a flood of one bad token
//!   costs one check.
//! - Concurrent misses for one token collapse into one validation
//!   (`try_get_with`); a store failure is not cached.
//! - The cache holds identities, not decisions: the route's scope rule is
//!   applied to the cached identity on every request (Oathkeeper's
//!   CVE-2021-32701 cached the decision and forgot the scopes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::tokens::{Identity, Rejection, TokenService, now_unix, token_hash};

/// The outcome of validating one token.
#[derive(Debug, Clone)]
pub enum Verdict {
    Valid(Arc<Identity>),
    Invalid(Rejection),
}

struct VerdictExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl Expiry<[u8; 32], Verdict> for VerdictExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Verdict, _created_at: Instant) -> Option<Duration> {
        Some(match value {
            Verdict::Valid(id) => {
                let left = Duration::from_secs(id.expires_at.saturating_sub(now_unix()));
                left.min(self.ttl)
            }
            Verdict::Invalid(_) => self.negative_ttl,
        })
    }
}

/// Validates bearer tokens through the cache.
pub struct TokenValidator {
    tokens: Arc<TokenService>,
    cache: Cache<[u8; 32], Verdict>,
    metrics: Arc<Metrics>,
}

impl TokenValidator {
    pub fn new(tokens: Arc<TokenService>, config: &CacheConfig, metrics: Arc<Metrics>) -> TokenValidator {
        let evictions = metrics.cache_evictions.clone();
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            // Only entries pushed out by the size bound count: expiry and
            // invalidation are the cache working as meant.
            .eviction_listener(move |_key, _value, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.inc();
                }
            })
            .expire_after(VerdictExpiry { ttl: config.ttl, negative_ttl: config.negative_ttl })
            .support_invalidation_closures()
            .build();
        TokenValidator { tokens, cache, metrics }
    }

    pub async fn validate(&self, token: &str) -> Result<Verdict, Arc<StoreError>> {
        let key = token_hash(token);
        if let Some(verdict) = self.cache.get(&key).await {
            // An entry may outlive its token by up to a second (expiry is
            // computed in whole seconds); the clock has the last word.
            if let Verdict::Valid(id) = &verdict
                && id.expires_at <= now_unix()
            {
                Box::pin(self.cache.invalidate(&key)).await;
            } else {
                self.metrics.cache_hits.inc();
                return Ok(verdict);
            }
        }
        self.metrics.cache_misses.inc();
        // Boxed: verifying (a signature, a store read) makes a future of
        // kilobytes, which every request's future would otherwise carry,
        // and copy each time it is moved, hit or miss.
        Box::pin(self.cache.try_get_with(key, async {
            self.metrics.token_validations.inc();
            Ok(match self.tokens.verify(token).await? {
                Ok(identity) => Verdict::Valid(Arc::new(identity)),
                Err(rejection) => Verdict::Invalid(rejection),
            })
        }))
        .await
    }

    /// Forgets what is cached for `token`, so the next request re-validates
    /// (after a revocation on this instance).
    pub async fn forget(&self, token: &str) {
        self.cache.invalidate(&token_hash(token)).await;
    }

    /// Forgets the identities of the access tokens `jtis` (after their
    /// grant was revoked on this instance). moka checks the predicate on
    /// every read until the entries are gone, so no later request sees them.
    pub async fn forget_jtis(&self, jtis: Vec<String>) {
        if jtis.is_empty() {
            return;
        }
        let jtis: std::collections::HashSet<String> = jtis.into_iter().collect();
        let predicate = move |_: &[u8; 32], v: &Verdict| matches!(v, Verdict::Valid(id) if jtis.contains(&id.jti));
        if let Err(e) = self.cache.invalidate_entries_if(predicate) {
            // Only possible without `support_invalidation_closures`; fall
            // back to forgetting everything rather than trusting stale entries.
            tracing::error!(error = %e, "could not forget revoked tokens selectively; clearing the cache");
            self.cache.invalidate_all();
        }
    }

    /// Entries currently held (approximate; for the metrics gauge).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

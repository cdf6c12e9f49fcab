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
//!
//! Two levels. The shared cache (moka) is the one that counts: bounded by
//! `cache.max_entries`, invalidated on revocation. In front of it each
//! worker keeps a [`WorkerCache`] of the valid identities it has served,
//! with the shared entry's own deadline, and its own copy of each identity:
//! a hit there takes no lock another core takes and touches no reference
//! count another core writes (measured: a tenth of the gateway's CPU per
//! request went to the shared cache's bookkeeping on a hit). Any
//! invalidation bumps a counter that every worker cache checks before it
//! answers, and a worker cache filled before the bump is emptied, so a
//! revocation on this instance reaches every worker at once, as before.
//!
//! A reload builds a new validator with empty caches; a revocation that an
//! older gateway is still serving is passed on to it (`hand_over_to`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use moka::Expiry;
use moka::future::Cache;
use tokio::sync::watch;

use crate::auth::tokens::{Identity, Rejection, TokenService, token_hash};
use crate::config::CacheConfig;
use crate::store::StoreError;
use crate::telemetry::metrics::Metrics;

/// What the cache asks about a token it has no answer for. The gateway's
/// is the [`TokenService`] (signature or store, then the revocation list);
/// a trait so that a test can hold an answer back while a revocation lands.
#[async_trait]
pub trait Verify: Send + Sync {
    async fn verify(&self, token: &str) -> Result<Result<Identity, Rejection>, StoreError>;

    /// Now, on the clock tokens are checked by: no entry outlives its
    /// token's `exp` by that clock.
    fn now(&self) -> SystemTime;
}

#[async_trait]
impl Verify for TokenService {
    async fn verify(&self, token: &str) -> Result<Result<Identity, Rejection>, StoreError> {
        TokenService::verify(self, token).await
    }

    fn now(&self) -> SystemTime {
        self.clock().now()
    }
}

/// The outcome of validating one token.
#[derive(Debug, Clone)]
pub enum Verdict {
    Valid(Arc<Identity>),
    Invalid(Rejection),
}

/// What the shared cache holds for a token: the verdict, and the moment it
/// stops being trusted.
#[derive(Clone)]
struct Entry {
    verdict: Verdict,
    until: Instant,
}

struct EntryExpiry;

impl Expiry<[u8; 32], Entry> for EntryExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Entry, created_at: Instant) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

/// The most identities one worker keeps in front of the shared cache.
const WORKER_CAPACITY: usize = 16 * 1024;

/// Tells validators apart: a reload builds a new one, whose worker caches
/// start empty.
static NEXT_VALIDATOR: AtomicU64 = AtomicU64::new(1);

/// The validator in force, shared by every validator of one line of
/// reloads. Weak, so that a retired validator (which an idle worker may
/// hold until its next request) keeps no other alive.
type InForce = Arc<Mutex<std::sync::Weak<TokenValidator>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Validates bearer tokens through the cache.
pub struct TokenValidator {
    tokens: Arc<dyn Verify>,
    cache: Cache<[u8; 32], Entry>,
    metrics: Arc<Metrics>,
    ttl: Duration,
    negative_ttl: Duration,
    id: u64,
    /// Counts invalidations; a worker cache filled under an older count is
    /// emptied before it answers.
    invalidations: AtomicU64,
    worker_capacity: usize,
    /// The validator in force, once a reload has replaced one (see
    /// `hand_over_to`).
    in_force: Mutex<Option<InForce>>,
    /// Told of every invalidation, by every validator of this line of
    /// reloads (they share it): what holds a token longer than a request
    /// (a WebSocket) asks about it again ([`TokenValidator::watch`]).
    told: Mutex<Arc<watch::Sender<u64>>>,
}

impl TokenValidator {
    pub fn new(tokens: Arc<dyn Verify>, config: &CacheConfig, metrics: Arc<Metrics>) -> TokenValidator {
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
            .expire_after(EntryExpiry)
            .support_invalidation_closures()
            .build();
        TokenValidator {
            tokens,
            cache,
            metrics,
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            id: NEXT_VALIDATOR.fetch_add(1, Ordering::Relaxed),
            invalidations: AtomicU64::new(0),
            worker_capacity: usize::try_from(config.max_entries).unwrap_or(usize::MAX).min(WORKER_CAPACITY),
            in_force: Mutex::new(None),
            told: Mutex::new(Arc::new(watch::Sender::new(0))),
        }
    }

    /// Changes after any invalidation by this validator or those that
    /// replace it: a token seen valid before may no longer be. Ask the
    /// validator [`in_force`](Self::in_force) again.
    pub fn watch(&self) -> watch::Receiver<u64> {
        lock(&self.told).subscribe()
    }

    /// Now, on the clock tokens are checked by.
    pub fn now(&self) -> std::time::SystemTime {
        self.tokens.now()
    }

    /// The validator in force: this one, or the newest that a reload put
    /// in its place, whose caches every revocation reaches.
    pub fn in_force(self: &Arc<Self>) -> Arc<TokenValidator> {
        lock(&self.in_force).as_ref().and_then(|cell| lock(cell).upgrade()).unwrap_or_else(|| self.clone())
    }

    /// Validates `token` for a request that came at `now`, looking first
    /// in the calling worker's cache.
    pub async fn validate(&self, token: &str, worker: &WorkerCache, now: Instant) -> Result<Verdict, Arc<StoreError>> {
        let key = token_hash(token);
        // Read before the shared cache is: an invalidation after this makes
        // whatever the shared cache answers below unfit for the worker's.
        let invalidations = self.invalidations.load(Ordering::Acquire);
        // An entry is trusted until a moment on the monotonic clock, worked
        // out from its token's `exp` on the wall clock when it was cached;
        // the wall clock stepping forward past `exp` since ends the trust
        // too (it is read only on a hit: a miss verifies on it anyway).
        let unexpired = |identity: &Identity| {
            let wall = self.tokens.now();
            UNIX_EPOCH.checked_add(Duration::from_secs(identity.expires_at)).is_none_or(|exp| exp > wall)
        };
        if let Some(identity) = worker.get(self.id, invalidations, &key, now)
            && unexpired(&identity)
        {
            self.metrics.cache_hits.inc();
            return Ok(Verdict::Valid(identity));
        }
        let mut cached = self.cache.get(&key).await.filter(|entry| entry.until > now);
        if let Some(Entry { verdict: Verdict::Valid(identity), .. }) = &cached
            && !unexpired(identity)
        {
            // Out of the way of the fill below, which would find it.
            self.cache.invalidate(&key).await;
            cached = None;
        }
        let entry = match cached {
            Some(entry) => {
                self.metrics.cache_hits.inc();
                entry
            }
            None => {
                self.metrics.cache_misses.inc();
                // Boxed: moka's fill makes a future of kilobytes (1.7 KiB
                // measured), which every request's future would otherwise
                // carry, and copy each time it is moved, hit or miss.
                let entry = Box::pin(self.cache.try_get_with(key, async {
                    let mut entry = self.verify(token).await?;
                    // A revocation landed while the store was being asked:
                    // its answer may predate it, and is good for no request
                    // that came after this one (`until` is checked below).
                    if self.invalidations.load(Ordering::Acquire) != invalidations {
                        entry.until = now;
                    }
                    Ok(entry)
                }))
                .await?;
                // One that landed between that check and the insert: the
                // entry goes now, and the worker caches are emptied again
                // (`forget` counts before it removes, so a revocation is
                // seen here or removes the entry itself).
                if self.invalidations.load(Ordering::Acquire) != invalidations {
                    self.cache.invalidate(&key).await;
                    // A request that came after the revocation may have
                    // copied the entry into its worker's cache meanwhile.
                    self.invalidated();
                }
                if entry.until > now {
                    entry
                } else {
                    // Filled across a revocation, by this request or one it
                    // waited on: asked again, and not cached.
                    self.verify(token).await?
                }
            }
        };
        Ok(match entry.verdict {
            Verdict::Valid(identity) => {
                Verdict::Valid(worker.put(self.id, invalidations, key, &identity, entry.until, self.worker_capacity))
            }
            invalid => invalid,
        })
    }

    /// Verifies `token` against the keys and the store.
    async fn verify(&self, token: &str) -> Result<Entry, StoreError> {
        self.metrics.token_validations.inc();
        Ok(match self.tokens.verify(token).await? {
            Ok(identity) => self.entry(Verdict::Valid(Arc::new(identity))),
            Err(rejection) => self.entry(Verdict::Invalid(rejection)),
        })
    }

    /// A new entry: a valid identity is trusted for `cache.ttl` and never
    /// past its token's `exp` (to the nanosecond: the clock has the last
    /// word), a refusal for `cache.negative_ttl`.
    fn entry(&self, verdict: Verdict) -> Entry {
        let trusted = match &verdict {
            Verdict::Valid(id) => {
                // No arithmetic on a token's value may panic: an `exp` past
                // what the clock can hold is simply later than `cache.ttl`.
                match UNIX_EPOCH.checked_add(Duration::from_secs(id.expires_at)) {
                    Some(expires) => expires.duration_since(self.tokens.now()).unwrap_or(Duration::ZERO).min(self.ttl),
                    None => self.ttl,
                }
            }
            Verdict::Invalid(_) => self.negative_ttl,
        };
        Entry { verdict, until: Instant::now() + trusted }
    }

    /// Counts an invalidation. Called twice around each: before the shared
    /// cache forgets, so that a validation already under way (which may
    /// have read the store before the revocation) does not cache what it
    /// found; and after, so that every worker cache, which may have copied
    /// the shared entry in between, is emptied before it answers.
    fn invalidated(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        lock(&self.told).send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets what is cached for the token whose hash is `key`, so the
    /// next request re-validates (after a revocation on this instance).
    pub async fn forget(self: &Arc<Self>, key: [u8; 32]) {
        for validator in self.and_in_force() {
            validator.invalidated();
            validator.cache.invalidate(&key).await;
            validator.invalidated();
        }
    }

    /// Forgets the identities of the access tokens `jtis` (after their
    /// grant was revoked on this instance).
    pub async fn forget_jtis(self: &Arc<Self>, jtis: Vec<String>) {
        if jtis.is_empty() {
            return;
        }
        let jtis: Arc<HashSet<String>> = Arc::new(jtis.into_iter().collect());
        self.forget_where(move |id| jtis.contains(&id.jti));
    }

    /// Forgets the identities of every access token of `client_id` (the
    /// client was removed or its secret rotated: its tokens are checked
    /// against the store again).
    pub fn forget_client(self: &Arc<Self>, client_id: &str) {
        let client_id: Arc<str> = client_id.into();
        self.forget_where(move |id| *id.client_id == *client_id);
    }

    /// Forgets the valid identities `which` picks. moka checks the
    /// predicate on every read until the entries are gone, so no later
    /// request sees them.
    fn forget_where(self: &Arc<Self>, which: impl Fn(&Identity) -> bool + Clone + Send + Sync + 'static) {
        for validator in self.and_in_force() {
            validator.invalidated();
            let which = which.clone();
            let predicate = move |_: &[u8; 32], e: &Entry| matches!(&e.verdict, Verdict::Valid(id) if which(id));
            if let Err(e) = validator.cache.invalidate_entries_if(predicate) {
                // Only possible without `support_invalidation_closures`; fall
                // back to forgetting everything rather than trusting stale entries.
                tracing::error!(error = %e, "could not forget revoked tokens selectively; clearing the cache");
                validator.cache.invalidate_all();
            }
            validator.invalidated();
        }
    }

    /// Forgets everything, valid and refused alike: after the revocation
    /// feed was cut, when any revocation may have been missed.
    pub async fn forget_all(self: &Arc<Self>) {
        for validator in self.and_in_force() {
            validator.invalidated();
            validator.cache.invalidate_all();
            validator.invalidated();
        }
    }

    /// Makes `next`, which a reload put in this validator's place, get
    /// every revocation this one (or any it replaced) gets from now on. A
    /// revocation still under way on the old gateway when the new one takes
    /// over would otherwise miss the new cache, which may have filled
    /// meanwhile from a store read that came before the revocation.
    /// Validators in between serve no new request (a worker takes the
    /// gateway in force at each request), so only the newest needs it.
    ///
    /// Called before the swap. A revocation that finds the old validator
    /// still in force here took the lock first, so it was stored before the
    /// new gateway served anything, and every read the new cache makes
    /// sees it.
    pub fn hand_over_to(&self, next: &Arc<TokenValidator>) {
        let cell = lock(&self.in_force).get_or_insert_with(Default::default).clone();
        *lock(&cell) = Arc::downgrade(next);
        *lock(&next.in_force) = Some(cell);
        *lock(&next.told) = lock(&self.told).clone();
    }

    /// This validator, and the one in force if a reload replaced it.
    fn and_in_force(self: &Arc<Self>) -> Vec<Arc<TokenValidator>> {
        let in_force = lock(&self.in_force).as_ref().and_then(|cell| lock(cell).upgrade());
        let mut both = vec![self.clone()];
        both.extend(in_force.filter(|v| !Arc::ptr_eq(v, self)));
        both
    }

    /// Entries currently held (approximate; for the metrics gauge).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// One worker's first look at tokens it has seen validated: their
/// identities (the worker's own copies) and the shared entries' deadlines.
/// Only its worker's thread takes the lock, so it is never contended.
#[derive(Default)]
pub struct WorkerCache {
    front: Mutex<Front>,
}

#[derive(Default)]
struct Front {
    /// The validator the entries came from, and its invalidation count
    /// when they did.
    validator: u64,
    invalidations: u64,
    entries: HashMap<[u8; 32], (Arc<Identity>, Instant)>,
}

impl WorkerCache {
    fn front(&self) -> std::sync::MutexGuard<'_, Front> {
        // Nothing is left half-done under the lock.
        lock(&self.front)
    }

    fn get(&self, validator: u64, invalidations: u64, key: &[u8; 32], now: Instant) -> Option<Arc<Identity>> {
        let mut front = self.front();
        if front.validator != validator || front.invalidations != invalidations {
            front.entries.clear();
            front.validator = validator;
            front.invalidations = invalidations;
            return None;
        }
        match front.entries.get(key) {
            Some((identity, until)) if *until > now => Some(identity.clone()),
            Some(_) => {
                front.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps a copy of `identity` until `until`, unless an invalidation
    /// came since `invalidations` was read; returns the copy either way.
    fn put(
        &self,
        validator: u64,
        invalidations: u64,
        key: [u8; 32],
        identity: &Identity,
        until: Instant,
        capacity: usize,
    ) -> Arc<Identity> {
        let copy = Arc::new(identity.detached());
        let mut front = self.front();
        if front.validator == validator && front.invalidations == invalidations {
            if front.entries.len() >= capacity {
                let now = Instant::now();
                front.entries.retain(|_, (_, until)| *until > now);
                if front.entries.len() >= capacity {
                    // The shared cache still has them all.
                    front.entries.clear();
                }
            }
            front.entries.insert(key, (copy.clone(), until));
        }
        copy
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.front().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::ScopeSet;

    fn identity(subject: &str) -> Identity {
        Identity::new(subject.into(), "app".into(), ScopeSet::default(), u64::MAX / 2, "jti".into()).expect("identity")
    }

    #[test]
    fn a_worker_cache_answers_until_the_deadline_and_with_its_own_copy() {
        let worker = WorkerCache::default();
        let (t0, key, alice) = (Instant::now(), [1u8; 32], identity("alice"));
        assert!(worker.get(7, 0, &key, t0).is_none(), "empty");
        let until = t0 + Duration::from_secs(30);
        let copy = worker.put(7, 0, key, &alice, until, 10);
        assert_eq!(*copy, alice);
        assert_ne!(copy.subject_header.as_bytes().as_ptr(), alice.subject_header.as_bytes().as_ptr(), "not shared");
        let hit = worker.get(7, 0, &key, t0 + Duration::from_secs(29)).expect("a hit");
        assert!(Arc::ptr_eq(&hit, &copy));
        assert!(worker.get(7, 0, &key, until).is_none(), "not at the deadline");
        assert_eq!(worker.len(), 0, "an expired entry goes");
    }

    #[test]
    fn an_invalidation_or_another_validator_empties_a_worker_cache() {
        let worker = WorkerCache::default();
        let (now, key, later) = (Instant::now(), [2u8; 32], Instant::now() + Duration::from_secs(30));
        assert!(worker.get(7, 0, &key, now).is_none());
        worker.put(7, 0, key, &identity("alice"), later, 10);
        assert!(worker.get(7, 1, &key, now).is_none(), "an invalidation since");
        assert_eq!(worker.len(), 0);

        worker.put(7, 1, key, &identity("alice"), later, 10);
        assert!(worker.get(8, 1, &key, now).is_none(), "a reload's new validator");
        assert_eq!(worker.len(), 0);

        // Read before an invalidation that the worker cache has since seen:
        // what the shared cache said then is not kept.
        assert!(worker.get(8, 2, &key, now).is_none());
        let copy = worker.put(8, 1, key, &identity("alice"), later, 10);
        assert_eq!(copy.subject, "alice", "still the caller's answer");
        assert_eq!(worker.len(), 0, "but not remembered");
    }

    /// Answers the first question only when told to, with what the store
    /// said before the revocation (valid); every later one, after it
    /// (revoked).
    struct HeldBack {
        asked: std::sync::atomic::AtomicUsize,
        first_asked: tokio::sync::Notify,
        release: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    }

    #[async_trait]
    impl Verify for HeldBack {
        async fn verify(&self, _token: &str) -> Result<Result<Identity, Rejection>, StoreError> {
            if self.asked.fetch_add(1, Ordering::SeqCst) > 0 {
                return Ok(Err(Rejection::Revoked));
            }
            let release = self.release.lock().expect("lock").take().expect("asked first once");
            self.first_asked.notify_one();
            let _ = release.await;
            let hour = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 3600;
            Ok(Ok(Identity::new("alice".into(), "app".into(), ScopeSet::default(), hour, "jti-1".into())
                .expect("identity")))
        }

        fn now(&self) -> SystemTime {
            SystemTime::now()
        }
    }

    fn held_back() -> (Arc<HeldBack>, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let held =
            HeldBack { asked: Default::default(), first_asked: Default::default(), release: Mutex::new(Some(rx)) };
        (Arc::new(held), tx)
    }

    fn validator(verify: Arc<dyn Verify>) -> Arc<TokenValidator> {
        let config =
            CacheConfig { ttl: Duration::from_secs(60), negative_ttl: Duration::from_secs(60), max_entries: 100 };
        Arc::new(TokenValidator::new(verify, &config, Arc::new(Metrics::new())))
    }

    /// Verifies like a JWT would be (valid until `exp`, expired after), on
    /// a wall clock the test steps.
    struct SteppedClock {
        offset: Mutex<i64>,
        exp: u64,
        asked: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Verify for SteppedClock {
        async fn verify(&self, _token: &str) -> Result<Result<Identity, Rejection>, StoreError> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let now = self.now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
            if self.exp <= now {
                return Ok(Err(Rejection::Expired));
            }
            Ok(Ok(Identity::new("alice".into(), "app".into(), ScopeSet::default(), self.exp, "j".into())
                .expect("identity")))
        }

        fn now(&self) -> SystemTime {
            let offset = *self.offset.lock().expect("lock");
            let step = Duration::from_secs(offset.unsigned_abs());
            if offset < 0 { SystemTime::now() - step } else { SystemTime::now() + step }
        }
    }

    /// The wall clock stepping forward past a cached token's `exp` ends
    /// the trust the caches had in it (worker and shared), though their
    /// monotonic deadline has not come; stepping back changes nothing
    /// about a token that is still valid.
    #[tokio::test]
    async fn a_clock_step_past_exp_ends_a_cached_validation() {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() + 120;
        let clock = Arc::new(SteppedClock { offset: Mutex::new(0), exp, asked: Default::default() });
        let validator = validator(clock.clone());
        let (worker, other_worker) = (WorkerCache::default(), WorkerCache::default());
        let valid = |v: &Verdict| matches!(v, Verdict::Valid(_));

        assert!(valid(&validator.validate("token", &worker, Instant::now()).await.expect("verdict")));
        *clock.offset.lock().expect("lock") = -600;
        assert!(valid(&validator.validate("token", &worker, Instant::now()).await.expect("verdict")));
        assert!(valid(&validator.validate("token", &other_worker, Instant::now()).await.expect("verdict")));
        assert_eq!(clock.asked.load(Ordering::SeqCst), 1, "a step back: the caches answer");

        *clock.offset.lock().expect("lock") = 600;
        for cache in [&worker, &other_worker, &WorkerCache::default()] {
            let verdict = validator.validate("token", cache, Instant::now()).await.expect("verdict");
            assert!(matches!(verdict, Verdict::Invalid(Rejection::Expired)), "{verdict:?}");
        }
        assert_eq!(clock.asked.load(Ordering::SeqCst), 2, "asked again once, and the refusal cached");
    }

    /// A validation that read the store before a revocation and finishes
    /// after it must not leave its stale "valid" in either cache: the
    /// revoked token would pass for up to `cache.ttl`. The revocation may
    /// reach the validator that a reload replaced (a request the old
    /// gateway was still serving), or the one before that.
    #[tokio::test]
    async fn a_validation_that_straddles_a_revocation_caches_nothing_stale() {
        for (by_jti, reloads_since) in [(false, 0), (true, 0), (false, 1), (true, 1), (false, 2), (true, 2)] {
            let (held, tx) = held_back();
            let validator = validator(held.clone());
            // The older gateways' validators, replaced in turn by reloads
            // (what they would ask is never asked).
            let mut line: Vec<_> = (0..reloads_since).map(|_| self::validator(held_back().0)).collect();
            line.push(validator.clone());
            for pair in line.windows(2) {
                pair[0].hand_over_to(&pair[1]);
            }
            // No validator keeps another alive: a retired one held by an
            // idle worker must not hold every later one and its cache.
            assert!(line.iter().all(|v| Arc::strong_count(v) == 1 + usize::from(Arc::ptr_eq(v, &validator))));
            let revoked_on = line[0].clone();
            drop(line);
            let (worker, other_worker) = (WorkerCache::default(), WorkerCache::default());

            let mut straddling = std::pin::pin!(validator.validate("token", &worker, Instant::now()));
            tokio::select! {
                _ = &mut straddling => panic!("answered before the store did"),
                _ = held.first_asked.notified() => {}
            }
            if by_jti {
                revoked_on.forget_jtis(vec!["jti-1".into()]).await;
            } else {
                revoked_on.forget(token_hash("token")).await;
            }
            tx.send(()).expect("release");
            // The request that came before the revocation is asked again.
            let verdict = straddling.await.expect("no store error");
            assert!(
                matches!(verdict, Verdict::Invalid(Rejection::Revoked)),
                "by_jti {by_jti}, {reloads_since} reloads: {verdict:?}"
            );

            for (which, worker) in [("the same worker", &worker), ("another worker", &other_worker)] {
                let verdict = validator.validate("token", worker, Instant::now()).await.expect("no store error");
                assert!(
                    matches!(verdict, Verdict::Invalid(Rejection::Revoked)),
                    "by_jti {by_jti}, {reloads_since} reloads, {which}: {verdict:?}"
                );
            }
            // Held back, asked again, asked once more for the first later
            // request (a refusal is cached from then on).
            assert_eq!(held.asked.load(Ordering::SeqCst), 3, "by_jti {by_jti}, {reloads_since} reloads");
        }
    }

    #[test]
    fn a_full_worker_cache_makes_room() {
        let worker = WorkerCache::default();
        let now = Instant::now();
        assert!(worker.get(7, 0, &[0; 32], now).is_none());
        worker.put(7, 0, [1; 32], &identity("a"), now, 2);
        worker.put(7, 0, [2; 32], &identity("b"), now + Duration::from_secs(30), 2);
        worker.put(7, 0, [3; 32], &identity("c"), now + Duration::from_secs(30), 2);
        assert_eq!(worker.len(), 2, "the expired one made room");
        worker.put(7, 0, [4; 32], &identity("d"), now + Duration::from_secs(30), 2);
        assert_eq!(worker.len(), 1, "none expired: started over");
        assert!(worker.get(7, 0, &[4; 32], now).is_some());
    }
}

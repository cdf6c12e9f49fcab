//! Failed attempts per key (a user, a client address, a client id) within a
//! window, for guessing to be slowed down (RFC 6749 §10.10, SECURITY #39).
//!
//! Attempts for one key are taken one at a time: checked against the
//! count, tried, and counted if they failed, before the next is checked.
//! Checked first and counted after without that, any number of guesses
//! sent at once would all see the count from before them; counted first,
//! the right answer in a burst of legitimate requests (a fleet of replicas
//! of one client starting together) would be refused for the attempts
//! still in flight beside it.
//!
//! Shared (`Throttle::shared`), failures are also written to the store and
//! counted from it, so replicas on one database count together: an
//! attacker spreading guesses over N replicas gets no more tries than one.
//! A store that cannot answer the count is logged and not held against the
//! attempt (the local count still is).

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::auth::clock::{Clock as _, SystemClock};
use crate::store::Store;

pub struct Throttle<K> {
    failures: moka::sync::Cache<K, Arc<Mutex<u32>>>,
    max: u32,
    window: Duration,
    shared: Option<Shared<K>>,
}

/// Where failures are counted across replicas.
struct Shared<K> {
    store: Arc<dyn Store>,
    /// What is throttled (`"login-user"`, …), a row's first column.
    kind: &'static str,
    /// A key as the store keeps it.
    name: fn(&K) -> String,
}

/// One attempt in progress: the key's turn, with its failures so far (on
/// this replica, and on all of them when shared).
pub struct Attempt {
    turn: OwnedMutexGuard<u32>,
    everywhere: u32,
    record: Option<(Arc<dyn Store>, &'static str, String, Duration)>,
}

impl<K: Hash + Eq + Send + Sync + Clone + 'static> Throttle<K> {
    /// `max` failures per key within `window` (from the key's first
    /// failure), at most `capacity` keys remembered.
    pub fn new(max: u32, window: Duration, capacity: u64) -> Throttle<K> {
        Throttle {
            failures: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(window).build(),
            max,
            window,
            shared: None,
        }
    }

    /// Counts failures in `store` too, as `kind`, with keys named by
    /// `name`, so every replica on the store counts them.
    pub fn shared(mut self, store: Arc<dyn Store>, kind: &'static str, name: fn(&K) -> String) -> Throttle<K> {
        self.shared = Some(Shared { store, kind, name });
        self
    }

    /// Waits for `key`'s turn.
    pub async fn attempt(&self, key: K) -> Attempt {
        let turn = self.failures.get_with(key.clone(), || Arc::new(Mutex::new(0))).lock_owned().await;
        let Some(shared) = &self.shared else { return Attempt { turn, everywhere: 0, record: None } };
        let name = (shared.name)(&key);
        let since = SystemClock.unix().saturating_sub(self.window.as_secs()) as i64;
        let everywhere = match shared.store.failures_since(shared.kind, &name, since).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, kind = shared.kind, "could not count failed attempts across replicas");
                0
            }
        };
        Attempt { turn, everywhere, record: Some((shared.store.clone(), shared.kind, name, self.window)) }
    }

    /// Whether `attempt` may not even be tried.
    pub fn refuses(&self, attempt: &Attempt) -> bool {
        (*attempt.turn).max(attempt.everywhere) >= self.max
    }
}

impl Attempt {
    /// Counts the attempt as a failure (dropped otherwise, it counts
    /// nothing: a success, a refusal, or a request that went away).
    pub async fn failed(mut self) {
        *self.turn = self.turn.saturating_add(1);
        if let Some((store, kind, name, window)) = self.record.take() {
            let now = SystemClock.unix() as i64;
            if let Err(e) = store.record_failure(kind, &name, now, now + window.as_secs() as i64).await {
                tracing::error!(error = %e, kind, "could not count a failed attempt across replicas");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_count_per_key_and_only_failures_count() {
        let throttle = Throttle::new(2, Duration::from_secs(60), 100);
        for _ in 0..2 {
            let a = throttle.attempt("alice").await;
            assert!(!throttle.refuses(&a));
            a.failed().await;
        }
        let a = throttle.attempt("alice").await;
        assert!(throttle.refuses(&a), "two failures");
        drop(a);
        assert!(throttle.refuses(&throttle.attempt("alice").await), "a refusal counts nothing, and changes nothing");
        let b = throttle.attempt("bob").await;
        assert!(!throttle.refuses(&b), "another key");
        drop(b);
        assert!(!throttle.refuses(&throttle.attempt("bob").await), "a success counts nothing");
    }
}

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

use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

pub struct Throttle<K> {
    failures: moka::sync::Cache<K, Arc<Mutex<u32>>>,
    max: u32,
}

/// One attempt in progress: the key's turn, with its failures so far.
pub struct Attempt(OwnedMutexGuard<u32>);

impl<K: Hash + Eq + Send + Sync + Clone + 'static> Throttle<K> {
    /// `max` failures per key within `window` (from the key's first
    /// failure), at most `capacity` keys remembered.
    pub fn new(max: u32, window: Duration, capacity: u64) -> Throttle<K> {
        Throttle { failures: moka::sync::Cache::builder().max_capacity(capacity).time_to_live(window).build(), max }
    }

    /// Waits for `key`'s turn.
    pub async fn attempt(&self, key: K) -> Attempt {
        Attempt(self.failures.get_with(key, || Arc::new(Mutex::new(0))).lock_owned().await)
    }

    /// Whether `attempt` may not even be tried.
    pub fn refuses(&self, attempt: &Attempt) -> bool {
        *attempt.0 >= self.max
    }
}

impl Attempt {
    /// Counts the attempt as a failure (dropped otherwise, it counts
    /// nothing: a success, a refusal, or a request that went away).
    pub fn failed(mut self) {
        *self.0 = self.0.saturating_add(1);
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
            a.failed();
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

//! Wall-clock time as the gateway reads it, behind a trait so it can be
//! injected: `SystemClock` in production, `ManualClock` in tests of expiry
//! (codes, tokens, sessions), which move it forward instead of sleeping.
//! Lifetimes the gateway measures itself (cache entries, timeouts,
//! throttle windows) run on the monotonic clock and are not read here.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> SystemTime;

    /// Whole seconds since the Unix epoch: what claims (`iat`, `exp`) and
    /// the store's rows hold. A clock set before 1970 reads 0.
    fn unix(&self) -> u64 {
        self.now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that stands still until told to move.
#[derive(Debug)]
pub struct ManualClock {
    at: Mutex<SystemTime>,
}

impl ManualClock {
    /// Stopped at the system's current time.
    pub fn starting_now() -> ManualClock {
        ManualClock { at: Mutex::new(SystemTime::now()) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut at = self.at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *at += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.at.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::starting_now();
        let start = clock.unix();
        assert_eq!(clock.unix(), start);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.unix(), start + 90);
        assert!(SystemClock.unix() >= start);
    }
}

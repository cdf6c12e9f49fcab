//! Choosing among a route's upstream instances, and leaving out those that
//! keep failing.
//!
//! **Least outstanding requests, of two picked at random** ("power of two
//! choices", Envoy's `LEAST_REQUEST`): an instance that is slow, or was
//! just restarted with a cold cache, holds its requests longer and so gets
//! fewer new ones, which round robin would not see; asking two rather than
//! all keeps instances that every worker sees as least loaded at the same
//! moment from being piled on together. A request counts as outstanding
//! until its response body is done with.
//!
//! **Passive health**: an instance that fails [`FAILURES_TO_EJECT`] times
//! in a row (no connection, a broken exchange, or a 502, 503 or 504) is
//! ejected for the route's `ejection_time`, twice as long at each
//! ejection in a row up to 16 times, then tried again; its first success
//! ends the series, and a failure on its return ejects it again at once.
//! When every instance is ejected, all are tried (Envoy's panic mode):
//! refusing every request would be worse than trying.
//!
//! **Active health**, where the route names a `health_path`: each instance
//! is asked for it every `health_interval` ([`watch_health`]); one that
//! does not answer `2xx` in time is left out until it does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::telemetry::metrics::InstanceMetrics;
use crate::upstream::pool::Target;

/// Failures in a row that eject an instance.
pub const FAILURES_TO_EJECT: u32 = 3;
/// How many times an ejection may double (to 16 times the first).
const MAX_DOUBLINGS: u32 = 4;

/// One instance and what the balancer knows of it.
pub struct Instance {
    pub target: Target,
    pub metrics: InstanceMetrics,
    outstanding: AtomicUsize,
    /// Failures since the last success.
    failures: AtomicU32,
    /// Ejections in a row (the back-off's exponent).
    ejections: AtomicU32,
    /// Until when it is left out, in ms since the balancer's `epoch`; 0:
    /// it is not.
    ejected_until: AtomicU64,
    /// Its last health probe failed (active health).
    down: AtomicBool,
}

/// A route's instances.
pub struct Balancer {
    instances: Vec<Instance>,
    ejection_time: Duration,
    epoch: Instant,
}

/// An instance's share of a request: counted as outstanding until dropped.
pub struct Outstanding {
    balancer: Arc<Balancer>,
    index: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.balancer.instances[self.index].outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(instances: Vec<(Target, InstanceMetrics)>, ejection_time: Duration) -> Balancer {
        let instances = instances
            .into_iter()
            .map(|(target, metrics)| Instance {
                target,
                metrics,
                outstanding: AtomicUsize::new(0),
                failures: AtomicU32::new(0),
                ejections: AtomicU32::new(0),
                ejected_until: AtomicU64::new(0),
                down: AtomicBool::new(false),
            })
            .collect();
        Balancer { instances, ejection_time, epoch: Instant::now() }
    }

    pub fn instance(&self, index: usize) -> &Instance {
        &self.instances[index]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn available(&self, index: usize, now: u64) -> bool {
        let instance = &self.instances[index];
        instance.ejected_until.load(Ordering::Relaxed) <= now && !instance.down.load(Ordering::Relaxed)
    }

    /// How many instances there are.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Records a health probe's outcome: an instance whose probe failed is
    /// left out until one succeeds.
    pub fn probed(&self, index: usize, healthy: bool) {
        let instance = &self.instances[index];
        // It changes when it was down and is healthy, or the other way.
        let was_down = instance.down.swap(!healthy, Ordering::Relaxed);
        if was_down == healthy {
            if healthy {
                tracing::info!(upstream = %instance.target.authority(), "an upstream instance passes its health check again");
            } else {
                instance.metrics.ejections.inc();
                tracing::warn!(upstream = %instance.target.authority(), "an upstream instance fails its health check; left out");
            }
        }
    }

    /// The instance for the next request, other than `not` (one that just
    /// failed it) when there is another.
    pub fn pick(&self, not: Option<usize>) -> usize {
        let now = self.now_ms();
        let count = self.instances.len();
        // Counted and then walked, not collected: a pick per request
        // allocates nothing.
        let healthy_only = (0..count).any(|i| Some(i) != not && self.available(i, now));
        // When every other instance is ejected, they are tried anyway.
        let eligible = |i: usize| Some(i) != not && (!healthy_only || self.available(i, now));
        let n = (0..count).filter(|&i| eligible(i)).count();
        let nth = |k: usize| (0..count).filter(|&i| eligible(i)).nth(k).unwrap_or(0);
        match n {
            0 => not.unwrap_or(0),
            1 => nth(0),
            n => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + 1 + rng.gen_range(0..n - 1)) % n;
                let (a, b) = (nth(a), nth(b));
                let load = |i: usize| self.instances[i].outstanding.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
        }
    }

    /// Counts a request to instance `index` as outstanding until the
    /// returned guard is dropped.
    pub fn start(self: &Arc<Self>, index: usize) -> Outstanding {
        let instance = &self.instances[index];
        instance.outstanding.fetch_add(1, Ordering::Relaxed);
        instance.metrics.requests.inc();
        Outstanding { balancer: self.clone(), index }
    }

    pub fn succeeded(&self, index: usize) {
        let instance = &self.instances[index];
        if instance.failures.load(Ordering::Relaxed) != 0 {
            instance.failures.store(0, Ordering::Relaxed);
            instance.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure, and ejects the instance at the
    /// [`FAILURES_TO_EJECT`]th in a row (at the first after it returns).
    pub fn failed(&self, index: usize) {
        let instance = &self.instances[index];
        instance.metrics.failures.inc();
        let failures = instance.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now_ms();
        if failures < FAILURES_TO_EJECT || !self.available(index, now) {
            return;
        }
        let ejections = instance.ejections.fetch_add(1, Ordering::Relaxed);
        let backoff = 1u32 << ejections.min(MAX_DOUBLINGS);
        let time = self.ejection_time.saturating_mul(backoff);
        let until = now.saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX));
        instance.ejected_until.store(until.max(1), Ordering::Relaxed);
        // Back from it, one more failure is enough.
        instance.failures.store(FAILURES_TO_EJECT - 1, Ordering::Relaxed);
        instance.metrics.ejections.inc();
        tracing::warn!(
            upstream = %instance.target.authority(),
            failures = FAILURES_TO_EJECT,
            ejected_for = ?time,
            "an upstream instance keeps failing; left out of balancing for a while"
        );
    }
}

/// Asks each instance for `path` every `interval` (a `GET`, answered
/// `2xx` within the interval), for as long as the balancer is in use: it
/// ends once a reload has dropped the route.
pub async fn watch_health(balancer: std::sync::Weak<Balancer>, path: http::uri::PathAndQuery, interval: Duration) {
    let pool = crate::upstream::pool::Pool::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(balancer) = balancer.upgrade() else { return };
        for index in 0..balancer.len() {
            let target = &balancer.instances[index].target;
            let mut req = http::Request::new(crate::http::empty());
            *req.uri_mut() = http::Uri::from(path.clone());
            let added = crate::upstream::http1::Added { host: Some(target.host.clone()), fields: Vec::new() };
            let now = std::time::Instant::now();
            let answer = tokio::time::timeout(interval, pool.send(target, req, &added, now, interval)).await;
            let healthy = match answer {
                Ok(Ok(res)) => {
                    let ok = res.status().is_success();
                    // Read to its end, so that the connection is kept.
                    let _ = http_body_util::BodyExt::collect(res.into_body()).await;
                    ok
                }
                _ => false,
            };
            balancer.probed(index, healthy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::Scheme;

    fn balancer(n: usize) -> Arc<Balancer> {
        let metrics = crate::telemetry::metrics::Metrics::new();
        let instances = (0..n)
            .map(|i| {
                let authority = format!("10.0.0.{i}:80");
                (Target::new(Scheme::HTTP, authority.parse().unwrap(), None), metrics.instance("r", &authority))
            })
            .collect();
        Arc::new(Balancer::new(instances, Duration::from_secs(60)))
    }

    #[test]
    fn the_less_loaded_of_two_is_picked() {
        let b = balancer(2);
        let _busy: Vec<Outstanding> = (0..3).map(|_| b.start(0)).collect();
        for _ in 0..50 {
            assert_eq!(b.pick(None), 1);
        }
        assert_eq!(b.pick(Some(1)), 0, "another than the one that failed");
    }

    #[test]
    fn outstanding_requests_end_with_their_guards() {
        let b = balancer(3);
        let guard = b.start(2);
        assert_eq!(b.instance(2).outstanding.load(Ordering::Relaxed), 1);
        drop(guard);
        assert_eq!(b.instance(2).outstanding.load(Ordering::Relaxed), 0);
        assert_eq!(b.instance(2).metrics.requests.get(), 1);
    }

    #[test]
    fn an_instance_failing_repeatedly_is_left_out_and_all_are_tried_when_all_are() {
        let b = balancer(3);
        b.failed(0);
        b.failed(0);
        assert!((0..30).any(|_| b.pick(None) == 0), "two failures are not enough");
        b.failed(0);
        assert_eq!(b.instance(0).metrics.ejections.get(), 1);
        assert!((0..100).all(|_| b.pick(None) != 0), "ejected");
        b.succeeded(1);
        for i in [1, 2] {
            for _ in 0..FAILURES_TO_EJECT {
                b.failed(i);
            }
        }
        // Panic mode: all ejected, all tried.
        let picked: std::collections::HashSet<usize> = (0..100).map(|_| b.pick(None)).collect();
        assert_eq!(picked.len(), 3);
    }

    #[test]
    fn a_success_ends_the_series() {
        let b = balancer(2);
        b.failed(0);
        b.failed(0);
        b.succeeded(0);
        b.failed(0);
        b.failed(0);
        assert_eq!(b.instance(0).metrics.ejections.get(), 0);
    }
}

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
//!
//! **Resolution**, where the route sets `resolve_interval`: each upstream
//! named by a host name is resolved that often ([`watch_dns`]), and every
//! address it has is an instance (a Kubernetes headless Service's pods,
//! say), reached at that address with the name in `Host` and TLS's server
//! name. An address that stays keeps its instance and what is known of
//! it; one that goes stops getting requests (those under way finish); a
//! name that cannot be resolved keeps the addresses it had, as Envoy's
//! `STRICT_DNS` does. Until the first answer, a name is one instance,
//! resolved by each new connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng as _;

use crate::telemetry::metrics::{InstanceMetrics, RouteInstances};
use crate::upstream::pool::Target;

/// Failures in a row that eject an instance.
pub const FAILURES_TO_EJECT: u32 = 3;
/// How many times an ejection may double (to 16 times the first).
const MAX_DOUBLINGS: u32 = 4;

/// One instance and what the balancer knows of it.
pub struct Instance {
    pub target: Target,
    pub metrics: InstanceMetrics,
    /// What its metrics and log lines call it: its authority, or the
    /// address its name resolved to.
    pub name: String,
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

impl Instance {
    fn new(target: Target, name: String, series: &RouteInstances) -> Arc<Instance> {
        let metrics = series.series(&name);
        let target = target.timing_connections(metrics.connect.clone());
        Arc::new(Instance {
            target,
            metrics,
            name,
            outstanding: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        })
    }
}

/// A route's instances.
pub struct Balancer {
    /// Replaced whole when resolution changes them; a request holds the
    /// instance it was given, not a place in this list.
    instances: ArcSwap<Vec<Arc<Instance>>>,
    /// The upstreams as configured, which resolution starts from.
    configured: Vec<Target>,
    series: RouteInstances,
    ejection_time: Duration,
    epoch: Instant,
}

/// An instance's share of a request: counted as outstanding until dropped.
pub struct Outstanding {
    instance: Arc<Instance>,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.instance.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer over `configured`, each an instance until resolution
    /// says otherwise; `series` makes each instance's metrics.
    pub fn new(configured: Vec<Target>, series: RouteInstances, ejection_time: Duration) -> Balancer {
        let instances =
            configured.iter().map(|t| Instance::new(t.clone(), t.authority().to_string(), &series)).collect();
        Balancer {
            instances: ArcSwap::from_pointee(instances),
            configured,
            series,
            ejection_time,
            epoch: Instant::now(),
        }
    }

    /// The instances now.
    pub fn instances(&self) -> Arc<Vec<Arc<Instance>>> {
        self.instances.load_full()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn available(instance: &Instance, now: u64) -> bool {
        instance.ejected_until.load(Ordering::Relaxed) <= now && !instance.down.load(Ordering::Relaxed)
    }

    /// Records a health probe's outcome: an instance whose probe failed is
    /// left out until one succeeds.
    pub fn probed(&self, instance: &Instance, healthy: bool) {
        // It changes when it was down and is healthy, or the other way.
        let was_down = instance.down.swap(!healthy, Ordering::Relaxed);
        if was_down == healthy {
            if healthy {
                tracing::info!(upstream = %instance.name, "an upstream instance passes its health check again");
            } else {
                instance.metrics.ejections.inc();
                tracing::warn!(upstream = %instance.name, "an upstream instance fails its health check; left out");
            }
        }
    }

    /// The instance for the next request, other than `not` (one that just
    /// failed it) when there is another.
    pub fn pick(&self, not: Option<&Arc<Instance>>) -> Arc<Instance> {
        let now = self.now_ms();
        let instances = self.instances.load();
        let is_not = |i: &Arc<Instance>| not.is_some_and(|n| Arc::ptr_eq(n, i));
        // Counted and then walked, not collected: a pick per request
        // allocates nothing.
        let healthy_only = instances.iter().any(|i| !is_not(i) && Self::available(i, now));
        // When every other instance is ejected, they are tried anyway.
        let eligible = |i: &&Arc<Instance>| !is_not(i) && (!healthy_only || Self::available(i, now));
        let n = instances.iter().filter(eligible).count();
        let nth = |k: usize| instances.iter().filter(eligible).nth(k).unwrap_or(&instances[0]);
        match n {
            0 => not.cloned().unwrap_or_else(|| instances[0].clone()),
            1 => nth(0).clone(),
            n => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + 1 + rng.gen_range(0..n - 1)) % n;
                let (a, b) = (nth(a), nth(b));
                let load = |i: &Instance| i.outstanding.load(Ordering::Relaxed);
                if load(b) < load(a) { b.clone() } else { a.clone() }
            }
        }
    }

    /// Counts a request to `instance` as outstanding until the returned
    /// guard is dropped.
    pub fn start(&self, instance: &Arc<Instance>) -> Outstanding {
        instance.outstanding.fetch_add(1, Ordering::Relaxed);
        instance.metrics.requests.inc();
        Outstanding { instance: instance.clone() }
    }

    pub fn succeeded(&self, instance: &Instance) {
        if instance.failures.load(Ordering::Relaxed) != 0 {
            instance.failures.store(0, Ordering::Relaxed);
            instance.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure, and ejects the instance at the
    /// [`FAILURES_TO_EJECT`]th in a row (at the first after it returns).
    pub fn failed(&self, instance: &Instance) {
        instance.metrics.failures.inc();
        let failures = instance.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.now_ms();
        if failures < FAILURES_TO_EJECT || !Self::available(instance, now) {
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
            upstream = %instance.name,
            failures = FAILURES_TO_EJECT,
            ejected_for = ?time,
            "an upstream instance keeps failing; left out of balancing for a while"
        );
    }

    /// Makes the instances those of `resolved`: for each configured
    /// upstream, the addresses its name has now, or `None` where it is an
    /// address already or its name could not be resolved (it keeps the
    /// instances it has). Instances at an address that stays are kept as
    /// they are; an address two names share is one instance, the first's.
    pub fn resolved(&self, resolved: &[Option<Vec<SocketAddr>>]) {
        let old = self.instances.load_full();
        let mut new: Vec<Arc<Instance>> = Vec::with_capacity(old.len());
        for (target, addresses) in self.configured.iter().zip(resolved) {
            let from_here = |i: &&Arc<Instance>| i.target.same_upstream(target);
            match addresses {
                None => {
                    for instance in old.iter().filter(from_here) {
                        if !new.iter().any(|n| n.name == instance.name) {
                            new.push(instance.clone());
                        }
                    }
                }
                Some(addresses) => {
                    for address in addresses {
                        let name = address.to_string();
                        if new.iter().any(|n| n.name == name) {
                            continue;
                        }
                        let kept = old.iter().filter(from_here).find(|i| i.target.address() == Some(*address));
                        new.push(match kept {
                            Some(instance) => instance.clone(),
                            None => Instance::new(target.clone().at(*address), name, &self.series),
                        });
                    }
                }
            }
        }
        let same = new.len() == old.len() && new.iter().all(|n| old.iter().any(|o| Arc::ptr_eq(n, o)));
        if same || new.is_empty() {
            return;
        }
        let names = |list: &[Arc<Instance>]| list.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        tracing::info!(instances = ?names(&new), was = ?names(&old), "an upstream's instances changed as its name resolved");
        for gone in old.iter().filter(|o| !new.iter().any(|n| n.name == o.name)) {
            self.series.forget(&gone.name);
        }
        self.instances.store(Arc::new(new));
    }
}

/// Resolves the route's host names every `interval` (see the module's
/// documentation), for as long as the balancer is in use: it ends once a
/// reload has dropped the route.
pub async fn watch_dns(balancer: std::sync::Weak<Balancer>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(balancer) = balancer.upgrade() else { return };
        let mut resolved = Vec::with_capacity(balancer.configured.len());
        for target in &balancer.configured {
            let (host, port) = target.host_port();
            if host.parse::<std::net::IpAddr>().is_ok() {
                // An address already: its instance stays as it is.
                resolved.push(None);
                continue;
            }
            let answer = tokio::time::timeout(interval, tokio::net::lookup_host((host, port))).await;
            resolved.push(match answer {
                Ok(Ok(addresses)) => {
                    let mut addresses: Vec<SocketAddr> = addresses.collect();
                    addresses.sort();
                    addresses.dedup();
                    Some(addresses).filter(|a| !a.is_empty())
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %target.authority(), error = %e, "an upstream's name did not resolve; its instances stay as they were");
                    None
                }
                Err(_) => {
                    tracing::warn!(upstream = %target.authority(), timeout = ?interval, "an upstream's name did not resolve in time; its instances stay as they were");
                    None
                }
            });
        }
        balancer.resolved(&resolved);
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
        for instance in balancer.instances().iter() {
            let target = &instance.target;
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
            balancer.probed(instance, healthy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::Scheme;

    fn balancer_of(authorities: &[&str]) -> Balancer {
        let metrics = crate::telemetry::metrics::Metrics::new();
        let configured =
            authorities.iter().map(|a| Target::new(Scheme::HTTP, a.parse().unwrap(), None)).collect::<Vec<_>>();
        Balancer::new(configured, metrics.instances("r"), Duration::from_secs(60))
    }

    fn balancer(n: usize) -> (Balancer, Vec<Arc<Instance>>) {
        let authorities: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
        let b = balancer_of(&authorities.iter().map(String::as_str).collect::<Vec<_>>());
        let instances = b.instances().to_vec();
        (b, instances)
    }

    fn index(instances: &[Arc<Instance>], picked: &Arc<Instance>) -> usize {
        instances.iter().position(|i| Arc::ptr_eq(i, picked)).expect("one of them")
    }

    #[test]
    fn the_less_loaded_of_two_is_picked() {
        let (b, i) = balancer(2);
        let _busy: Vec<Outstanding> = (0..3).map(|_| b.start(&i[0])).collect();
        for _ in 0..50 {
            assert_eq!(index(&i, &b.pick(None)), 1);
        }
        assert_eq!(index(&i, &b.pick(Some(&i[1]))), 0, "another than the one that failed");
    }

    #[test]
    fn outstanding_requests_end_with_their_guards() {
        let (b, i) = balancer(3);
        let guard = b.start(&i[2]);
        assert_eq!(i[2].outstanding.load(Ordering::Relaxed), 1);
        drop(guard);
        assert_eq!(i[2].outstanding.load(Ordering::Relaxed), 0);
        assert_eq!(i[2].metrics.requests.get(), 1);
    }

    #[test]
    fn an_instance_failing_repeatedly_is_left_out_and_all_are_tried_when_all_are() {
        let (b, i) = balancer(3);
        b.failed(&i[0]);
        b.failed(&i[0]);
        assert!((0..30).any(|_| index(&i, &b.pick(None)) == 0), "two failures are not enough");
        b.failed(&i[0]);
        assert_eq!(i[0].metrics.ejections.get(), 1);
        assert!((0..100).all(|_| index(&i, &b.pick(None)) != 0), "ejected");
        b.succeeded(&i[1]);
        for n in [1, 2] {
            for _ in 0..FAILURES_TO_EJECT {
                b.failed(&i[n]);
            }
        }
        // Panic mode: all ejected, all tried.
        let picked: std::collections::HashSet<usize> = (0..100).map(|_| index(&i, &b.pick(None))).collect();
        assert_eq!(picked.len(), 3);
    }

    #[test]
    fn a_success_ends_the_series() {
        let (b, i) = balancer(2);
        b.failed(&i[0]);
        b.failed(&i[0]);
        b.succeeded(&i[0]);
        b.failed(&i[0]);
        b.failed(&i[0]);
        assert_eq!(i[0].metrics.ejections.get(), 0);
    }

    #[test]
    fn resolution_keeps_the_addresses_that_stay_and_the_names_that_fail() {
        let b = balancer_of(&["api.internal:8080", "10.9.9.9:80"]);
        let names = |b: &Balancer| b.instances().iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&b), ["api.internal:8080", "10.9.9.9:80"], "names until resolved");
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        b.resolved(&[Some(vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]), None]);
        assert_eq!(names(&b), ["10.0.0.1:8080", "10.0.0.2:8080", "10.9.9.9:80"]);
        let first = b.instances()[0].clone();
        assert_eq!(first.target.address(), Some(addr("10.0.0.1:8080")));
        assert_eq!(first.target.host, "api.internal:8080", "the name stays in Host");
        b.failed(&first);

        // 10.0.0.1 stays (with its failure), .2 goes, .3 comes.
        b.resolved(&[Some(vec![addr("10.0.0.1:8080"), addr("10.0.0.3:8080")]), None]);
        assert_eq!(names(&b), ["10.0.0.1:8080", "10.0.0.3:8080", "10.9.9.9:80"]);
        assert!(Arc::ptr_eq(&b.instances()[0], &first), "an address that stays keeps its instance");
        assert_eq!(first.failures.load(Ordering::Relaxed), 1);

        // A name that does not resolve keeps what it had.
        b.resolved(&[None, None]);
        assert_eq!(names(&b), ["10.0.0.1:8080", "10.0.0.3:8080", "10.9.9.9:80"]);
    }
}

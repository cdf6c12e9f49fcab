//! The metrics every proxied request writes, split into one shard per
//! worker.
//!
//! A shared atomic counter written by every core moves its cache line from
//! core to core at each increment; the hot path writes a dozen of them per
//! request (count, duration buckets, sums, bytes, in-flight, cache hits),
//! and that traffic cost about a twentieth of the gateway's CPU per
//! request (benches/cpu_per_request.sh, with and without). Here each
//! worker writes shards on cache lines of its own, and a scrape adds the
//! shards up: exact at the moment of the scrape, as prometheus's own types
//! are, with no flush interval.
//!
//! Series are declared with prometheus's `Opts` and `HistogramOpts` and
//! rendered by its encoder, so names, help, types, label order and bucket
//! layout are what the registry's other metrics get.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{HistogramOpts, Opts};

thread_local! {
    /// The shard the calling thread writes.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// How many shards each metric has: one per core (at most 64), so that
/// each worker has its own.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(64))
}

/// Makes the calling thread write shard `worker` (modulo the shard count)
/// of every sharded metric. Threads that never call it write shard 0;
/// shards are atomic, so any thread may write any shard, only slower.
pub fn use_shard(worker: usize) {
    SHARD.with(|s| s.set(worker % shard_count()));
}

fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// A value on cache lines of its own (128 bytes: the adjacent-line
/// prefetcher pairs 64-byte lines).
#[repr(align(128))]
struct Line<T>(T);

fn lines<T>(mut make: impl FnMut() -> T) -> Arc<[Line<T>]> {
    (0..shard_count()).map(|_| Line(make())).collect()
}

/// A monotonic counter.
#[derive(Clone)]
pub struct Counter(Arc<[Line<AtomicU64>]>);

impl Counter {
    fn new() -> Counter {
        Counter(lines(|| AtomicU64::new(0)))
    }

    pub fn inc(&self) {
        self.inc_by(1);
    }

    pub fn inc_by(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|l| l.0.load(Relaxed)).fold(0, u64::wrapping_add)
    }
}

/// A gauge that goes up and down by one (requests in flight). A request's
/// increment and decrement may land in different shards, so a shard may
/// go negative; the sum is right.
#[derive(Clone)]
pub struct Gauge(Arc<[Line<AtomicI64>]>);

impl Gauge {
    fn new() -> Gauge {
        Gauge(lines(|| AtomicI64::new(0)))
    }

    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Relaxed);
    }

    pub fn dec(&self) {
        self.0[shard()].0.fetch_sub(1, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.iter().map(|l| l.0.load(Relaxed)).fold(0, i64::wrapping_add)
    }
}

/// The most buckets a histogram may have.
const MAX_BUCKETS: usize = 16;

/// One shard of a histogram: a count per bucket (the last is `+Inf`) and
/// the sum of the observations in nanoseconds, which adds exactly.
struct HistogramShard {
    counts: [AtomicU64; MAX_BUCKETS + 1],
    nanos: AtomicU64,
}

/// A histogram of durations.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramCore>);

struct HistogramCore {
    /// Upper bounds in seconds, as declared, and in nanoseconds, as compared.
    bounds: Vec<f64>,
    bounds_nanos: Vec<u64>,
    shards: Arc<[Line<HistogramShard>]>,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        assert!(bounds.len() <= MAX_BUCKETS, "at most {MAX_BUCKETS} buckets");
        let bounds_nanos = bounds.iter().map(|b| (b * 1e9).round() as u64).collect();
        let shards = lines(|| HistogramShard { counts: Default::default(), nanos: AtomicU64::new(0) });
        Histogram(Arc::new(HistogramCore { bounds: bounds.to_vec(), bounds_nanos, shards }))
    }

    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let core = &*self.0;
        let bucket = core.bounds_nanos.iter().position(|b| nanos <= *b).unwrap_or(core.bounds_nanos.len());
        let shard = &core.shards[shard()].0;
        shard.counts[bucket].fetch_add(1, Relaxed);
        shard.nanos.fetch_add(nanos, Relaxed);
    }

    fn proto(&self) -> proto::Histogram {
        let core = &*self.0;
        let mut counts = [0u64; MAX_BUCKETS + 1];
        let mut nanos = 0u64;
        for shard in core.shards.iter() {
            for (total, count) in counts.iter_mut().zip(&shard.0.counts) {
                *total += count.load(Relaxed);
            }
            nanos = nanos.wrapping_add(shard.0.nanos.load(Relaxed));
        }
        let mut cumulative = 0;
        let buckets = core
            .bounds
            .iter()
            .zip(counts)
            .map(|(bound, count)| {
                cumulative += count;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        // The count is the buckets' total as read, so `+Inf` and `_count`
        // always agree.
        h.set_sample_count(counts[..=core.bounds.len()].iter().sum());
        h.set_sample_sum(nanos as f64 / 1e9);
        h.set_bucket(buckets);
        h
    }
}

/// What a family's series are.
pub trait Series: Clone + Send + Sync + 'static {
    const TYPE: MetricType;
    fn write(&self, metric: &mut proto::Metric);
}

impl Series for Counter {
    const TYPE: MetricType = MetricType::COUNTER;
    fn write(&self, metric: &mut proto::Metric) {
        let mut c = proto::Counter::default();
        c.set_value(self.get() as f64);
        metric.set_counter(c);
    }
}

impl Series for Gauge {
    const TYPE: MetricType = MetricType::GAUGE;
    fn write(&self, metric: &mut proto::Metric) {
        let mut g = proto::Gauge::default();
        g.set_value(self.get() as f64);
        metric.set_gauge(g);
    }
}

impl Series for Histogram {
    const TYPE: MetricType = MetricType::HISTOGRAM;
    fn write(&self, metric: &mut proto::Metric) {
        metric.set_histogram(self.proto());
    }
}

/// A metric and its series, one per set of label values; register it
/// with a prometheus `Registry` like any collector.
#[derive(Clone)]
pub struct Family<S: Series>(Arc<FamilyCore<S>>);

struct FamilyCore<S> {
    desc: Desc,
    make: Box<dyn Fn() -> S + Send + Sync>,
    series: Mutex<HashMap<Vec<String>, S>>,
}

impl Family<Counter> {
    pub fn counter(opts: Opts, labels: &[&str]) -> Family<Counter> {
        Family::new(opts.name, opts.help, labels, Box::new(Counter::new))
    }
}

impl Family<Gauge> {
    pub fn gauge(opts: Opts, labels: &[&str]) -> Family<Gauge> {
        Family::new(opts.name, opts.help, labels, Box::new(Gauge::new))
    }
}

impl Family<Histogram> {
    pub fn histogram(opts: HistogramOpts, labels: &[&str]) -> Family<Histogram> {
        let bounds = opts.buckets;
        Family::new(opts.common_opts.name, opts.common_opts.help, labels, Box::new(move || Histogram::new(&bounds)))
    }
}

impl<S: Series> Family<S> {
    fn new(name: String, help: String, labels: &[&str], make: Box<dyn Fn() -> S + Send + Sync>) -> Family<S> {
        let labels = labels.iter().map(|l| l.to_string()).collect();
        let desc = Desc::new(name, help, labels, HashMap::new()).expect("a valid metric name and labels");
        Family(Arc::new(FamilyCore { desc, make, series: Mutex::new(HashMap::new()) }))
    }

    /// The series of these label values (in the order the labels were
    /// declared), made at zero the first time. Not for the hot path:
    /// resolve series once and keep them.
    pub fn with_labels(&self, values: &[&str]) -> S {
        assert_eq!(values.len(), self.0.desc.variable_labels.len(), "one value per label");
        let mut series = self.0.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        series.entry(key).or_insert_with(|| (self.0.make)()).clone()
    }
}

impl<S: Series> Collector for Family<S> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let desc = &self.0.desc;
        let series = self.0.series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let metrics = series
            .iter()
            .map(|(values, s)| {
                let mut labels: Vec<proto::LabelPair> = desc
                    .variable_labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = proto::LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                // As prometheus's own metrics order them.
                labels.sort_by(|a, b| a.name().cmp(b.name()));
                let mut metric = proto::Metric::default();
                metric.set_label(labels);
                s.write(&mut metric);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(desc.fq_name.clone());
        family.set_help(desc.help.clone());
        family.set_field_type(S::TYPE);
        family.set_metric(metrics);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(collector: impl Collector + 'static) -> String {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(collector)).expect("register");
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut out).expect("encode");
        String::from_utf8(out).expect("text")
    }

    #[test]
    fn shards_written_from_several_threads_add_up() {
        let family = Family::counter(Opts::new("t_total", "help"), &["route"]);
        let counter = family.with_labels(&["a"]);
        std::thread::scope(|s| {
            for worker in 0..4 {
                let counter = counter.clone();
                s.spawn(move || {
                    use_shard(worker);
                    for _ in 0..1000 {
                        counter.inc();
                    }
                });
            }
        });
        assert_eq!(counter.get(), 4000);
        assert!(Arc::ptr_eq(&family.with_labels(&["a"]).0, &counter.0), "one series per label set");
        assert!(render(family).contains("t_total{route=\"a\"} 4000\n"));
    }

    #[test]
    fn a_gauge_sums_shards_that_went_negative() {
        let gauge = Family::gauge(Opts::new("g", "help"), &[]).with_labels(&[]);
        std::thread::scope(|s| {
            s.spawn(|| {
                use_shard(0);
                gauge.inc();
            });
        });
        std::thread::scope(|s| {
            s.spawn(|| {
                use_shard(1);
                gauge.dec();
            });
        });
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn histograms_render_as_prometheus_renders_them() {
        let opts = HistogramOpts::new("d_seconds", "help").buckets(vec![0.001, 0.01]);
        let family = Family::histogram(opts, &["route", "outcome"]);
        let h = family.with_labels(&["r", "allowed"]);
        h.observe(Duration::from_micros(1000)); // on the bound: counts as <= 0.001
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(2));
        let text = render(family);
        let expected = "# HELP d_seconds help\n# TYPE d_seconds histogram\n\
            d_seconds_bucket{outcome=\"allowed\",route=\"r\",le=\"0.001\"} 1\n\
            d_seconds_bucket{outcome=\"allowed\",route=\"r\",le=\"0.01\"} 2\n\
            d_seconds_bucket{outcome=\"allowed\",route=\"r\",le=\"+Inf\"} 3\n\
            d_seconds_sum{outcome=\"allowed\",route=\"r\"} 2.006\n\
            d_seconds_count{outcome=\"allowed\",route=\"r\"} 3\n";
        assert_eq!(text, expected);
    }
}

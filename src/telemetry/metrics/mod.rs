//! Prometheus metrics, served on the admin listener only.
//!
//! Label sets are bounded: route names come from the config, outcomes and
//! reasons from enums here; no raw path, token or client-supplied value is
//! ever a label. Per-route series are resolved once at start, so the hot
//! path touches only atomics.

use http_body_util::BodyExt as _;
use prometheus::{
    Encoder as _, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::http::Body;

mod sharded;
pub use sharded::{Counter, Family, Gauge, Histogram, use_shard};

/// How a request through a route ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    MissingToken,
    InvalidToken,
    InsufficientScope,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
    Unavailable,
}

impl Outcome {
    const ALL: [Outcome; 10] = [
        Outcome::Allowed,
        Outcome::MissingToken,
        Outcome::InvalidToken,
        Outcome::InsufficientScope,
        Outcome::InvalidRequest,
        Outcome::MethodNotAllowed,
        Outcome::NotFound,
        Outcome::UpstreamError,
        Outcome::UpstreamTimeout,
        Outcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::MissingToken => "missing_token",
            Outcome::InvalidToken => "invalid_token",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::NotFound => "not_found",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// The series of one route, one counter and histogram per outcome.
pub struct RouteMetrics {
    series: Vec<(Counter, Histogram)>,
    pub upstream_duration: Histogram,
    /// What the gateway itself added to an allowed request: the request's
    /// duration less the upstream's.
    pub overhead: Histogram,
    /// Body bytes forwarded to the upstream, and relayed back from it.
    pub request_bytes: Counter,
    pub response_bytes: Counter,
}

/// `body`, adding the length of each data frame to `counter` as it passes:
/// bodies stream, so this is the only place their size is known. The size
/// hint passes through, so a body of known length keeps its
/// `Content-Length` framing. It boxes `body` once: wrap a body here
/// instead of boxing it, not after (every layer is polled per frame).
pub fn counted<B>(body: B, counter: &Counter) -> Body
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<crate::http::BoxError>,
{
    Counted { inner: body, counter: counter.clone() }.boxed_unsync()
}

struct Counted<B> {
    inner: B,
    counter: Counter,
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<crate::http::BoxError>,
{
    type Data = bytes::Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.inc_by(data.len() as u64);
                }
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            std::task::Poll::Ready(Some(Err(e))) => std::task::Poll::Ready(Some(Err(e.into()))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl RouteMetrics {
    pub fn observe(&self, outcome: Outcome, elapsed: std::time::Duration) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        let (count, duration) = &self.series[i];
        count.inc();
        duration.observe(elapsed);
    }
}

/// Every metric. Those each proxied request writes are sharded per worker
/// (`sharded`); the rest are prometheus's own.
pub struct Metrics {
    registry: Registry,
    requests: Family<Counter>,
    request_duration: Family<Histogram>,
    upstream_duration: Family<Histogram>,
    overhead: Family<Histogram>,
    request_bytes: Family<Counter>,
    response_bytes: Family<Counter>,
    pub denials: IntCounterVec,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: IntGauge,
    pub cache_evictions: IntCounter,
    pub token_validations: IntCounter,
    pub tokens_issued: IntCounterVec,
    pub token_requests: IntCounterVec,
    pub in_flight: Gauge,
    pub authorization_flow: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Notices (revocations, client and key changes) told to and heard
    /// from the other replicas, and the feed's returns after a cut (each
    /// one empties the cache).
    pub replica_notices: IntCounterVec,
    pub tls_expiry: IntGauge,
    /// Whether the store answered the last health check (1) or not (0),
    /// and how often that changed.
    pub store_up: IntGauge,
    pub store_transitions: IntCounterVec,
    /// WebSockets: open now and opened, by route; closed, by route and
    /// what ended them.
    pub websockets_open: IntGaugeVec,
    pub websockets: IntCounterVec,
    pub websockets_closed: IntCounterVec,
    upstream_instances: InstanceFamilies,
}

/// The families of upstream instances' series.
#[derive(Clone)]
struct InstanceFamilies {
    requests: IntCounterVec,
    failures: IntCounterVec,
    ejections: IntCounterVec,
    connect: prometheus::HistogramVec,
}

/// One balanced route's instance series: made for each instance as it
/// comes (a host name may resolve to new addresses), and forgotten as it
/// goes, so that a Service's churning pods do not pile up series.
#[derive(Clone)]
pub struct RouteInstances {
    route: String,
    families: InstanceFamilies,
}

impl RouteInstances {
    /// Resolves every series of `instance`.
    pub fn series(&self, instance: &str) -> InstanceMetrics {
        let labels = [self.route.as_str(), instance];
        let f = &self.families;
        InstanceMetrics {
            requests: f.requests.with_label_values(&labels),
            failures: f.failures.with_label_values(&labels),
            ejections: f.ejections.with_label_values(&labels),
            connect: f.connect.with_label_values(&labels),
        }
    }

    /// Drops every series of `instance`.
    pub fn forget(&self, instance: &str) {
        let labels = [self.route.as_str(), instance];
        let f = &self.families;
        let _ = f.requests.remove_label_values(&labels);
        let _ = f.failures.remove_label_values(&labels);
        let _ = f.ejections.remove_label_values(&labels);
        let _ = f.connect.remove_label_values(&labels);
    }
}

/// The series of one upstream instance of a balanced route.
#[derive(Clone)]
pub struct InstanceMetrics {
    pub requests: IntCounter,
    /// Failed to connect, failed mid-exchange, or answered 502, 503 or 504.
    pub failures: IntCounter,
    pub ejections: IntCounter,
    pub connect: prometheus::Histogram,
}

/// The gateway's own share is tens of microseconds on a cache hit, so its
/// buckets start lower than those of whole requests.
const OVERHEAD_BUCKETS: &[f64] =
    &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = Family::counter(
            Opts::new("portcullis_requests_total", "Requests handled on the public listener, by route and outcome."),
            &["route", "outcome"],
        );
        let request_duration = Family::histogram(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from request head to response head, by route and outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "outcome"],
        );
        let upstream_duration = Family::histogram(
            HistogramOpts::new(
                "portcullis_upstream_duration_seconds",
                "Time the upstream took to start its response, by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        );
        let overhead = Family::histogram(
            HistogramOpts::new(
                "portcullis_gateway_overhead_seconds",
                "Time the gateway itself spent on allowed requests (duration less the upstream's), by route.",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            &["route"],
        );
        let request_bytes = Family::counter(
            Opts::new("portcullis_request_body_bytes_total", "Request body bytes forwarded to the upstream, by route."),
            &["route"],
        );
        let response_bytes = Family::counter(
            Opts::new(
                "portcullis_response_body_bytes_total",
                "Response body bytes relayed from the upstream to the client, by route.",
            ),
            &["route"],
        );
        let denials = IntCounterVec::new(
            Opts::new("portcullis_denials_total", "Requests refused by bearer enforcement, by route and reason."),
            &["route", "reason"],
        )
        .expect("static metric definition");
        let cache_requests = Family::counter(
            Opts::new("portcullis_validation_cache_requests_total", "Token validation cache lookups, by result."),
            &["result"],
        );
        let cache_entries =
            IntGauge::new("portcullis_validation_cache_entries", "Entries in the token validation cache.")
                .expect("static metric definition");
        let cache_evictions = IntCounter::new(
            "portcullis_validation_cache_evictions_total",
            "Validation cache entries evicted because the cache was full (raise cache.max_entries if this grows).",
        )
        .expect("static metric definition");
        let token_validations = IntCounter::new(
            "portcullis_token_validations_total",
            "Full token validations (signature check or store lookup) done on cache misses.",
        )
        .expect("static metric definition");
        let tokens_issued = IntCounterVec::new(
            Opts::new("portcullis_tokens_issued_total", "Access tokens issued, by grant type."),
            &["grant_type"],
        )
        .expect("static metric definition");
        let token_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_token_requests_total",
                "Token endpoint requests, by result (issued or the RFC 6749 error code).",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let authorization_flow = IntCounterVec::new(
            Opts::new(
                "portcullis_authorization_flow_total",
                "Authorization endpoint events: login_succeeded, login_failed, login_throttled, consent_granted, consent_denied, consent_remembered.",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let tls_reloads = IntCounterVec::new(
            Opts::new("portcullis_tls_reload_total", "TLS certificate reloads, by result (success or error)."),
            &["result"],
        )
        .expect("static metric definition");
        let store_up = IntGauge::new(
            "portcullis_store_up",
            "Whether the store (SQLite or PostgreSQL) answered the last health check, every second: 1 or 0.",
        )
        .expect("static metric definition");
        let store_transitions = IntCounterVec::new(
            Opts::new(
                "portcullis_store_transitions_total",
                "Times the store became unreachable (to=down) or reachable again (to=up).",
            ),
            &["to"],
        )
        .expect("static metric definition");
        let tls_expiry = IntGauge::new(
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            "When the serving TLS certificate expires (notAfter), in Unix seconds.",
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new("portcullis_config_reload_total", "Configuration reloads, by result (success or error)."),
            &["result"],
        )
        .expect("static metric definition");
        let replica_notices = IntCounterVec::new(
            Opts::new(
                "portcullis_replica_notices_total",
                "Revocations and client and key changes shared with other replicas: announced, announce_failed, heard, and resumed (the feed came back after a cut and the cache was emptied).",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let websockets_open = IntGaugeVec::new(
            Opts::new("portcullis_websockets_open", "WebSocket connections being relayed, by route."),
            &["route"],
        )
        .expect("static metric definition");
        let websockets = IntCounterVec::new(
            Opts::new("portcullis_websockets_total", "WebSocket connections upgraded, by route."),
            &["route"],
        )
        .expect("static metric definition");
        let websockets_closed = IntCounterVec::new(
            Opts::new(
                "portcullis_websockets_closed_total",
                "WebSocket connections ended, by route and reason: client, upstream, revoked, expired, idle, shutdown, protocol_error, error.",
            ),
            &["route", "reason"],
        )
        .expect("static metric definition");
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_requests_total",
                "Requests sent to each instance of a route with several, by route and instance.",
            ),
            &["route", "instance"],
        )
        .expect("static metric definition");
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_failures_total",
                "Requests to an instance that failed to connect, failed in the exchange, or got 502, 503 or 504.",
            ),
            &["route", "instance"],
        )
        .expect("static metric definition");
        let upstream_ejections = IntCounterVec::new(
            Opts::new(
                "portcullis_upstream_ejections_total",
                "Times an instance was left out of its route's balancing after failing repeatedly.",
            ),
            &["route", "instance"],
        )
        .expect("static metric definition");
        let upstream_connect = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "portcullis_upstream_connect_seconds",
                "Time to open a connection to an instance (TCP, and TLS for https), by route and instance.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "instance"],
        )
        .expect("static metric definition");
        let in_flight = Family::gauge(
            Opts::new("portcullis_requests_in_flight", "Requests being handled on the public listener."),
            &[],
        );

        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(overhead.clone()),
            Box::new(request_bytes.clone()),
            Box::new(response_bytes.clone()),
            Box::new(denials.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_entries.clone()),
            Box::new(cache_evictions.clone()),
            Box::new(token_validations.clone()),
            Box::new(tokens_issued.clone()),
            Box::new(token_requests.clone()),
            Box::new(in_flight.clone()),
            Box::new(authorization_flow.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(config_reloads.clone()),
            Box::new(replica_notices.clone()),
            Box::new(tls_expiry.clone()),
            Box::new(store_up.clone()),
            Box::new(store_transitions.clone()),
            Box::new(websockets_open.clone()),
            Box::new(websockets.clone()),
            Box::new(websockets_closed.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(upstream_failures.clone()),
            Box::new(upstream_ejections.clone()),
            Box::new(upstream_connect.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            cache_hits: cache_requests.with_labels(&["hit"]),
            cache_misses: cache_requests.with_labels(&["miss"]),
            in_flight: in_flight.with_labels(&[]),
            registry,
            requests,
            request_duration,
            upstream_duration,
            overhead,
            request_bytes,
            response_bytes,
            denials,
            cache_entries,
            cache_evictions,
            token_validations,
            tokens_issued,
            token_requests,
            authorization_flow,
            tls_reloads,
            config_reloads,
            replica_notices,
            tls_expiry,
            store_up,
            store_transitions,
            websockets_open,
            websockets,
            websockets_closed,
            upstream_instances: InstanceFamilies {
                requests: upstream_requests,
                failures: upstream_failures,
                ejections: upstream_ejections,
                connect: upstream_connect,
            },
        }
    }

    /// The series of a balanced route's instances.
    pub fn instances(&self, route: &str) -> RouteInstances {
        RouteInstances { route: route.to_owned(), families: self.upstream_instances.clone() }
    }

    /// Resolves (and so pre-creates, at zero) every series of one route.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            series: Outcome::ALL
                .iter()
                .map(|o| {
                    (
                        self.requests.with_labels(&[route, o.as_str()]),
                        self.request_duration.with_labels(&[route, o.as_str()]),
                    )
                })
                .collect(),
            upstream_duration: self.upstream_duration.with_labels(&[route]),
            overhead: self.overhead.with_labels(&[route]),
            request_bytes: self.request_bytes.with_labels(&[route]),
            response_bytes: self.response_bytes.with_labels(&[route]),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O; a failure would be a
        // malformed metric, which the definitions above rule out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

//! Forwarding: rewriting a request that was let through for its upstream,
//! sending it on a pooled keep-alive connection (plain, or TLS as
//! `crate::tls::upstream` says), and relaying the answer.
//!
//! Bodies stream both ways untouched (except a form body whose token was
//! taken out). The heads are `headers`'s: hop-by-hop headers removed both
//! ways, identity headers a client sent stripped before the gateway adds
//! its own, `X-Forwarded-*` believed only from a trusted proxy. `demo` is
//! the built-in demo API.
//!
//! What the upstream receives is decided here; how it is sent is
//! `upstream`'s. Failures are `ForwardError`s, which `gateway::refusal`
//! turns into responses. This room reads identities (`auth`) but never
//! validates a token, and knows nothing of routes' scopes.

mod demo;
mod headers;
pub mod tunnel;

use demo::static_demo;
pub use headers::{
    ForwardContext, METHOD_OVERRIDE_HEADERS, X_AUTH_CLIENT_ID, X_AUTH_SCOPE, X_AUTH_SUBJECT, X_FORWARDED_FOR,
    X_FORWARDED_HOST, X_FORWARDED_PREFIX, strip_gateway_cookies, strip_gateway_set_cookies, strip_hop_by_hop,
    upstream_headers,
};

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use http::{Request, Response, Uri, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::tokens::Identity;
use crate::config::{RouteConfig, Upstream};
use crate::http::Body;
use crate::telemetry::metrics::Metrics;
use crate::tls::upstream::UpstreamTls;
use crate::upstream::balance::{self, Balancer, Instance};
pub use crate::upstream::http1::Added;
use crate::upstream::http2::Http2Pool;
use crate::upstream::pool::{Exchanged, Failed, Pool, ResponseBody, Spoken, Target};

/// Where a route's requests go, resolved once per configuration.
pub enum Destination {
    /// The built-in demo API.
    Static,
    /// An upstream server, and the path its routes live under there.
    Upstream { target: Target, base_path: String },
    /// The same, spoken to in HTTP/2 (`h2c://`).
    Http2 { target: Target, base_path: String },
    /// Several instances of one upstream, balanced (`crate::upstream::balance`).
    Balanced { balancer: Arc<Balancer>, base_path: String, http2: bool },
}

impl Destination {
    pub fn new(route: &RouteConfig, metrics: &Metrics) -> Destination {
        let tls = route.upstream_tls.as_ref();
        match &route.upstream {
            Upstream::Http { scheme, base_path, http2, .. }
                if route.instances.len() > 1 || route.resolve_interval.is_some() =>
            {
                let configured = route.instances.iter().map(|authority| target(scheme, authority, tls)).collect();
                let balancer = Arc::new(Balancer::new(configured, metrics.instances(&route.name), route.ejection_time));
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    if let Some((path, interval)) = &route.health_check {
                        runtime.spawn(balance::watch_health(Arc::downgrade(&balancer), path.clone(), *interval));
                    }
                    if let Some(interval) = route.resolve_interval {
                        runtime.spawn(balance::watch_dns(Arc::downgrade(&balancer), interval));
                    }
                }
                Destination::Balanced { balancer, base_path: base_path.clone(), http2: *http2 }
            }
            _ => Destination::single(&route.upstream, tls),
        }
    }

    fn single(upstream: &Upstream, tls: Option<&UpstreamTls>) -> Destination {
        match upstream {
            Upstream::Static => Destination::Static,
            Upstream::Http { scheme, authority, base_path, http2: false } => {
                Destination::Upstream { target: target(scheme, authority, tls), base_path: base_path.clone() }
            }
            Upstream::Http { scheme, authority, base_path, http2: true } => Destination::Http2 {
                target: Target::new(scheme.clone(), authority.clone(), None),
                base_path: base_path.clone(),
            },
        }
    }
}

/// Where an `http://` or `https://` upstream's connections go; an
/// `https://` one is asked in ALPN whether it speaks HTTP/2.
fn target(scheme: &http::uri::Scheme, authority: &http::uri::Authority, tls: Option<&UpstreamTls>) -> Target {
    let target = Target::new(scheme.clone(), authority.clone(), tls.map(|t| t.client.clone()));
    match tls {
        Some(tls) => target.offering_h2(tls.client_h2.clone()),
        None => target,
    }
}

/// How many upstream exchanges may be in flight at once: one HTTP/2
/// connection's (`server.max_upstream_exchanges_per_connection`), or one
/// worker's share of those that streams run alongside another of their
/// connection's (`server.max_upstream_exchanges`). An exchange holds its
/// permits from before it asks for an upstream connection until its
/// response body is done with, so a client that opens streams and never
/// reads them (its window at zero) holds that many upstream connections at
/// most, and clients together no more sockets than the process may open.
/// A connection's first exchange (and every HTTP/1.1 one, bounded by
/// `server.max_connections` already) never waits on the shared bound: the
/// clients that hold it cannot take every other client's turn too.
#[derive(Clone)]
pub struct ExchangeLimit {
    permits: Arc<Semaphore>,
    size: usize,
}

impl ExchangeLimit {
    pub fn new(permits: usize) -> ExchangeLimit {
        let size = permits.clamp(1, Semaphore::MAX_PERMITS);
        ExchangeLimit { permits: Arc::new(Semaphore::new(size)), size }
    }

    async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        // Taken at once when free, which is nearly always.
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => self.permits.clone().acquire_owned().await.ok(),
        }
    }

    /// Exchanges holding a permit now.
    fn in_use(&self) -> usize {
        self.size - self.permits.available_permits()
    }
}

/// What an exchange holds while it lasts (see [`ExchangeLimit`]), and its
/// place among its instance's outstanding requests.
struct Permits {
    _connection: Option<OwnedSemaphorePermit>,
    _shared: Option<OwnedSemaphorePermit>,
    _instance: Option<balance::Outstanding>,
}

impl Permits {
    const NONE: Permits = Permits { _connection: None, _shared: None, _instance: None };
}

/// Why a request was not relayed; `gateway::refusal` says what the client
/// is told. Details (which upstream, which I/O error) go to the log here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The normalised path and query do not form a request target.
    #[error("the request target cannot be forwarded")]
    BadTarget,
    /// No upstream exchange came free within the route's timeout.
    #[error("no upstream exchange was free in time")]
    Busy,
    /// No response head within the route's timeout.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// Connecting, sending or reading the head failed.
    #[error("the upstream could not be reached")]
    Unreachable,
    /// The client's body broke off, or its framing did, while it was
    /// being sent: the client's doing, and no mark against the upstream.
    #[error("the client's request body could not be read")]
    ClientBody,
}

/// A worker's upstream connections (see `crate::upstream::pool`, and
/// `crate::upstream::http2` for HTTP/2 upstreams), and its share of the
/// process's shared upstream exchanges.
pub struct Forwarder {
    pool: Pool,
    http2: Http2Pool,
    exchanges: ExchangeLimit,
}

/// A forwarded exchange's result: the response and how long the upstream
/// took to start it.
pub struct Forwarded {
    pub response: Response<Relayed>,
    pub upstream_time: Duration,
}

/// What a WebSocket handshake came to.
pub enum Upgrade {
    /// The upstream switched.
    Switched(Switched),
    /// It answered otherwise (a refusal of its own, most often), which is
    /// relayed as any answer is.
    Answered(Forwarded),
}

/// An upstream's `101`: its head, hop-by-hop fields removed, and its side
/// of the tunnel.
pub struct Switched {
    pub head: http::response::Parts,
    pub upstream: tunnel::Upstream,
    pub upstream_time: Duration,
}

/// A response body on its way back: the upstream's, not yet boxed, so the
/// caller can wrap it (count it) and box it in one go.
pub enum Relayed {
    Upstream(Held<ResponseBody>),
    /// An HTTP/2 upstream's.
    Http2(Held<hyper::body::Incoming>),
    /// The built-in demo API's answer.
    Demo(Body),
}

impl Relayed {
    /// The body to send, its bytes added to `counter` as they pass.
    pub fn into_body(self, counter: &crate::telemetry::metrics::Counter) -> Body {
        match self {
            Relayed::Upstream(body) => crate::telemetry::metrics::counted(body, counter),
            Relayed::Http2(body) => crate::telemetry::metrics::counted(body, counter),
            Relayed::Demo(body) => crate::telemetry::metrics::counted(body, counter),
        }
    }
}

/// An upstream's response body, holding its exchange's permits until it is
/// done with, and telling an HTTP/2 stream's watch when it waits on the
/// upstream for more (`crate::http::h2_streams`): a stream whose client does not
/// read is the client's stall, one whose upstream does not send is the
/// route timeout's.
pub struct Held<B> {
    body: B,
    _permits: Permits,
    waiting: Option<crate::http::h2_streams::UpstreamWait>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Held<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if polled.is_pending() {
            if self.waiting.is_none() {
                self.waiting = crate::http::h2_streams::waiting_on_upstream();
            }
        } else {
            self.waiting = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An error and its causes, which is where the reason lives ("TLS
/// handshake: invalid peer certificate: Expired").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Forwarder {
    /// Must be called inside the worker's runtime (see `Pool::new`).
    /// `exchanges` is the worker's share of `server.max_upstream_exchanges`.
    pub fn new(exchanges: usize) -> Forwarder {
        Forwarder { pool: Pool::new(), http2: Http2Pool::default(), exchanges: ExchangeLimit::new(exchanges) }
    }

    /// Sends `req` (already rewritten) to `destination` and relays the
    /// answer. `path_and_query` is the normalised path plus the filtered
    /// query; `connection` bounds the exchanges of the client connection
    /// it came on (HTTP/2).
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        destination: &Destination,
        mut req: Request<Body>,
        mut added: Added,
        path_and_query: String,
        timeout: Duration,
        identity: Option<&Identity>,
        connection: Option<&ExchangeLimit>,
    ) -> Result<Forwarded, ForwardError> {
        let target = match destination {
            Destination::Static => {
                return Ok(Forwarded {
                    response: static_demo(&req, &path_and_query, identity).map(Relayed::Demo),
                    upstream_time: Duration::ZERO,
                });
            }
            Destination::Upstream { target, base_path } => {
                if target.spoken() != Spoken::Http1 && self.speaks_h2(target, timeout).await? {
                    let forwarded =
                        self.forward_http2(target, base_path, req, added, path_and_query, timeout, connection);
                    return Box::pin(forwarded).await;
                }
                to_origin_form(&mut req, &mut added, target, base_path, path_and_query)?;
                target
            }
            Destination::Http2 { target, base_path } => {
                let forwarded = self.forward_http2(target, base_path, req, added, path_and_query, timeout, connection);
                return Box::pin(forwarded).await;
            }
            Destination::Balanced { balancer, base_path, http2 } => {
                let forwarded =
                    self.forward_balanced(balancer, base_path, *http2, req, added, path_and_query, timeout, connection);
                return Box::pin(forwarded).await;
            }
        };
        // From here until the response head, an HTTP/2 stream waits on
        // its upstream (or for a turn at one), which `timeout` bounds.
        let waiting = crate::http::h2_streams::waiting_on_upstream();
        // Asked for only by HTTP/2 requests: an HTTP/1.1 request's future
        // then carries no state of the wait.
        let permits = match connection {
            None => Permits::NONE,
            Some(_) => self.permits(connection, target, timeout).await?,
        };
        let started = Instant::now();
        let sent = tokio::time::timeout(timeout, self.pool.send(target, req, &added, started, timeout)).await;
        let response = answered(target, timeout, sent)?;
        let upstream_time = started.elapsed();
        drop(waiting);
        Ok(relayed(response, permits, upstream_time, Relayed::Upstream))
    }

    /// Whether `target` (an `https://` upstream) speaks HTTP/2, asked
    /// within `timeout` if it has not been yet.
    async fn speaks_h2(&self, target: &Target, timeout: Duration) -> Result<bool, ForwardError> {
        let asked = tokio::time::timeout(timeout, self.http2.speaks_h2(target, &self.pool)).await;
        answered(target, timeout, asked)
    }

    /// The permits of an exchange on `connection` (see [`ExchangeLimit`]),
    /// taken within `timeout`. An HTTP/1.1 request, which has no
    /// connection bound, takes none, and does not wait.
    async fn permits(
        &self,
        connection: Option<&ExchangeLimit>,
        target: &Target,
        timeout: Duration,
    ) -> Result<Permits, ForwardError> {
        let Some(limit) = connection else { return Ok(Permits::NONE) };
        let permits = async {
            let own = limit.acquire().await?;
            let shared = if limit.in_use() > 1 { Some(self.exchanges.acquire().await?) } else { None };
            Some(Permits { _connection: Some(own), _shared: shared, _instance: None })
        };
        let Ok(Some(permits)) = tokio::time::timeout(timeout, permits).await else {
            tracing::warn!(upstream = %target.authority(), timeout = ?timeout, "no upstream exchange was free in time");
            return Err(ForwardError::Busy);
        };
        Ok(permits)
    }

    /// Sends a WebSocket handshake as [`Forwarder::forward`] sends a
    /// request (its `Connection` and `Upgrade` fields are the caller's to
    /// add; it is HTTP/1.1, one exchange per connection): the upstream
    /// either switches, and the connection is the caller's to relay, or
    /// answers otherwise, and that is relayed.
    pub async fn upgrade(
        &self,
        destination: &Destination,
        mut req: Request<Body>,
        mut added: Added,
        path_and_query: String,
        timeout: Duration,
        identity: Option<&Identity>,
    ) -> Result<Upgrade, ForwardError> {
        let picked: Arc<Instance>;
        let target = match destination {
            // The demo has no WebSockets, and HTTP/2 upstreams none over
            // HTTP/1.1's upgrade: the handshake is answered as a request.
            // A balanced route's handshake goes to one of its instances.
            Destination::Balanced { balancer, base_path, http2: false } => {
                picked = balancer.pick(None);
                to_origin_form(&mut req, &mut added, &picked.target, base_path, path_and_query)?;
                &picked.target
            }
            Destination::Static | Destination::Http2 { .. } | Destination::Balanced { .. } => {
                let forwarded = self.forward(destination, req, added, path_and_query, timeout, identity, None);
                return Ok(Upgrade::Answered(Box::pin(forwarded).await?));
            }
            Destination::Upstream { target, base_path } => {
                to_origin_form(&mut req, &mut added, target, base_path, path_and_query)?;
                target
            }
        };
        // What the upstream's 101 must answer.
        let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
        let started = Instant::now();
        let sent = tokio::time::timeout(timeout, self.pool.upgrade(target, req, &added, started, timeout)).await;
        let upstream_time = started.elapsed();
        let (mut head, conn) = match answered(target, timeout, sent)? {
            Exchanged::Answered(response, _) => {
                return Ok(Upgrade::Answered(relayed(response, Permits::NONE, upstream_time, Relayed::Upstream)));
            }
            Exchanged::Switched(head, conn) => (head, conn),
        };
        // Only a 101 that proves the upstream read the handshake: one that
        // answers anything with a 101 would read what the client sends
        // next as whatever it likes.
        if !key.is_some_and(|key| crate::http::websocket::upstream_switched(&head.headers, &key)) {
            tracing::warn!(
                upstream = %target.authority(),
                "the upstream answered a WebSocket handshake with a 101 that does not complete it (Upgrade, Sec-WebSocket-Accept)"
            );
            return Err(ForwardError::Unreachable);
        }
        strip_hop_by_hop(&mut head.headers);
        strip_gateway_set_cookies(&mut head.headers);
        let (io, early) = conn.into_parts();
        Ok(Upgrade::Switched(Switched { head, upstream: tunnel::Upstream::new(io, early), upstream_time }))
    }

    /// [`Forwarder::forward`] to an HTTP/2 upstream: the same request,
    /// with the authority and the gateway's fields in HTTP/2's places.
    #[allow(clippy::too_many_arguments)]
    async fn forward_http2(
        &self,
        target: &Target,
        base_path: &str,
        req: Request<Body>,
        added: Added,
        path_and_query: String,
        timeout: Duration,
        connection: Option<&ExchangeLimit>,
    ) -> Result<Forwarded, ForwardError> {
        let req = to_http2(req, added, target, base_path, &path_and_query)?;
        let waiting = crate::http::h2_streams::waiting_on_upstream();
        let permits = self.permits(connection, target, timeout).await?;
        let started = Instant::now();
        let sent = tokio::time::timeout(timeout, self.http2.send(target, req)).await;
        let response = answered(target, timeout, sent)?;
        let upstream_time = started.elapsed();
        drop(waiting);
        Ok(relayed(response, permits, upstream_time, Relayed::Http2))
    }

    /// [`Forwarder::forward`] to one of a route's instances. A request that
    /// never left (no connection could be made) goes once more, to
    /// another instance; so does one that may have reached the first but
    /// can safely be sent twice (an idempotent method, no body, RFC 9110
    /// §9.2.2). Nothing else is sent twice.
    #[allow(clippy::too_many_arguments)]
    async fn forward_balanced(
        &self,
        balancer: &Arc<Balancer>,
        base_path: &str,
        http2: bool,
        mut req: Request<Body>,
        mut added: Added,
        path_and_query: String,
        timeout: Duration,
        connection: Option<&ExchangeLimit>,
    ) -> Result<Forwarded, ForwardError> {
        let mut instance = balancer.pick(None);
        // An instance that cannot be asked is tried (and retried) in
        // HTTP/1.1 below, which is where its failure is counted.
        let http2 = http2
            || (instance.target.spoken() != Spoken::Http1
                && self.speaks_h2(&instance.target, timeout).await.unwrap_or(false));
        if http2 {
            // One try: hyper's client already sends a request it hands back
            // once more on a new connection.
            let outstanding = balancer.start(&instance);
            let forwarded =
                self.forward_http2(&instance.target, base_path, req, added, path_and_query, timeout, connection);
            let forwarded = Box::pin(forwarded).await;
            return balanced(balancer, &instance, Some(outstanding), forwarded);
        }
        let own_host = added.host.is_none() && !req.headers().contains_key(header::HOST);
        to_origin_form(&mut req, &mut added, &instance.target, base_path, path_and_query)?;
        let replayable =
            http_body::Body::is_end_stream(req.body()) && crate::upstream::http1::is_idempotent(req.method());
        let mut permits = self.permits(connection, &instance.target, timeout).await?;
        let mut retried = false;
        loop {
            let target = &instance.target;
            if own_host {
                added.host = Some(target.host.clone());
            }
            let outstanding = balancer.start(&instance);
            let started = Instant::now();
            let sent =
                tokio::time::timeout(timeout, self.pool.send_or_give_back(target, req, &added, started, timeout));
            let again = match sent.await {
                Ok(Ok(response)) => {
                    let upstream_time = started.elapsed();
                    permits._instance = Some(outstanding);
                    let forwarded = relayed(response, permits, upstream_time, Relayed::Upstream);
                    return balanced(balancer, &instance, None, Ok(forwarded));
                }
                Ok(Err(Failed::Sent(e, _))) if e.is_client_body() => {
                    tracing::debug!(upstream = %instance.name, error = %causes(&e), "the client's request body failed");
                    return Err(ForwardError::ClientBody);
                }
                Ok(Err(failed)) => {
                    balancer.failed(&instance);
                    // The same request again, when it never left or is
                    // body-less and idempotent (the pool gives its head back).
                    let (error, again) = match failed {
                        Failed::Unsent(e, req) => (e, Some(*req)),
                        Failed::Sent(e, head) => {
                            let head = head.filter(|_| replayable);
                            (e, head.map(|head| Request::from_parts(*head, crate::http::empty())))
                        }
                    };
                    tracing::warn!(upstream = %instance.name, error = %causes(&error), "upstream instance failed");
                    again
                }
                Err(_) => {
                    balancer.failed(&instance);
                    tracing::warn!(upstream = %instance.name, timeout = ?timeout, "upstream did not answer in time");
                    return Err(ForwardError::Timeout);
                }
            };
            match again {
                Some(next) if !retried => {
                    retried = true;
                    req = next;
                    instance = balancer.pick(Some(&instance));
                }
                _ => return Err(ForwardError::Unreachable),
            }
        }
    }
}

/// A balanced exchange's outcome, told to the balancer: an instance that
/// answered 502, 503 or 504, or not at all, failed. The instance's request
/// stays outstanding until its body is done with (`outstanding`, unless
/// the body holds it already).
fn balanced(
    balancer: &Balancer,
    instance: &Instance,
    outstanding: Option<balance::Outstanding>,
    forwarded: Result<Forwarded, ForwardError>,
) -> Result<Forwarded, ForwardError> {
    match &forwarded {
        Ok(f) if matches!(f.response.status().as_u16(), 502..=504) => balancer.failed(instance),
        Ok(_) => balancer.succeeded(instance),
        Err(ForwardError::ClientBody) => {}
        Err(_) => balancer.failed(instance),
    }
    forwarded.map(|mut f| {
        if let (Some(outstanding), Relayed::Http2(held)) = (outstanding, f.response.body_mut()) {
            held._permits._instance = Some(outstanding);
        }
        f
    })
}

/// `req` as an HTTP/2 upstream is sent it: the URI in absolute form (hyper
/// takes `:scheme` and `:authority` from it, the authority being the `Host`
/// it would have had), the gateway's fields in the map, and no framing
/// fields (HTTP/2 frames the body itself). gRPC servers insist on
/// `te: trailers`, which was removed with the other hop-by-hop fields:
/// a gRPC request gets it back.
fn to_http2(
    mut req: Request<Body>,
    added: Added,
    target: &Target,
    base_path: &str,
    path_and_query: &str,
) -> Result<Request<Body>, ForwardError> {
    let headers = req.headers_mut();
    let authority = match added.host {
        Some(host) => Some(host),
        None => headers.remove(header::HOST),
    };
    let authority = authority.unwrap_or_else(|| target.host.clone());
    let authority = authority.to_str().map_err(|_| ForwardError::BadTarget)?;
    let uri = format!("{}://{authority}{base_path}{path_and_query}", target.scheme());
    let grpc = crate::http::grpc::is_grpc(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    for (name, value) in added.fields {
        headers.append(name, value);
    }
    if grpc {
        headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    }
    *req.uri_mut() = Uri::try_from(uri).map_err(|_| ForwardError::BadTarget)?;
    *req.version_mut() = Version::HTTP_2;
    Ok(req)
}

/// An upstream's answer on its way back: hop-by-hop fields and the
/// gateway's own cookies removed, the body holding the exchange's permits
/// until it is done with.
fn relayed<B>(
    response: Response<B>,
    permits: Permits,
    upstream_time: Duration,
    relay: fn(Held<B>) -> Relayed,
) -> Forwarded {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    strip_gateway_set_cookies(&mut parts.headers);
    let body = Held { body, _permits: permits, waiting: None };
    Forwarded { response: Response::from_parts(parts, relay(body)), upstream_time }
}

/// Makes `req` the request `target` is sent: in origin form (RFC 9112
/// §3.2.1), the path and query under the upstream's base path, with the
/// authority in `Host`.
fn to_origin_form(
    req: &mut Request<Body>,
    added: &mut Added,
    target: &Target,
    base_path: &str,
    path_and_query: String,
) -> Result<(), ForwardError> {
    // Parsed (checked) in place: the string becomes the URI's buffer.
    let target_uri = Uri::from_maybe_shared(Bytes::from(if base_path.is_empty() {
        path_and_query
    } else {
        format!("{base_path}{path_and_query}")
    }));
    *req.uri_mut() = target_uri.map_err(|_| ForwardError::BadTarget)?;
    *req.version_mut() = Version::HTTP_11;
    if added.host.is_none() && !req.headers().contains_key(header::HOST) {
        added.host = Some(target.host.clone());
    }
    Ok(())
}

/// What an exchange with `target` came to within `timeout`: its answer,
/// or the failure, logged with its cause.
fn answered<T>(
    target: &Target,
    timeout: Duration,
    sent: Result<Result<T, crate::upstream::pool::Error>, tokio::time::error::Elapsed>,
) -> Result<T, ForwardError> {
    match sent {
        Err(_) => {
            tracing::warn!(upstream = %target.authority(), timeout = ?timeout, "upstream did not answer in time");
            Err(ForwardError::Timeout)
        }
        Ok(Err(e)) if e.is_client_body() => {
            tracing::debug!(upstream = %target.authority(), error = %causes(&e), "the client's request body failed");
            Err(ForwardError::ClientBody)
        }
        Ok(Err(e)) => {
            tracing::warn!(
                upstream = %target.authority(),
                error = %causes(&e),
                connect = e.is_connect(),
                "upstream request failed"
            );
            Err(ForwardError::Unreachable)
        }
        Ok(Ok(answer)) => Ok(answer),
    }
}

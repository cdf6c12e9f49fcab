//! The public listener's request handling: validate the request line,
//! normalise the path once, then either serve an authorization server
//! endpoint or match a route, enforce its bearer rule (RFC 6750) and
//! forward. Nothing here knows about sockets; `crate::server` feeds it.
//!
//! The request pipeline (here), route matching (`routes`), WebSockets
//! (`websocket`), and the one place its refusals become responses
//! (`refusal`). It reaches upstreams only through `proxy`, the
//! authorization server only through `web`, and tokens only through
//! `auth`; it holds no store and no socket.

mod refusal;
mod routes;
mod websocket;

pub use refusal::Refusal;
pub use routes::{Route, RouteTable};
pub use websocket::Tunnel;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::auth::bearer::{self, BearerError, TokenSource};
use crate::auth::cache::{TokenValidator, Verdict, WorkerCache};
use crate::config::{HostPattern, RouteConfig, UnderscoreHeaders};
use crate::http::form::{FormError, FormReader};
use crate::http::net::IpNet;
use crate::http::path::normalize;
use crate::http::{Body, full};
use crate::proxy::{
    Added, ExchangeLimit, ForwardContext, ForwardError, Forwarder, METHOD_OVERRIDE_HEADERS, Upgrade, X_FORWARDED_FOR,
    X_FORWARDED_HOST, X_FORWARDED_PREFIX, upstream_headers,
};
use crate::telemetry::access::{AccessInfo, Principal};
use crate::telemetry::metrics::{Metrics, Outcome, RouteMetrics};
use crate::web::endpoints::{AuthzEndpoints, Endpoint};

/// What one worker keeps for itself, so that a request touches nothing
/// another core writes: its upstream connections and its first look at
/// validated tokens.
pub struct Worker {
    pub forwarder: Forwarder,
    pub tokens: WorkerCache,
}

impl Worker {
    /// Must be called inside the worker's runtime (see `Forwarder::new`);
    /// `exchanges` is its share of `server.max_upstream_exchanges`.
    pub fn new(exchanges: usize) -> Worker {
        Worker { forwarder: Forwarder::new(exchanges), tokens: WorkerCache::default() }
    }
}

pub struct Gateway {
    pub realm: String,
    pub routes: RouteTable,
    pub authz: AuthzEndpoints,
    pub validator: Arc<TokenValidator>,
    pub metrics: Arc<Metrics>,
    pub trusted_proxies: Vec<IpNet>,
    /// A form body read for its token (`allow_body_token`).
    pub form: FormReader,
    /// `X-Forwarded-Proto` for the upstream: how clients reached us.
    pub forwarded_proto: &'static str,
    /// Whether each request is written to the access log.
    pub access_log: bool,
    /// The hosts proxied routes answer for (`server.allowed_hosts`).
    pub allowed_hosts: Vec<HostPattern>,
    /// What becomes of client headers with `_` in their names.
    pub underscores: UnderscoreHeaders,
    /// `authorization_server.dedicated_host`: the issuer's host when it is
    /// the authorization server's alone.
    pub dedicated_host: Option<HostPattern>,
    /// Series for requests that match no route.
    unrouted: RouteMetrics,
}

/// Where and when a request came from.
struct Arrival {
    peer: SocketAddr,
    /// Its client-facing `Host`.
    host: Option<HeaderValue>,
    started: Instant,
}

/// A request that went upstream: the response on its way back, how long
/// the upstream took to start it, and whom the token named.
struct Sent {
    response: Response<Body>,
    upstream_time: std::time::Duration,
    identity: Option<Arc<crate::auth::tokens::Identity>>,
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        realm: String,
        routes: RouteTable,
        authz: AuthzEndpoints,
        validator: Arc<TokenValidator>,
        metrics: Arc<Metrics>,
        trusted_proxies: Vec<IpNet>,
        form: FormReader,
    ) -> Gateway {
        let unrouted = metrics.route("(none)");
        Gateway {
            realm,
            routes,
            authz,
            validator,
            metrics,
            trusted_proxies,
            form,
            forwarded_proto: "http",
            access_log: true,
            allowed_hosts: vec![HostPattern::Any],
            underscores: UnderscoreHeaders::Drop,
            dedicated_host: None,
            unrouted,
        }
    }

    /// Handles one request from `peer` on the calling `worker`, whose
    /// upstream connections and validation cache are its own; `started` is
    /// when its head was read.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        worker: &Worker,
        started: Instant,
    ) -> (Response<Body>, AccessInfo<'_>) {
        self.metrics.in_flight.inc();
        let _in_flight = InFlight(&self.metrics);
        // Read before the request moves on: a refusal is then said in
        // gRPC's terms, which a gRPC client reads. gRPC is HTTP/2, so an
        // HTTP/1.1 request (the hot path) costs no header lookup.
        let grpc = req.version() == Version::HTTP_2 && crate::http::grpc::is_grpc(req.headers());
        let unrouted = |refusal, path: &str| {
            let info = AccessInfo { path: Some(path.to_owned()), ..AccessInfo::default() };
            (self.refuse(&self.unrouted, refusal, started, grpc), info)
        };

        // Framing first: any refusal before it would leave the connection
        // open behind a request whose end is in doubt.
        if let Err(refusal) = check_framing(req.headers()) {
            // Where this request's body ends is a matter of opinion, and so
            // is where the next request starts: nothing more is read from
            // this connection (RFC 9112 §11.2). HTTP/2 frames are not in
            // question, and have no `Connection` header.
            let (mut res, info) = unrouted(refusal, req.uri().path());
            if req.version() <= Version::HTTP_11 {
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return (res, info);
        }
        let host = match request_host(&req) {
            Ok(h) => h,
            Err(refusal) => return unrouted(refusal, req.uri().path()),
        };
        // RFC 9110 §9.1: methods are case-sensitive, but frameworks upper-case
        // them before they dispatch, so `delete` would be matched here as an
        // unknown method (the `"*"` rule) and run upstream as DELETE. nginx
        // refuses lower-case methods too.
        if req.method().as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            return unrouted(Refusal::BadRequest("The request method must be upper case"), req.uri().path());
        }
        let normal = match normalize(req.uri().path()) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "refused a malformed path");
                return unrouted(Refusal::BadRequest("The request path is malformed"), req.uri().path());
            }
        };
        let path = normal.path;
        if let Some(endpoint) = self.authz.endpoint(&path) {
            // The pages a person signs in on, only where no upstream's
            // scripts run (`authorization_server.dedicated_host`).
            if matches!(endpoint, Endpoint::Authorize | Endpoint::Login)
                && !self.pages_may_answer(req.headers(), host.as_ref(), peer)
            {
                let info =
                    AccessInfo { route: Some("(authorization server)"), path: Some(path), ..AccessInfo::default() };
                return (self.refuse(&self.unrouted, Refusal::MisdirectedRequest, started, grpc), info);
            }
            // Boxed, like every cold path here: the endpoints' futures are
            // large, and a proxied request's future would carry them too.
            // Sign-in and client-authentication attempts are counted per
            // client address: behind trusted proxies, the one they vouch
            // for, or every user behind a proxy would share one count.
            let lines = req.headers().get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes);
            let client = crate::http::net::client_address(peer.ip(), lines, &self.trusted_proxies);
            let res = Box::pin(self.authz.handle(endpoint, req, client)).await;
            let info = AccessInfo { route: Some("(authorization server)"), path: Some(path), ..AccessInfo::default() };
            return (res, info);
        }
        let routes = self.routes.for_host(host.as_ref().map(HeaderValue::as_bytes));
        let Some(route) = routes.find(&path) else {
            return unrouted(Refusal::NotFound, &path);
        };
        let mut info =
            AccessInfo { route: Some(&route.config.name), upstream: Some(&route.upstream), ..AccessInfo::default() };
        let through = match routes.check_readings(route, &path, normal.ambiguities) {
            Ok(()) => self.through_route(route, req, &path, Arrival { peer, host, started }, worker).await,
            Err(refusal) => Err(refusal),
        };
        let res = match through {
            Ok(sent) => {
                let elapsed = started.elapsed();
                route.metrics.observe(Outcome::Allowed, elapsed);
                route.metrics.overhead.observe(elapsed.saturating_sub(sent.upstream_time));
                info.upstream_time = Some(sent.upstream_time);
                info.identity = sent.identity.map(|i| i as Arc<dyn Principal>);
                sent.response
            }
            Err(refusal) => {
                if let Some(reason) = refusal.denial_reason() {
                    self.metrics.denials.with_label_values(&[&route.config.name, reason]).inc();
                }
                self.refuse(&route.metrics, refusal, started, grpc)
            }
        };
        info.path = Some(path);
        (res, info)
    }

    fn refuse(&self, metrics: &RouteMetrics, refusal: Refusal, started: Instant, grpc: bool) -> Response<Body> {
        metrics.observe(refusal.outcome(), started.elapsed());
        if grpc { refusal.into_grpc_response(&self.realm) } else { refusal.into_response(&self.realm) }
    }

    async fn through_route(
        &self,
        route: &Route,
        req: Request<Incoming>,
        path: &str,
        arrival: Arrival,
        worker: &Worker,
    ) -> Result<Sent, Refusal> {
        let Arrival { peer, host, started } = arrival;
        let cfg = &route.config;
        let (mut parts, body) = req.into_parts();
        let query = parts.uri.query();

        self.check_headers(&parts.headers, peer, host.as_ref())?;
        // Refused (forbidden, malformed) only once the token is checked:
        // a client without one learns nothing of the route.
        let head = websocket::Head {
            version: parts.version,
            method: &mut parts.method,
            headers: &mut parts.headers,
            extensions: &mut parts.extensions,
        };
        let handshake = websocket::handshake(head, &body, cfg);
        let Some(rule) = &cfg.scopes else {
            // A public route: nothing to enforce, nothing taken away.
            let path_and_query = join_path_query(forwarded_path(cfg, path), query);
            let ctx = self.forward_context(cfg, peer, host, None, true);
            let added = upstream_headers(&mut parts.headers, ctx);
            let added = with_prefix(cfg, &mut parts.headers, added);
            let req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
            let opening = handshake?.map(|h| (h, None));
            return self.send(&worker.forwarder, route, req, added, path_and_query, None, opening).await;
        };
        let required = rule.required(&parts.method).ok_or_else(|| Refusal::MethodNotAllowed(route.allow.clone()))?;
        // The scopes are the request line's method's: an upstream must not
        // be asked to run another.
        // One look at the names present, not a lookup (a hash) per name.
        if parts.headers.keys().any(|name| METHOD_OVERRIDE_HEADERS.contains(&name.as_str()))
            || query.is_some_and(names_a_method_override)
        {
            return Err(Refusal::BadRequest(
                "The request asks for another method than its own (X-HTTP-Method-Override, _method); send that method instead",
            ));
        }

        // RFC 6750 §2: find the token wherever it may be, and refuse a
        // request that sends it more than one way.
        let header_token = bearer::from_header(&parts.headers).map_err(Refusal::Bearer)?;
        let (query_token, query) = match query {
            Some(q) if bearer::query_mentions_token(q) => {
                let split = bearer::split_query_token(q).map_err(Refusal::Bearer)?;
                (split.token, split.rest)
            }
            other => (None, other.map(str::to_owned)),
        };
        if query_token.is_some() && !cfg.allow_query_token {
            return Err(Refusal::Bearer(BearerError::QueryNotAllowed));
        }
        let (body_token, body) = if cfg.allow_body_token && bearer::body_may_carry_token(&parts.method, &parts.headers)
        {
            let bytes = Box::pin(self.read_form_body(body)).await?;
            let (token, rest) = bearer::split_body_token(&bytes).map_err(Refusal::Bearer)?;
            (token, full(rest))
        } else {
            (None, body.map_err(Into::into).boxed_unsync())
        };
        let (token, source) = match (header_token, &query_token, &body_token) {
            (Some(t), None, None) => (t, TokenSource::Header),
            (None, Some(t), None) => (t.as_str(), TokenSource::Query),
            (None, None, Some(t)) => (t.as_str(), TokenSource::Body),
            (None, None, None) => return Err(Refusal::MissingToken),
            _ => return Err(Refusal::Bearer(BearerError::MultipleMethods)),
        };

        let identity = match self.validator.validate(token, &worker.tokens, started).await {
            Ok(Verdict::Valid(identity)) => identity,
            Ok(Verdict::Invalid(rejection)) => {
                tracing::debug!(route = %cfg.name, reason = rejection.as_str(), "refused an access token");
                return Err(Refusal::InvalidToken(rejection));
            }
            Err(e) => {
                tracing::error!(error = %e, "token validation could not reach the store");
                return Err(Refusal::Unavailable);
            }
        };
        // Checked on every request against the (possibly cached) identity.
        if !required.is_subset(&identity.scopes) {
            return Err(Refusal::InsufficientScope(required.clone()));
        }
        // A WebSocket outlives its handshake: its token is watched.
        let opening = handshake?.map(|h| {
            let watched = websocket::Watched {
                validator: self.validator.clone(),
                token: token.to_owned(),
                expires_at: identity.expires_at,
            };
            (h, Some(watched))
        });

        let ctx =
            self.forward_context(cfg, peer, host, Some(&identity), cfg.forward_bearer && source == TokenSource::Header);
        if source == TokenSource::Body {
            // The body shrank; the upstream client frames it anew.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let added = upstream_headers(&mut parts.headers, ctx);
        let added = with_prefix(cfg, &mut parts.headers, added);
        let path_and_query = join_path_query(forwarded_path(cfg, path), query.as_deref());
        let req = Request::from_parts(parts, body);
        let mut sent = self.send(&worker.forwarder, route, req, added, path_and_query, Some(identity), opening).await?;
        // RFC 6750 §2.3: a response to a request with the token in its URI
        // must not be stored by shared caches, whatever its status (404s and
        // redirects are cacheable too, under a URI holding the token).
        if source == TokenSource::Query {
            sent.response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
        Ok(sent)
    }

    fn forward_context<'a>(
        &'a self,
        cfg: &RouteConfig,
        peer: SocketAddr,
        host: Option<HeaderValue>,
        identity: Option<&'a crate::auth::tokens::Identity>,
        keep_authorization: bool,
    ) -> ForwardContext<'a> {
        ForwardContext {
            peer,
            trusted_proxies: &self.trusted_proxies,
            proto: self.forwarded_proto,
            host,
            identity,
            keep_authorization,
            preserve_host: cfg.preserve_host,
            drop_underscored: self.underscores == UnderscoreHeaders::Drop,
        }
    }

    /// The host names a request reaches the gateway by, as upstreams may
    /// read them: its `Host`, or behind a trusted proxy every entry of
    /// every `X-Forwarded-Host` line (frameworks differ on which they read:
    /// Rails and Werkzeug the last, others the first); and from a trusted
    /// proxy every `host=` of `Forwarded` (Spring reads it first).
    fn client_facing_hosts<'h>(
        &self,
        headers: &'h http::HeaderMap,
        host: Option<&'h HeaderValue>,
        trusted: bool,
    ) -> impl Iterator<Item = &'h [u8]> + 'h {
        // Looked up only for a trusted peer: most requests come straight
        // from clients, and a lookup of a name that is absent still hashes it.
        let forwarded = trusted.then(|| headers.get_all(&X_FORWARDED_HOST));
        let by_proxy = forwarded.as_ref().is_some_and(|lines| lines.iter().next().is_some());
        let entries = forwarded
            .into_iter()
            .flatten()
            .flat_map(|line| line.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii);
        let own = host.filter(|_| !by_proxy).map(HeaderValue::as_bytes);
        let params = trusted.then(|| forwarded_host_params(headers)).into_iter().flatten();
        own.into_iter().chain(entries).chain(params)
    }

    /// Whether the sign-in pages may answer this request: with
    /// `authorization_server.dedicated_host`, only when every name it goes
    /// by is the issuer's host.
    fn pages_may_answer(&self, headers: &http::HeaderMap, host: Option<&HeaderValue>, peer: SocketAddr) -> bool {
        let Some(dedicated) = &self.dedicated_host else { return true };
        let trusted = crate::http::net::is_trusted(&self.trusted_proxies, peer.ip());
        let mut names = self.client_facing_hosts(headers, host, trusted).peekable();
        names.peek().is_some() && names.all(|name| dedicated.matches(name))
    }

    /// What a proxied request's headers must pass before anything else:
    /// every host name it goes by is one this gateway serves (upstreams
    /// build links from them), none is the sign-in pages' dedicated host,
    /// and no header name has `_` when that is refused.
    fn check_headers(
        &self,
        headers: &http::HeaderMap,
        peer: SocketAddr,
        host: Option<&HeaderValue>,
    ) -> Result<(), Refusal> {
        let trusted = crate::http::net::is_trusted(&self.trusted_proxies, peer.ip());
        if let Some(dedicated) = &self.dedicated_host {
            // The `Host` too, even where a proxy forwards another: no
            // upstream's content is ever served under the pages' name.
            let mut names = self.client_facing_hosts(headers, host, trusted).chain(host.map(HeaderValue::as_bytes));
            if names.any(|name| dedicated.matches(name)) {
                return Err(Refusal::MisdirectedRequest);
            }
        }
        let allowed = |name: &[u8]| self.allowed_hosts.iter().any(|p| p.matches(name));
        if !self.client_facing_hosts(headers, host, trusted).all(allowed) {
            return Err(Refusal::MisdirectedRequest);
        }
        if self.underscores == UnderscoreHeaders::Refuse && headers.keys().any(|n| n.as_str().contains('_')) {
            return Err(Refusal::BadRequest(
                "The request has a header whose name holds '_', which upstreams may read as '-'",
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        forwarder: &Forwarder,
        route: &Route,
        req: Request<Body>,
        added: Added,
        path_and_query: String,
        identity: Option<Arc<crate::auth::tokens::Identity>>,
        opening: Option<(websocket::Handshake, Option<websocket::Watched>)>,
    ) -> Result<Sent, Refusal> {
        if let Some((handshake, watched)) = opening {
            // Boxed, like every cold path here.
            let opened = self.open(forwarder, route, req, added, path_and_query, identity, handshake, watched);
            return Box::pin(opened).await;
        }
        let cfg = &route.config;
        // Most requests have no body: nothing to count, no layer to add.
        let req = if req.body().is_end_stream() {
            req
        } else {
            req.map(|body| crate::telemetry::metrics::counted(body, &route.metrics.request_bytes))
        };
        // The client connection's bound, which `server` gives HTTP/2 requests.
        let connection = req.extensions().get::<ExchangeLimit>().cloned();
        // A gRPC call's deadline is the client's (`grpc-timeout`), as
        // Envoy's `max_grpc_timeout` makes it: a long call the client
        // allowed is not cut at the route's timeout, nor a short one
        // waited on past its deadline.
        let deadline = if req.version() == Version::HTTP_2 && crate::http::grpc::is_grpc(req.headers()) {
            req.headers().get("grpc-timeout").and_then(|v| crate::http::grpc::timeout(v.as_bytes()))
        } else {
            None
        };
        let forwarded = forwarder
            .forward(
                &route.destination,
                req,
                added,
                path_and_query,
                deadline.unwrap_or(cfg.timeout),
                identity.as_deref(),
                connection.as_ref(),
            )
            .await
            .map_err(|e| match (e, deadline) {
                (ForwardError::Timeout | ForwardError::Busy, Some(_)) => Refusal::DeadlineExceeded,
                (e, _) => e.into(),
            })?;
        route.metrics.upstream_duration.observe(forwarded.upstream_time);
        let response = forwarded.response.map(|body| body.into_body(&route.metrics.response_bytes));
        Ok(Sent { response, upstream_time: forwarded.upstream_time, identity })
    }

    /// Sends a WebSocket handshake, and answers the client's with a `101`
    /// carrying the tunnel when the upstream switched (see `websocket`).
    #[allow(clippy::too_many_arguments)]
    async fn open(
        &self,
        forwarder: &Forwarder,
        route: &Route,
        req: Request<Body>,
        mut added: Added,
        path_and_query: String,
        identity: Option<Arc<crate::auth::tokens::Identity>>,
        handshake: websocket::Handshake,
        watched: Option<websocket::Watched>,
    ) -> Result<Sent, Refusal> {
        // A handshake has no body (an HTTP/1.1 one was refused with one;
        // an HTTP/2 one's stream is the tunnel-to-be).
        let req = req.map(|_| crate::http::empty());
        // The client's were removed with the other hop-by-hop fields.
        added.fields.push((&header::CONNECTION, HeaderValue::from_static("upgrade")));
        added.fields.push((&header::UPGRADE, HeaderValue::from_static("websocket")));
        let timeout = route.config.timeout;
        let upgrade =
            forwarder.upgrade(&route.destination, req, added, path_and_query, timeout, identity.as_deref()).await?;
        match upgrade {
            Upgrade::Answered(forwarded) => {
                route.metrics.upstream_duration.observe(forwarded.upstream_time);
                let response = forwarded.response.map(|body| body.into_body(&route.metrics.response_bytes));
                Ok(Sent { response, upstream_time: forwarded.upstream_time, identity })
            }
            Upgrade::Switched(switched) => {
                let upstream_time = switched.upstream_time;
                route.metrics.upstream_duration.observe(upstream_time);
                let response = Tunnel::respond(handshake, switched, route, watched, self.metrics.clone());
                Ok(Sent { response, upstream_time, identity })
            }
        }
    }

    async fn read_form_body(&self, body: Incoming) -> Result<Bytes, Refusal> {
        self.form.read(body).await.map_err(|e| match e {
            FormError::TooLarge => Refusal::PayloadTooLarge,
            FormError::TimedOut => Refusal::BodyTimeout,
            FormError::Unreadable => Refusal::BadRequest("The request body could not be read"),
        })
    }
}

/// Whether a query has a `_method` parameter, which Laravel and Symfony
/// (among others) take for the request's method. Looked for only where the
/// word is, so most queries are not parsed for it.
fn names_a_method_override(query: &str) -> bool {
    query.contains("method") && form_urlencoded::parse(query.as_bytes()).any(|(name, _)| name == "_method")
}

/// The path the upstream is sent: under `strip_prefix`, without the
/// route's prefix (`/` for the prefix itself). Decided on the whole path:
/// the route and the path policy saw it before this.
fn forwarded_path<'p>(cfg: &RouteConfig, path: &'p str) -> &'p str {
    if !cfg.strip_prefix {
        return path;
    }
    match path.get(cfg.path_prefix.len()..) {
        Some("") | None => "/",
        Some(rest) => rest,
    }
}

/// `added`, and under `strip_prefix` the prefix taken off as
/// `X-Forwarded-Prefix` (for the upstream's links), replacing any the
/// request came with.
fn with_prefix(cfg: &RouteConfig, headers: &mut http::HeaderMap, mut added: Added) -> Added {
    if cfg.strip_prefix && !cfg.path_prefix.is_empty() {
        headers.remove(&X_FORWARDED_PREFIX);
        if let Ok(prefix) = HeaderValue::from_str(&cfg.path_prefix) {
            added.fields.push((&X_FORWARDED_PREFIX, prefix));
        }
    }
    added
}

fn join_path_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// The `host=` values of the `Forwarded` lines (RFC 7239 §4), unquoted.
fn forwarded_host_params(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::FORWARDED)
        .into_iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b',' || *b == b';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            name.trim_ascii().eq_ignore_ascii_case(b"host").then(|| {
                let value = value[1..].trim_ascii();
                value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value)
            })
        })
}

/// The client-facing host of a request: exactly one valid `Host` header in
/// HTTP/1.1 (RFC 9112 §3.2), or the `:authority` of HTTP/2.
fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, Refusal> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::BadRequest("The request has more than one Host header"));
    }
    if let Some(host) = first {
        if !is_valid_host(host.as_bytes()) {
            return Err(Refusal::BadRequest("The Host header is invalid"));
        }
        // An absolute-form target (RFC 9112 §3.2.2: its authority, not
        // `Host`, names the host) or an HTTP/2 `:authority` (RFC 9113
        // §8.3.1) that names another host than `Host` does: which one a
        // peer goes by is a matter of opinion, so neither is taken.
        if let Some(authority) = req.uri().authority()
            && !authority.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes())
        {
            return Err(Refusal::BadRequest("The Host header names another host than the request target"));
        }
        return Ok(Some(host.clone()));
    }
    if let Some(authority) = req.uri().authority() {
        return Ok(HeaderValue::from_str(authority.as_str()).ok());
    }
    match req.version() {
        Version::HTTP_10 | Version::HTTP_09 => Ok(None),
        _ if req.method() == Method::CONNECT => Ok(None),
        _ => Err(Refusal::BadRequest("The request has no Host header")),
    }
}

/// Refuses a `Transfer-Encoding` that names `chunked` more than once
/// (RFC 9112 §6.1 lets it appear once, last). hyper accepts it, and a peer
/// that decodes one layer fewer would see a different message. Any other
/// coding (`gzip, chunked`) is refused as not implemented (RFC 9112 §6.1
/// SHOULD, as nginx does): hyper would decode the chunks and the upstream
/// get a body whose other coding no header names any more.
fn check_framing(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Err(Refusal::BadRequest("The Transfer-Encoding header is malformed"));
        };
        // Empty list elements are allowed (RFC 9110 §5.6.1).
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(Refusal::UnsupportedTransferCoding);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(Refusal::BadRequest("The request is chunked more than once"));
    }
    Ok(())
}

/// `Host = uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2), checked
/// without allocating: a reg-name or IPv4 of unreserved, sub-delim and
/// percent characters, or a bracketed IP literal, then digits after a colon.
fn is_valid_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        match host.iter().position(|b| *b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')) {
                    return false;
                }
                (&host[..=end], &host[end + 1..])
            }
            None => return false,
        }
    } else {
        match host.iter().position(|b| *b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &host[host.len()..]),
        }
    };
    let name_ok = !name.is_empty()
        && (name[0] == b'['
            || name.iter().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'%'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                    )
            }));
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::is_valid_host;

    #[test]
    fn hosts() {
        for ok in ["example.com", "example.com:8080", "127.0.0.1:1", "[::1]:8080", "[::1]", "a_b", "x:"] {
            assert!(is_valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "a b", "a/b", "user@host", "[::1", "[zz]", "host:80:80", "host:abc", ":80", "h\\x"] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad}");
        }
    }
}

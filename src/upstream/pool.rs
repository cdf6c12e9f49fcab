//! Keep-alive connections to upstreams, pooled per worker: TCP, or TLS
//! as `crate::tls::upstream` configures it, spoken to by
//! `crate::upstream::http1` from the request's own task.
//!
//! A connection is lent for one exchange and comes back when the exchange
//! has ended cleanly (see `http1` for what that takes); one whose
//! response was abandoned halfway (the client went away) is closed, since
//! an HTTP/1.1 connection with half a response on it cannot carry another.
//! Idle connections are reused newest first and dropped after
//! [`IDLE_TIMEOUT`]; connections for one upstream are told apart by its
//! authority and by the TLS configuration that verified them, so a route
//! that skips verification never lends a connection to one that verifies.
//!
//! Nobody reads an idle connection, so an upstream that closed one is
//! noticed when it is next taken (the socket reports the end without a
//! system call), or by the reaper. One closed in the instant it is taken
//! fails without an answer; the request then goes again on a new
//! connection if it had not been sent at all, or has no body and an
//! idempotent method (RFC 9110 §9.2.2), as nginx's `proxy_next_upstream`
//! does by default.
//!
//! Each worker is one thread with its own pool: no key hashing, no shared
//! lock to contend, no task per connection.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response};
use tokio::net::TcpStream;

use crate::http::Body;
use crate::upstream::http1::{self as http1, Connection, Io};
pub use crate::upstream::http1::{Exchanged, ResponseBody};

/// How long an idle connection is kept: under the usual upstream keep-alive
/// timeouts is better (nginx's is 75 s), so the gateway closes first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keep-alive probes on upstream connections, to notice a dead peer.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream and worker; more are closed.
const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// How often a worker closes connections idle longer than [`IDLE_TIMEOUT`].
const REAP_EVERY: Duration = Duration::from_secs(30);

/// Where a connection goes: an upstream's scheme and authority, and for
/// `https://` the client configuration that verifies it.
#[derive(Clone)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The `Host` a request to it carries: the authority, less a port that
    /// is the scheme's default.
    pub host: HeaderValue,
    /// Where the time each new connection took goes (a balanced route's
    /// instances).
    connect_time: Option<prometheus::Histogram>,
    /// For an `https://` upstream, what it speaks, learnt from ALPN.
    alpn: Option<Arc<Alpn>>,
    /// The address its host name resolved to, when the route resolves it
    /// itself (`crate::upstream::balance`); otherwise each connection
    /// resolves the name afresh. `Host` and TLS's server name stay the
    /// name's.
    address: Option<std::net::SocketAddr>,
}

/// What an upstream speaks, as far as the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spoken {
    /// Not yet known: the next connection offers `h2` and finds out.
    Unknown = 0,
    Http1 = 1,
    Http2 = 2,
}

/// What an `https://` upstream agreed to in ALPN, shared by the workers:
/// one connection's answer tells them all.
struct Alpn {
    /// Offers `h2` and `http/1.1`.
    config: Arc<rustls::ClientConfig>,
    spoken: AtomicU8,
}

impl Target {
    pub fn new(scheme: Scheme, authority: Authority, tls: Option<Arc<rustls::ClientConfig>>) -> Target {
        let default = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port == default => authority.host().to_owned(),
            _ => authority.as_str().to_owned(),
        };
        // An `Authority` holds only characters a header value may.
        let host = HeaderValue::try_from(host).unwrap_or_else(|_| HeaderValue::from_static(""));
        Target { scheme, authority, tls, host, connect_time: None, alpn: None, address: None }
    }

    /// This target, its connections made to `address` (what its host name
    /// resolved to).
    pub fn at(mut self, address: std::net::SocketAddr) -> Target {
        self.address = Some(address);
        self
    }

    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.address
    }

    /// This target, learning from its TLS connections made with `config`
    /// (which offers `h2` in ALPN) whether it speaks HTTP/2.
    pub fn offering_h2(mut self, config: Arc<rustls::ClientConfig>) -> Target {
        self.alpn = Some(Arc::new(Alpn { config, spoken: AtomicU8::new(Spoken::Unknown as u8) }));
        self
    }

    /// What the upstream speaks: HTTP/1.1 unless it is an `https://` one
    /// that agreed to HTTP/2, or one not asked yet.
    pub fn spoken(&self) -> Spoken {
        match self.alpn.as_ref().map(|a| a.spoken.load(Ordering::Relaxed)) {
            None => Spoken::Http1,
            Some(0) => Spoken::Unknown,
            Some(1) => Spoken::Http1,
            Some(_) => Spoken::Http2,
        }
    }

    pub(super) fn learnt(&self, spoken: Spoken) {
        if let Some(alpn) = &self.alpn {
            alpn.spoken.store(spoken as u8, Ordering::Relaxed);
        }
    }

    /// This target, its connections' set-up times observed in `histogram`.
    pub fn timing_connections(mut self, histogram: prometheus::Histogram) -> Target {
        self.connect_time = Some(histogram);
        self
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// Whether `other` is the same upstream, wherever it connects.
    pub(super) fn same_upstream(&self, other: &Target) -> bool {
        self.authority == other.authority && self.scheme == other.scheme
    }

    pub(super) fn same_pool(&self, other: &Target) -> bool {
        self.authority == other.authority
            && self.address == other.address
            && self.scheme == other.scheme
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Host and port to connect to: the authority without IPv6 brackets,
    /// and the scheme's port when none is given.
    pub(super) fn host_port(&self) -> (&str, u16) {
        let host = self.authority.host();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let default = if self.scheme == Scheme::HTTPS { 443 } else { 80 };
        (host, self.authority.port_u16().unwrap_or(default))
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    /// The handshake, with rustls's reason ("invalid peer certificate:
    /// UnknownIssuer").
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Exchange(#[from] http1::Error),
    #[error("HTTP/2: {0}")]
    Http2(hyper::Error),
    /// An upstream that had agreed to HTTP/2 no longer does; the next
    /// request asks it again.
    #[error("the upstream no longer agrees to HTTP/2 in ALPN")]
    NoLongerHttp2,
}

/// What `http1` never lets through but to an upgrade.
const UNASKED_101: http1::Error = http1::Error::Malformed("an unasked-for 101");

/// A failed exchange, and what is left of the request.
#[derive(Debug)]
pub enum Failed {
    /// Some of it may have reached the upstream; its head, when there is
    /// one to give back (its body is gone), for a caller that may safely
    /// send a body-less request again.
    Sent(Error, Option<Box<http::request::Parts>>),
    /// No connection could be made for it: here it is, whole.
    Unsent(Error, Box<Request<Body>>),
}

impl Failed {
    pub fn into_error(self) -> Error {
        match self {
            Failed::Sent(e, _) | Failed::Unsent(e, _) => e,
        }
    }
}

impl Error {
    /// Whether no connection was made at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::ConnectTimeout | Error::Tls(_) | Error::NoLongerHttp2)
    }

    /// Whether the client's body failed (it broke off, or its framing
    /// did), not the upstream.
    pub fn is_client_body(&self) -> bool {
        matches!(self, Error::Exchange(http1::Error::RequestBody(_) | http1::Error::RequestBodyLength))
    }
}

struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

#[derive(Default)]
struct Idles {
    /// A handful of upstreams per gateway: a list beats hashing the key.
    by_target: Vec<(Target, Vec<Idle>)>,
}

impl Idles {
    fn take(&mut self, target: &Target, now: Instant) -> Option<Box<Connection>> {
        let (_, idle) = self.by_target.iter_mut().find(|(t, _)| t.same_pool(target))?;
        while let Some(mut idle) = idle.pop() {
            if now.duration_since(idle.since) < IDLE_TIMEOUT && idle.conn.is_reusable() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn put(&mut self, target: &Target, conn: Box<Connection>, now: Instant) {
        let idle = match self.by_target.iter().position(|(t, _)| t.same_pool(target)) {
            Some(i) => &mut self.by_target[i].1,
            None => {
                self.by_target.push((target.clone(), Vec::new()));
                &mut self.by_target.last_mut().expect("just pushed").1
            }
        };
        if idle.len() >= MAX_IDLE_PER_UPSTREAM {
            idle.remove(0);
        }
        idle.push(Idle { conn, since: now });
    }

    /// Drops closed and expired connections, and the upstreams left with
    /// none (such as those of a configuration a reload replaced).
    fn reap(&mut self, now: Instant) {
        for (_, idle) in &mut self.by_target {
            idle.retain_mut(|c| now.duration_since(c.since) < IDLE_TIMEOUT && c.conn.is_reusable());
        }
        self.by_target.retain(|(_, idle)| !idle.is_empty());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_target.iter().map(|(_, idle)| idle.len()).sum()
    }
}

/// One worker's pool. The lock is the worker's own: only its thread takes
/// it, so it is never contended.
pub struct Pool {
    idle: Arc<Mutex<Idles>>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl Pool {
    /// A pool; inside a Tokio runtime it also starts the task that closes
    /// connections idle too long (it ends with the pool).
    pub fn new() -> Pool {
        let idle = Arc::new(Mutex::new(Idles::default()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&idle)));
        }
        Pool { idle }
    }

    /// Keeps `conn`, new and unused, for `target`'s next request.
    pub fn adopt(&self, target: &Target, conn: Box<Connection>) {
        self.idles().put(target, conn, Instant::now());
    }

    fn idles(&self) -> std::sync::MutexGuard<'_, Idles> {
        lock(&self.idle)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idles().len()
    }

    /// Sends `req` (in origin form, with its `Host`) to `target` and
    /// returns the response head; the connection comes back to the pool
    /// when the exchange has ended cleanly. `now` is when the exchange
    /// started (idle times need no finer clock); a body that stops moving
    /// for `stall_after` fails.
    pub async fn send(
        &self,
        target: &Target,
        req: Request<Body>,
        added: &http1::Added,
        now: Instant,
        stall_after: std::time::Duration,
    ) -> Result<Response<ResponseBody>, Error> {
        self.send_or_give_back(target, req, added, now, stall_after).await.map_err(Failed::into_error)
    }

    /// [`Pool::send`], which gives the request back when no connection
    /// could be made for it: it never left, and may go to another upstream.
    pub async fn send_or_give_back(
        &self,
        target: &Target,
        req: Request<Body>,
        added: &http1::Added,
        now: Instant,
        stall_after: std::time::Duration,
    ) -> Result<Response<ResponseBody>, Failed> {
        match self.exchange::<false>(target, req, added, now, stall_after).await? {
            Exchanged::Answered(res, _) => Ok(res),
            // `http1` lets a 101 through only to an upgrade.
            Exchanged::Switched(..) => Err(Failed::Sent(Error::Exchange(UNASKED_101), None)),
        }
    }

    /// Sends a WebSocket handshake (`req`, with its `Upgrade` fields in
    /// `added`) as [`Pool::send`] sends a request. On a `101` the
    /// connection is the caller's for good; on any other answer it is
    /// closed once the answer is read.
    pub async fn upgrade(
        &self,
        target: &Target,
        req: Request<Body>,
        added: &http1::Added,
        now: Instant,
        stall_after: std::time::Duration,
    ) -> Result<Exchanged, Error> {
        self.exchange::<true>(target, req, added, now, stall_after).await.map_err(Failed::into_error)
    }

    async fn exchange<const UPGRADE: bool>(
        &self,
        target: &Target,
        req: Request<Body>,
        added: &http1::Added,
        now: Instant,
        stall_after: std::time::Duration,
    ) -> Result<Exchanged, Failed> {
        let (head, mut body) = req.into_parts();
        // After a retry of a request the upstream may have read, the next
        // try is the last, on a new connection: a request that kills its
        // upstream's connection is sent twice at most, not once per idle
        // connection. One it cannot have read tries the next idle one (a
        // pool the upstream closed while idle gives up its connections).
        let mut fresh_only = false;
        loop {
            let pooled = if fresh_only { None } else { self.idles().take(target, now) };
            let reused = pooled.is_some();
            let conn = match pooled {
                Some(conn) => conn,
                // Boxed: a TLS handshake's state is kilobytes, carried
                // (and copied on every move) by each request's future.
                None => match Box::pin(connect(target)).await {
                    Ok(conn) => conn,
                    Err(e) => return Err(Failed::Unsent(e, Box::new(Request::from_parts(head, body)))),
                },
            };
            let home = || Home { pool: Arc::downgrade(&self.idle), target: target.clone() };
            match http1::exchange::<UPGRADE>(conn, &head, added, body, stall_after, home).await {
                Ok(Exchanged::Answered(res, Some(conn))) => {
                    self.idles().put(target, conn, now);
                    return Ok(Exchanged::Answered(res, None));
                }
                Ok(exchanged) => return Ok(exchanged),
                // The body was empty, so an empty one is the same.
                Err(failure) if reused && failure.may_retry => {
                    fresh_only |= failure.written;
                    body = crate::http::empty();
                }
                Err(failure) => return Err(Failed::Sent(failure.error.into(), Some(Box::new(head)))),
            }
        }
    }
}

fn lock(idle: &Mutex<Idles>) -> std::sync::MutexGuard<'_, Idles> {
    // A panic elsewhere cannot leave the lists half-changed in a way that
    // matters: at worst a connection is missing from them.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn reap(idle: Weak<Mutex<Idles>>) {
    let mut every = tokio::time::interval(REAP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        lock(&idle).reap(Instant::now());
    }
}

/// A new connection: TCP (no delay, keep-alive probes), then TLS when the
/// target has a client configuration.
pub(super) async fn connect(target: &Target) -> Result<Box<Connection>, Error> {
    connect_with(target, target.tls.as_ref()).await
}

/// A new connection to `target`, offering `h2` in ALPN if it is an
/// `https://` upstream that may speak it, and whether it agreed.
pub(super) async fn connect_offering_h2(target: &Target) -> Result<(Box<Connection>, bool), Error> {
    let tls = target.alpn.as_ref().map(|a| &a.config).or(target.tls.as_ref());
    let conn = connect_with(target, tls).await?;
    let h2 = match conn.io() {
        Io::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        Io::Tcp(_) => false,
    };
    Ok((conn, h2))
}

async fn connect_with(target: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Box<Connection>, Error> {
    let started = Instant::now();
    let connection = open(target, tls).await;
    if let (Some(histogram), Ok(_)) = (&target.connect_time, &connection) {
        histogram.observe(started.elapsed().as_secs_f64());
    }
    connection
}

async fn open(target: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Box<Connection>, Error> {
    let (host, port) = target.host_port();
    let connecting = async {
        match target.address {
            Some(address) => TcpStream::connect(address).await,
            None => TcpStream::connect((host, port)).await,
        }
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Err(_) => return Err(Error::ConnectTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    match tls {
        None => Ok(Connection::new(Io::Tcp(tcp))),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                Error::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))
            })?;
            let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(Error::Tls)?;
            Ok(Connection::new(Io::Tls(Box::new(tls))))
        }
    }
}

/// Where a connection goes back to when its exchange is done.
pub struct Home {
    pool: Weak<Mutex<Idles>>,
    target: Target,
}

impl Home {
    pub fn put(self, conn: Box<Connection>) {
        if let Some(pool) = self.pool.upgrade() {
            lock(&pool).put(&self.target, conn, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A live connection over loopback TCP; it stays open while the
    /// returned far end is held.
    async fn connection() -> (Box<Connection>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let near = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (far, _) = listener.accept().await.expect("accept");
        (Connection::new(Io::Tcp(near)), far)
    }

    fn target(authority: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Target {
        Target::new(Scheme::HTTP, authority.parse().expect("authority"), tls)
    }

    #[test]
    fn the_host_header_leaves_out_the_default_port() {
        assert_eq!(target("api.internal:80", None).host, "api.internal");
        assert_eq!(target("api.internal:8080", None).host, "api.internal:8080");
        assert_eq!(target("[::1]:80", None).host, "[::1]");
        let https = Target::new(Scheme::HTTPS, "api.internal:443".parse().unwrap(), None);
        assert_eq!(https.host, "api.internal");
        assert_eq!(https.host_port(), ("api.internal", 443));
        assert_eq!(target("[::1]:9000", None).host_port(), ("::1", 9000));
        assert_eq!(target("api.internal", None).host_port(), ("api.internal", 80));
    }

    #[tokio::test]
    async fn idle_connections_are_reused_newest_first_until_they_expire() {
        let (older, _far1) = connection().await;
        let (newer, _far2) = connection().await;
        let newer_addr = match &newer.io() {
            Io::Tcp(s) => s.local_addr().expect("addr"),
            Io::Tls(_) => unreachable!(),
        };
        let api = target("api.internal:8080", None);
        let t0 = Instant::now();
        let mut idles = Idles::default();
        idles.put(&api, older, t0);
        idles.put(&api, newer, t0 + Duration::from_secs(1));
        assert_eq!(idles.len(), 2);

        let taken = idles.take(&api, t0 + Duration::from_secs(2)).expect("a connection");
        match taken.io() {
            Io::Tcp(s) => assert_eq!(s.local_addr().expect("addr"), newer_addr, "the newest first"),
            Io::Tls(_) => unreachable!(),
        }
        assert_eq!(idles.len(), 1);
        // The older one has now been idle for the whole timeout.
        assert!(idles.take(&api, t0 + IDLE_TIMEOUT).is_none());
        assert_eq!(idles.len(), 0);
    }

    #[tokio::test]
    async fn a_connection_closed_or_spoken_on_while_idle_is_never_handed_out() {
        let api = target("api.internal:8080", None);
        let (mut conn, far) = connection().await;
        assert!(conn.is_reusable(), "open and quiet");
        drop(far);
        // The end of the stream reaches the socket (and the reactor) soon.
        tokio::time::timeout(Duration::from_secs(5), async {
            while conn.is_reusable() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the close is noticed");
        let mut idles = Idles::default();
        idles.put(&api, conn, Instant::now());
        assert!(idles.take(&api, Instant::now()).is_none());

        // An answer to no request: taken for the next request's, it would
        // answer the wrong one.
        let (mut conn, mut far) = connection().await;
        far.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), async {
            while conn.is_reusable() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the stray bytes are noticed");
        assert!(!conn.is_reusable(), "once noticed, for good");
    }

    #[tokio::test]
    async fn connections_are_kept_apart_by_authority_and_tls_configuration() {
        let config = |trust| crate::tls::upstream::client_config(&trust).expect("config");
        let skip = config(crate::tls::upstream::Trust::SkipVerify);
        let other = config(crate::tls::upstream::Trust::SkipVerify);
        let (conn, _far) = connection().await;
        let mut idles = Idles::default();
        idles.put(&target("api.internal:8443", Some(skip.clone())), conn, Instant::now());

        let now = Instant::now();
        assert!(idles.take(&target("api.internal:8443", None), now).is_none(), "plain is not TLS");
        assert!(idles.take(&target("api.internal:8443", Some(other)), now).is_none(), "another configuration");
        assert!(idles.take(&target("other.internal:8443", Some(skip.clone())), now).is_none(), "another host");
        assert!(idles.take(&target("api.internal:8443", Some(skip)), now).is_some());
    }

    #[tokio::test]
    async fn reaping_drops_expired_and_closed_connections_and_empty_upstreams() {
        let (a, _far1) = connection().await;
        let (b, _far2) = connection().await;
        let (c, far3) = connection().await;
        let t0 = Instant::now();
        let mut idles = Idles::default();
        idles.put(&target("old.internal:80", None), a, t0);
        idles.put(&target("new.internal:80", None), b, t0 + IDLE_TIMEOUT);
        idles.put(&target("new.internal:80", None), c, t0 + IDLE_TIMEOUT);
        drop(far3);
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                idles.reap(t0 + IDLE_TIMEOUT + Duration::from_secs(1));
                if idles.len() == 1 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the expired and the closed connections go");
        assert_eq!(idles.by_target.len(), 1, "the upstream with none left is forgotten");
        assert_eq!(idles.by_target[0].0.authority.as_str(), "new.internal:80");
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept_per_upstream() {
        let api = target("api.internal:8080", None);
        let mut idles = Idles::default();
        let mut far_ends = Vec::new();
        for _ in 0..MAX_IDLE_PER_UPSTREAM + 3 {
            let (conn, far) = connection().await;
            far_ends.push(far);
            idles.put(&api, conn, Instant::now());
        }
        assert_eq!(idles.len(), MAX_IDLE_PER_UPSTREAM);
    }

    fn get() -> Request<Body> {
        let mut req = Request::new(crate::http::empty());
        *req.uri_mut() = http::Uri::from_static("/x");
        req
    }

    /// `pool.send` with nothing added to the request, sent now.
    async fn send(pool: &Pool, target: &Target, req: Request<Body>) -> Result<Response<ResponseBody>, Error> {
        pool.send(target, req, &http1::Added::default(), Instant::now(), std::time::Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn a_response_read_to_its_end_returns_its_connection_and_one_dropped_early_does_not() {
        // Content-Length says 10; only 5 bytes ever come.
        let (partial, accepted, _seen) =
            scripted_upstream(|_, _| Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")).await;
        let pool = Pool::new();
        let res = send(&pool, &partial, get()).await.expect("a response head");
        assert_eq!(res.status(), http::StatusCode::OK);
        drop(res);
        assert_eq!(pool.idle_count(), 0, "half a response on it: not reusable");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let (whole, accepted, _seen) =
            scripted_upstream(|_, _| Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")).await;
        for round in 1..=3 {
            let res = send(&pool, &whole, get()).await.expect("a response");
            let body = res.into_body().collect().await.expect("the body").to_bytes();
            assert_eq!(body, Bytes::from_static(b"hello"));
            assert_eq!(pool.idle_count(), 1, "round {round}: back in the pool");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for three exchanges");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_used_again() {
        let (closing, accepted, _seen) = scripted_upstream(|_, _| {
            Act::Answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        })
        .await;
        let pool = Pool::new();
        for _ in 0..2 {
            let res = send(&pool, &closing, get()).await.expect("a response on a fresh connection");
            res.into_body().collect().await.expect("the body");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dead_upstream_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let Err(e) = send(&Pool::new(), &target(&format!("127.0.0.1:{port}"), None), get()).await else {
            panic!("a connection to a closed port succeeded");
        };
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().starts_with("connect: "), "{e}");
    }

    /// What a scripted upstream does with the n-th request on its m-th
    /// connection.
    #[derive(Clone, Copy)]
    enum Act {
        Answer(&'static [u8]),
        /// Answers, then closes the connection.
        AnswerAndClose(&'static [u8]),
        /// Closes the connection without a word.
        Close,
        /// Answers as soon as the head is in, without reading the body,
        /// then closes.
        AnswerEarly(&'static [u8]),
    }

    /// An upstream that reads whole requests (by their framing) and acts as
    /// `script(connection, request)` says; every request's raw bytes are
    /// sent on the returned channel.
    async fn scripted_upstream(
        script: fn(usize, usize) -> Act,
    ) -> (Target, Arc<AtomicUsize>, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let connection = counter.fetch_add(1, Ordering::SeqCst);
                let seen = seen_tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    for request in 0.. {
                        let Some(head_end) = read_until(&mut stream, &mut buf, |b| find(b, b"\r\n\r\n")).await else {
                            return;
                        };
                        let act = script(connection, request);
                        if let Act::AnswerEarly(answer) = act {
                            let _ = stream.write_all(answer).await;
                            return;
                        }
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let end = if let Some(at) = head.find("content-length: ") {
                            let n: usize = head[at + 16..].split("\r\n").next().unwrap().parse().unwrap();
                            read_until(&mut stream, &mut buf, |b| (b.len() >= head_end + n).then_some(head_end + n))
                                .await
                        } else if head.contains("transfer-encoding: chunked") {
                            read_until(&mut stream, &mut buf, |b| {
                                find(&b[head_end..], b"0\r\n\r\n").map(|e| head_end + e)
                            })
                            .await
                        } else {
                            Some(head_end)
                        };
                        let Some(end) = end else { return };
                        let _ = seen.send(buf.drain(..end).collect());
                        match act {
                            Act::Answer(answer) => {
                                if stream.write_all(answer).await.is_err() {
                                    return;
                                }
                            }
                            Act::AnswerAndClose(answer) => {
                                let _ = stream.write_all(answer).await;
                                return;
                            }
                            Act::Close | Act::AnswerEarly(_) => return,
                        }
                    }
                });
            }
        });
        (target(&addr.to_string(), None), accepted, seen)
    }

    /// The end of `needle` in `haystack`.
    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle).map(|at| at + needle.len())
    }

    /// Reads into `buf` until `done` finds an end in it; `None` if the
    /// stream ends first.
    async fn read_until(
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        done: impl Fn(&[u8]) -> Option<usize>,
    ) -> Option<usize> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = done(buf) {
                return Some(end);
            }
            match stream.read(&mut chunk).await {
                Ok(n @ 1..) => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    fn request(method: http::Method, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/x");
        req.headers_mut().insert(http::header::HOST, HeaderValue::from_static("api"));
        req
    }

    fn frames(frames: &[&'static str], length: Option<u64>) -> Body {
        crate::upstream::http1::tests::Frames::body(frames, length)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[tokio::test]
    async fn bodies_go_out_framed_by_their_length_or_chunked() {
        let (api, _, mut seen) = scripted_upstream(|_, _| Act::Answer(OK)).await;
        let pool = Pool::new();
        let res = send(&pool, &api, request(http::Method::POST, frames(&["ab", "cd"], Some(4)))).await.expect("sent");
        res.into_body().collect().await.expect("body");
        let raw = seen.recv().await.expect("a request");
        assert_eq!(raw, b"POST /x HTTP/1.1\r\nhost: api\r\ncontent-length: 4\r\n\r\nabcd");

        let res = send(&pool, &api, request(http::Method::POST, frames(&["ab", "cde"], None))).await.expect("sent");
        res.into_body().collect().await.expect("body");
        let raw = seen.recv().await.expect("a request");
        assert_eq!(
            raw,
            b"POST /x HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        );
        assert_eq!(pool.idle_count(), 1, "one connection, back in the pool");
    }

    #[tokio::test]
    async fn a_body_longer_than_it_declared_stops_at_its_declared_end() {
        let (api, _, mut seen) = scripted_upstream(|_, _| Act::Answer(OK)).await;
        let pool = Pool::new();
        let Err(e) = send(&pool, &api, request(http::Method::PUT, frames(&["abc", "SMUGGLED"], Some(3)))).await else {
            panic!("a body longer than its length was sent");
        };
        assert!(matches!(e, Error::Exchange(http1::Error::RequestBodyLength)), "{e}");
        let raw = seen.recv().await.expect("the request, as far as it went");
        assert_eq!(raw, b"PUT /x HTTP/1.1\r\nhost: api\r\ncontent-length: 3\r\n\r\nabc");
        assert_eq!(pool.idle_count(), 0, "the connection is not reused");
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_done_is_relayed() {
        let (api, _, _seen) = scripted_upstream(|_, _| {
            Act::AnswerEarly(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!")
        })
        .await;
        let pool = Pool::new();
        // A body that never ends: the answer must not wait for it.
        let endless = EndlessBody(false).boxed_unsync();
        let res = tokio::time::timeout(Duration::from_secs(5), send(&pool, &api, request(http::Method::POST, endless)))
            .await
            .expect("the early answer comes")
            .expect("an answer");
        assert_eq!(res.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, Bytes::from_static(b"big!"));
        assert_eq!(pool.idle_count(), 0);
    }

    /// One frame, then nothing ever again.
    struct EndlessBody(bool);

    impl http_body::Body for EndlessBody {
        type Data = Bytes;
        type Error = crate::http::BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"abc")))))
        }
    }

    #[tokio::test]
    async fn bytes_after_an_answer_retire_its_connection() {
        let (api, accepted, _seen) =
            scripted_upstream(|_, _| Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK"))
                .await;
        let pool = Pool::new();
        for _ in 0..2 {
            let res = send(&pool, &api, get()).await.expect("an answer");
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, Bytes::from_static(b"ok"), "never the stray bytes");
        }
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a connection each");
    }

    #[tokio::test]
    async fn chunked_and_close_delimited_answers_are_read_to_their_ends() {
        let (api, accepted, _seen) = scripted_upstream(|_, _| {
            Act::Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n")
        })
        .await;
        let pool = Pool::new();
        for _ in 0..2 {
            let res = send(&pool, &api, get()).await.expect("an answer");
            assert!(!res.headers().contains_key(http::header::CONTENT_LENGTH));
            let body = res.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(body, Bytes::from_static(b"chunked"));
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "reused");

        let (api, _, _seen) =
            scripted_upstream(|_, _| Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")).await;
        let res = send(&pool, &api, get()).await.expect("an answer");
        let body = res.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, Bytes::from_static(b"until the end"));
        assert_eq!(pool.idle_count(), 1, "only the chunked upstream's");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let (api, _, _seen) =
            scripted_upstream(|_, _| Act::AnswerAndClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")).await;
        let res = send(&Pool::new(), &api, get()).await.expect("a head");
        let e = res.into_body().collect().await.expect_err("a truncated body");
        assert!(matches!(e, http1::Error::ClosedInBody), "{e}");
    }

    #[tokio::test]
    async fn a_reused_connection_closed_under_a_request_is_retried_only_when_that_is_safe() {
        // Each connection answers its first request and drops the next
        // without a word, as an upstream closing an idle connection would.
        let script = |_, request| if request == 0 { Act::Answer(OK) } else { Act::Close };
        let (api, accepted, _seen) = scripted_upstream(script).await;
        let pool = Pool::new();
        send(&pool, &api, get()).await.expect("first").into_body().collect().await.expect("body");
        assert_eq!(pool.idle_count(), 1);
        // A GET without a body goes again, on a new connection.
        let res = send(&pool, &api, get()).await.expect("retried");
        assert_eq!(res.status(), http::StatusCode::OK);
        res.into_body().collect().await.expect("body");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // A POST may have been acted on: its failure is reported.
        let Err(e) = send(&pool, &api, request(http::Method::POST, frames(&["x"], Some(1)))).await else {
            panic!("a POST was sent twice");
        };
        assert!(!e.is_connect(), "{e}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "not sent again");
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_fails_at_the_stall_timeout() {
        // Half the body, then nothing, on a connection left open.
        let (api, _, _seen) =
            scripted_upstream(|_, _| Act::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")).await;
        let pool = Pool::new();
        let stall = std::time::Duration::from_millis(600);
        let res = pool.send(&api, get(), &http1::Added::default(), Instant::now(), stall).await.expect("a head");
        let started = Instant::now();
        let e = res.into_body().collect().await.expect_err("a stalled body");
        assert!(matches!(e, http1::Error::Stalled(d) if d == stall), "{e}");
        assert!(started.elapsed() >= stall, "not before the stall timeout");
        assert_eq!(pool.idle_count(), 0, "the connection is dropped");

        // A body that keeps coming, slower than that in all but never
        // stalled for it, is read whole.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let slow = target(&listener.local_addr().expect("addr").to_string(), None);
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = Vec::new();
            read_until(&mut stream, &mut buf, |b| find(b, b"\r\n\r\n")).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n").await.expect("head");
            for byte in [b"a", b"b", b"c", b"d", b"e", b"f"] {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                stream.write_all(byte).await.expect("byte");
            }
        });
        let res = pool.send(&slow, get(), &http1::Added::default(), Instant::now(), stall).await.expect("a head");
        let body = res.into_body().collect().await.expect("the whole body").to_bytes();
        assert_eq!(&body[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_request_that_kills_its_connection_is_sent_twice_at_most() {
        // Each connection answers its first request and dies of the next.
        let script = |_, request| if request == 0 { Act::Answer(OK) } else { Act::Close };
        let (api, _accepted, mut seen) = scripted_upstream(script).await;
        let pool = Pool::new();
        // Three idle connections.
        let (a, b, c) = tokio::join!(send(&pool, &api, get()), send(&pool, &api, get()), send(&pool, &api, get()));
        for res in [a, b, c] {
            res.expect("answered").into_body().collect().await.expect("body");
        }
        assert_eq!(pool.idle_count(), 3);
        let res = send(&pool, &api, get()).await.expect("answered on a new connection");
        assert_eq!(res.status(), http::StatusCode::OK);
        res.into_body().collect().await.expect("body");
        let mut requests = 0;
        while seen.try_recv().is_ok() {
            requests += 1;
        }
        assert_eq!(requests, 3 + 2, "once on an idle connection, once on a new one");
    }
}

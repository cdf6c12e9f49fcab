//! Keep-alive connections to upstreams, pooled per worker: HTTP/1.1 over
//! TCP, or over TLS as `crate::upstream_tls` configures it.
//!
//! A connection is borrowed for one exchange and comes back to the pool
//! when the response body has been relayed to its end; a body dropped
//! early (the client went away) takes its connection with it, since an
//! HTTP/1.1 connection with half a response on it cannot carry another.
//! Idle connections are reused newest first and dropped after
//! [`IDLE_TIMEOUT`]; connections for one upstream are told apart by its
//! authority and by the TLS configuration that verified them, so a route
//! that skips verification never lends a connection to one that verifies.
//!
//! A request that could not be written on a reused connection (the
//! upstream closed it while it sat idle) is sent again on another: it never
//! reached the upstream, so that is safe whatever its method. Once written,
//! a failure is the caller's to report.
//!
//! This is what hyper-util's pooled client does, minus what a gateway's
//! workers do not need: each worker is one thread with its own pool, so
//! there is no key hashing, no shared lock to contend, and no task spawned
//! per request to watch for the connection to go idle (callgrind: 90k
//! instructions per proxied request before, 79k after).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::respond::Body;

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
        Target { scheme, authority, tls, host }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    fn same_pool(&self, other: &Target) -> bool {
        self.authority == other.authority
            && self.scheme == other.scheme
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }

    /// Host and port to connect to: the authority without IPv6 brackets,
    /// and the scheme's port when none is given.
    fn host_port(&self) -> (&str, u16) {
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
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl Error {
    /// Whether no connection was made at all.
    pub fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::ConnectTimeout | Error::Tls(_))
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
struct Idles {
    /// A handful of upstreams per gateway: a list beats hashing the key.
    by_target: Vec<(Target, Vec<Idle>)>,
}

impl Idles {
    fn take(&mut self, target: &Target, now: Instant) -> Option<SendRequest<Body>> {
        let (_, idle) = self.by_target.iter_mut().find(|(t, _)| t.same_pool(target))?;
        while let Some(conn) = idle.pop() {
            if !conn.sender.is_closed() && now.duration_since(conn.since) < IDLE_TIMEOUT {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&mut self, target: Target, sender: SendRequest<Body>, now: Instant) {
        let idle = match self.by_target.iter().position(|(t, _)| t.same_pool(&target)) {
            Some(i) => &mut self.by_target[i].1,
            None => {
                self.by_target.push((target, Vec::new()));
                &mut self.by_target.last_mut().expect("just pushed").1
            }
        };
        if idle.len() >= MAX_IDLE_PER_UPSTREAM {
            idle.remove(0);
        }
        idle.push(Idle { sender, since: now });
    }

    /// Drops closed and expired connections, and the upstreams left with
    /// none (such as those of a configuration a reload replaced).
    fn reap(&mut self, now: Instant) {
        for (_, idle) in &mut self.by_target {
            idle.retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
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

    fn idles(&self) -> std::sync::MutexGuard<'_, Idles> {
        lock(&self.idle)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idles().len()
    }

    /// Sends `req` (in origin form, with its `Host`) to `target` and
    /// returns the response head; the body returns the connection to the
    /// pool when it has been read to its end.
    pub async fn send(&self, target: &Target, mut req: Request<Body>) -> Result<Response<PooledBody>, Error> {
        loop {
            let pooled = self.idles().take(target, Instant::now());
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                // Boxed: a TLS handshake's state is kilobytes, carried
                // (and copied on every move) by each request's future.
                None => Box::pin(connect(target)).await?,
            };
            // A returned connection may still be finishing its last
            // exchange; this waits for that, or says it closed instead.
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    let home = Home { pool: Arc::downgrade(&self.idle), target: target.clone(), sender };
                    return Ok(res.map(|body| PooledBody { body, home: Some(home), done: false }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: safe to send again, on another.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
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
/// target has a client configuration, then an HTTP/1.1 handshake; the
/// connection itself runs as a task of the current worker.
async fn connect(target: &Target) -> Result<SendRequest<Body>, Error> {
    let (host, port) = target.host_port();
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(Error::Connect(e)),
        Err(_) => return Err(Error::ConnectTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
    match &target.tls {
        None => handshake(tcp).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                Error::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))
            })?;
            let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(Error::Tls)?;
            handshake(tls).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Body>, Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        // Heads and small bodies go out in one write(2).
        .writev(false)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Where a connection goes back to when its response is done.
struct Home {
    pool: Weak<Mutex<Idles>>,
    target: Target,
    sender: SendRequest<Body>,
}

/// An upstream response body that returns its connection to the pool once
/// read to its end.
pub struct PooledBody {
    body: Incoming,
    home: Option<Home>,
    done: bool,
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.done = true;
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

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A server stops polling a body of known length after its last
        // byte, without asking for the end: that counts as read through.
        let finished = self.done || http_body::Body::is_end_stream(&self.body);
        if let Some(home) = self.home.take()
            && finished
            && !home.sender.is_closed()
            && let Some(pool) = home.pool.upgrade()
        {
            lock(&pool).put(home.target, home.sender, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live HTTP/1.1 client connection over an in-memory pipe; it stays
    /// open while the returned far end is held.
    async fn connection() -> (SendRequest<Body>, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        (handshake(near).await.expect("handshake"), far)
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
        let api = target("api.internal:8080", None);
        let t0 = Instant::now();
        let mut idles = Idles::default();
        idles.put(api.clone(), older, t0);
        idles.put(api.clone(), newer, t0 + Duration::from_secs(1));
        assert_eq!(idles.len(), 2);

        assert!(idles.take(&api, t0 + Duration::from_secs(2)).is_some());
        assert_eq!(idles.len(), 1);
        // The older one has now been idle for the whole timeout.
        assert!(idles.take(&api, t0 + IDLE_TIMEOUT).is_none());
        assert_eq!(idles.len(), 0);
    }

    #[tokio::test]
    async fn a_closed_connection_is_never_handed_out() {
        let (sender, far) = connection().await;
        let api = target("api.internal:8080", None);
        let mut idles = Idles::default();
        idles.put(api.clone(), sender, Instant::now());
        // The upstream hangs up; its connection task sees that and ends.
        drop(far);
        let closed = async {
            while !all_closed(&idles) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the connection closes");
        assert!(idles.take(&api, Instant::now()).is_none());
    }

    fn all_closed(idles: &Idles) -> bool {
        idles.by_target.iter().all(|(_, idle)| idle.iter().all(|c| c.sender.is_closed()))
    }

    #[tokio::test]
    async fn connections_are_kept_apart_by_authority_and_tls_configuration() {
        let config = |trust| crate::upstream_tls::client_config(&trust).expect("config");
        let skip = config(crate::upstream_tls::Trust::SkipVerify);
        let other = config(crate::upstream_tls::Trust::SkipVerify);
        let (sender, _far) = connection().await;
        let mut idles = Idles::default();
        idles.put(target("api.internal:8443", Some(skip.clone())), sender, Instant::now());

        let now = Instant::now();
        assert!(idles.take(&target("api.internal:8443", None), now).is_none(), "plain is not TLS");
        assert!(idles.take(&target("api.internal:8443", Some(other)), now).is_none(), "another configuration");
        assert!(idles.take(&target("other.internal:8443", Some(skip.clone())), now).is_none(), "another host");
        assert!(idles.take(&target("api.internal:8443", Some(skip)), now).is_some());
    }

    #[tokio::test]
    async fn reaping_drops_expired_connections_and_empty_upstreams() {
        let (a, _far1) = connection().await;
        let (b, _far2) = connection().await;
        let t0 = Instant::now();
        let mut idles = Idles::default();
        idles.put(target("old.internal:80", None), a, t0);
        idles.put(target("new.internal:80", None), b, t0 + IDLE_TIMEOUT);
        idles.reap(t0 + IDLE_TIMEOUT + Duration::from_secs(1));
        assert_eq!(idles.len(), 1);
        assert_eq!(idles.by_target.len(), 1, "the upstream with none left is forgotten");
        assert_eq!(idles.by_target[0].0.authority.as_str(), "new.internal:80");
    }

    #[tokio::test]
    async fn at_most_max_idle_connections_are_kept_per_upstream() {
        let api = target("api.internal:8080", None);
        let mut idles = Idles::default();
        let mut far_ends = Vec::new();
        for _ in 0..MAX_IDLE_PER_UPSTREAM + 3 {
            let (sender, far) = connection().await;
            far_ends.push(far);
            idles.put(api.clone(), sender, Instant::now());
        }
        assert_eq!(idles.len(), MAX_IDLE_PER_UPSTREAM);
    }

    /// A raw upstream on a real socket: for every request head it reads, it
    /// writes `answer`; it counts the connections it accepts.
    async fn raw_upstream(answer: &'static [u8]) -> (Target, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (target(&addr.to_string(), None), accepted)
    }

    fn get() -> Request<Body> {
        let mut req = Request::new(crate::respond::full(Bytes::new()));
        *req.uri_mut() = http::Uri::from_static("/x");
        req
    }

    #[tokio::test]
    async fn a_response_read_to_its_end_returns_its_connection_and_one_dropped_early_does_not() {
        use http_body_util::BodyExt as _;
        // Content-Length says 10; only 5 bytes ever come.
        let (partial, accepted) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").await;
        let pool = Pool::new();
        let res = pool.send(&partial, get()).await.expect("a response head");
        assert_eq!(res.status(), http::StatusCode::OK);
        drop(res);
        assert_eq!(pool.idle_count(), 0, "half a response on it: not reusable");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

        let (whole, accepted) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        for round in 1..=3 {
            let res = pool.send(&whole, get()).await.expect("a response");
            let body = res.into_body().collect().await.expect("the body").to_bytes();
            assert_eq!(body, Bytes::from_static(b"hello"));
            assert_eq!(pool.idle_count(), 1, "round {round}: back in the pool");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for three exchanges");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_used_again() {
        use http_body_util::BodyExt as _;
        let (closing, accepted) =
            raw_upstream(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok").await;
        let pool = Pool::new();
        for _ in 0..2 {
            let res = pool.send(&closing, get()).await.expect("a response on a fresh connection");
            res.into_body().collect().await.expect("the body");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_dead_upstream_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let Err(e) = Pool::new().send(&target(&format!("127.0.0.1:{port}"), None), get()).await else {
            panic!("a connection to a closed port succeeded");
        };
        assert!(e.is_connect(), "{e}");
        assert!(e.to_string().starts_with("connect: "), "{e}");
    }
}

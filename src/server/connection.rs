//! One connection's life: accepted under the connection limit, its TLS
//! handshake and first request held to `header_read_timeout`, served as
//! HTTP/1.1 or HTTP/2 by hyper, closed after `keep_alive_timeout` idle,
//! and drained when the listener stops (an exchange in flight finishes
//! first, as long as it moves).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;
use crate::http::h2_streams::StreamExecutor;
use crate::proxy::ExchangeLimit;

/// Accepts connections until told to stop, then drains them.
pub(super) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    cfg: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
    limit: ConnectionLimit,
    handler: F,
) where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<crate::http::Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(StreamExecutor::new(cfg.stream_idle_timeout));
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper starts this timer when a connection falls idle, not when a
        // head's first byte comes: at `header_read_timeout` it would cut
        // idle keep-alive connections long before `keep_alive_timeout`
        // (and a load balancer reusing one would meet a reset). The first
        // head is held to `header_read_timeout` by `serve_io`; a later one
        // gets what an idle connection gets anyway.
        .header_read_timeout(cfg.header_read_timeout.max(cfg.keep_alive_timeout))
        .max_buf_size(cfg.max_header_bytes)
        .keep_alive(true)
        // Heads and small bodies go out in one write(2), not a writev of pieces.
        .writev(false);
    builder
        .http2()
        // WebSockets over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL.
        .enable_connect_protocol()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(cfg.http2_max_concurrent_streams);
    let builder = Arc::new(Builders { http2: builder.clone().http2_only(), sniffing: builder });
    let ConnectionLimit { permits, max } = limit;

    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Taken after the accept: the limit is the process's, shared by
        // every worker, and a worker that waited for a permit before
        // accepting could get one freed elsewhere while the connection
        // waiting for it sits in another worker's queue. This way at most
        // one accepted connection per worker waits, and the rest wait in
        // the kernel's.
        let permit = tokio::select! {
            _ = stop.changed() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let conn = Conn {
            peer,
            first_request_timeout: cfg.header_read_timeout,
            keep_alive_timeout: cfg.keep_alive_timeout,
            exchanges: cfg.max_upstream_exchanges_per_connection,
            tls: tls.clone(),
            stop: stop.clone(),
            permit: Arc::new(permit),
        };
        serve_connection(stream, conn, &builder, handler.clone());
    }
    drop(listener);
    // Every connection holds a permit until it is done, so holding them
    // all means every connection has finished, this worker's and the
    // others' (whose drains then take them in turn).
    tokio::select! {
        _ = permits.acquire_many(max) => {}
        _ = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
}

/// `server.max_connections` for one listener, across all its workers: a
/// connection holds one of `max` permits while it lives.
#[derive(Clone)]
pub(super) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: u32,
}

impl ConnectionLimit {
    pub(super) fn new(cfg: &ServerConfig) -> ConnectionLimit {
        let max = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
        ConnectionLimit { permits: Arc::new(Semaphore::new(max as usize)), max }
    }
}

/// A client connection's transport, counting the bytes written to it: a
/// connection shutting down is let finish only while it makes progress.
struct Writes<I> {
    io: I,
    written: Arc<AtomicU64>,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Writes<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Writes<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What a WebSocket handshake request carries from its connection: the
/// connection's place under `server.max_connections`, which the tunnel
/// keeps after hyper has let the connection go, and the drain signal,
/// which ends the tunnel.
#[derive(Clone)]
pub(super) struct Hold {
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    stop: watch::Receiver<bool>,
}

impl Hold {
    /// Resolves when the listener drains.
    pub(super) async fn stopped(mut self) {
        let _ = self.stop.wait_for(|stop| *stop).await;
    }
}

/// What a connection task needs to know besides its socket.
struct Conn {
    peer: SocketAddr,
    first_request_timeout: Duration,
    keep_alive_timeout: Duration,
    /// Upstream exchanges its HTTP/2 streams may have in flight at once.
    exchanges: usize,
    tls: Option<TlsAcceptor>,
    /// Turns `true` when the listener drains.
    stop: watch::Receiver<bool>,
    /// Its place under `server.max_connections`.
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// How a connection is served. A TLS connection that agreed on `h2` by
/// ALPN speaks HTTP/2 only (RFC 9113 §3.2): told by its first bytes, as
/// the others are, its bad preface was answered as HTTP/1.1 (a `400`)
/// instead of with `GOAWAY(PROTOCOL_ERROR)` (h2spec 3.5/2), and an
/// HTTP/1.1 request on it was served. Every other connection is told by
/// its first bytes: HTTP/1.1 (with upgrades), or an HTTP/2 preface (prior
/// knowledge, RFC 9113 §3.3; on TLS that agreed on `http/1.1` a client's
/// error, served all the same).
struct Builders {
    sniffing: auto::Builder<StreamExecutor>,
    http2: auto::Builder<StreamExecutor>,
}

fn serve_connection<F, Fut>(stream: TcpStream, conn: Conn, builder: &Arc<Builders>, handler: F)
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<crate::http::Body>, Infallible>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let builder = builder.clone();
    tokio::spawn(async move {
        match conn.tls.clone() {
            None => serve_io(stream, conn, &builder, false, handler).await,
            Some(acceptor) => {
                // The handshake shares the first-request budget: a client
                // that never finishes it is dropped, not kept on a worker.
                match tokio::time::timeout(conn.first_request_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        serve_io(tls, conn, &builder, h2, handler).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, peer = %conn.peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %conn.peer, "TLS handshake timed out"),
                }
            }
        }
    });
}

/// Serves one connection until it ends, and ends it itself in three cases
/// (`ConnectionWatch`): no first request within `first_request_timeout`
/// (closed at once), no new request for `keep_alive_timeout`, or the
/// listener draining (both gracefully: an exchange in flight finishes
/// first, as long as it moves).
async fn serve_io<I, F, Fut>(io: I, conn: Conn, builders: &Builders, h2: bool, handler: F)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<crate::http::Body>, Infallible>> + Send + 'static,
{
    let Conn { peer, first_request_timeout, keep_alive_timeout, exchanges, mut stop, permit, .. } = conn;
    let hold = Hold { _permit: permit, stop: stop.clone() };
    let opened = tokio::time::Instant::now();
    let last_request = Arc::new(AtomicU64::new(0));
    let seen = last_request.clone();
    // The bound on this connection's upstream exchanges, made for its first
    // HTTP/2 request (an HTTP/1.1 connection has one exchange at a time).
    let limit = std::sync::OnceLock::new();
    let service = service_fn(move |mut req: Request<Incoming>| {
        let since_open = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        seen.store(since_open + 1, Ordering::Relaxed);
        if req.version() == http::Version::HTTP_2 {
            let limit = limit.get_or_init(|| ExchangeLimit::new(exchanges));
            req.extensions_mut().insert(limit.clone());
            // A WebSocket over HTTP/2 is a CONNECT's stream (RFC 8441).
            if req.method() == http::Method::CONNECT {
                req.extensions_mut().insert(hold.clone());
            }
        } else if req.extensions().get::<hyper::upgrade::OnUpgrade>().is_some() {
            // hyper marks only requests that ask to upgrade.
            req.extensions_mut().insert(hold.clone());
        }
        handler(req, peer)
    });
    let written = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Writes { io, written: written.clone() });
    // Boxed, each: hyper-util's two kinds of connection are two types.
    let mut conn = if h2 {
        Serving::Http2(Box::pin(builders.http2.serve_connection(io, service)))
    } else {
        Serving::Sniffed(Box::pin(builders.sniffing.serve_connection_with_upgrades(io, service)))
    };
    macro_rules! on_conn {
        ($conn:ident => $e:expr) => {
            match &mut conn {
                Serving::Sniffed($conn) => $e,
                Serving::Http2($conn) => $e,
            }
        };
    }
    let draining = *stop.borrow_and_update();
    let watching = stop.clone();
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let timer = tokio::time::sleep(first_request_timeout.min(keep_alive_timeout));
    tokio::pin!(timer);
    let mut watch = ConnectionWatch {
        stopped: stopped.as_mut(),
        watching,
        registered: None,
        timer: timer.as_mut(),
        timer_armed: false,
        opened,
        last_request,
        first_request_timeout,
        keep_alive_timeout,
        closing: false,
        written,
        written_then: None,
    };
    if draining {
        on_conn!(c => c.as_mut().graceful_shutdown());
        watch.closing = true;
    }
    // Not `select!`: that would poll every timer on every wake-up of a busy
    // connection. The watch polls its timer only when armed anew or due.
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = on_conn!(c => c.as_mut().poll(cx)) {
            return Poll::Ready(Ok(result));
        }
        match watch.poll(cx) {
            Poll::Ready(Ending::ShutDown) => {
                on_conn!(c => c.as_mut().graceful_shutdown());
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(ending) => Poll::Ready(Err(ending)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    match ended {
        Err(Ending::NoFirstRequest) => tracing::debug!(%peer, "closed a connection that sent no request in time"),
        Err(_) => tracing::debug!(%peer, "dropped a closing connection whose exchanges stalled"),
        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
        Ok(Ok(())) => {}
    }
}

/// A connection as hyper serves it (see [`Builders`]).
enum Serving<A, B> {
    Sniffed(A),
    Http2(B),
}

/// What the watch tells the connection's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Shut down gracefully now (idle too long, or the listener drains).
    ShutDown,
    /// Drop it: no first request came in time.
    NoFirstRequest,
    /// Drop it: shutting down, it wrote nothing for `keep_alive_timeout`
    /// (a client that stopped reading, an HTTP/2 window held at zero).
    Stalled,
}

/// The deadlines of one connection and the drain signal, with one timer:
/// the first request's deadline (the TLS handshake's too, before this) and
/// the idle timeout between requests; once closing, the progress check.
/// hyper's head timer, set to the longer of the two, backs them up.
struct ConnectionWatch<'a, S> {
    /// Resolves when the listener's drain signal changes.
    stopped: Pin<&'a mut S>,
    /// `stopped` registers the task's waker with the channel; after that, a
    /// wake-up asks `watching` (one atomic load) whether the channel
    /// changed, rather than polling `stopped`, which takes the channel's
    /// lock that every connection of every worker shares.
    watching: watch::Receiver<bool>,
    registered: Option<Waker>,
    timer: Pin<&'a mut tokio::time::Sleep>,
    /// Polled since it was last reset (so it holds the task's waker).
    timer_armed: bool,
    opened: tokio::time::Instant,
    /// When the last request came, in ms since `opened`, plus one; 0: none.
    last_request: Arc<AtomicU64>,
    first_request_timeout: Duration,
    keep_alive_timeout: Duration,
    /// Shutting down gracefully.
    closing: bool,
    /// Bytes written to the client so far, and when the closing
    /// connection's timer was last looked at.
    written: Arc<AtomicU64>,
    written_then: Option<u64>,
}

impl<S: Future> ConnectionWatch<'_, S> {
    /// Polled after the connection on every wake-up.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        if self.closing {
            return self.poll_progress(cx);
        }
        let stop_now = match &self.registered {
            Some(waker) if waker.will_wake(cx.waker()) => self.watching.has_changed().unwrap_or(true),
            _ => {
                self.registered = Some(cx.waker().clone());
                self.stopped.as_mut().poll(cx).is_ready()
            }
        };
        if stop_now {
            self.closing = true;
            return Poll::Ready(Ending::ShutDown);
        }
        loop {
            if self.timer_armed && !self.timer.is_elapsed() {
                return Poll::Pending;
            }
            self.timer_armed = true;
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let last = self.last_request.load(Ordering::Relaxed);
            let due = match last {
                0 => self.opened + self.first_request_timeout,
                last => self.opened + Duration::from_millis(last - 1) + self.keep_alive_timeout,
            };
            if due > tokio::time::Instant::now() {
                self.timer.as_mut().reset(due);
            } else if last == 0 {
                return Poll::Ready(Ending::NoFirstRequest);
            } else {
                self.closing = true;
                return Poll::Ready(Ending::ShutDown);
            }
            // Polled again at once, which registers the new deadline.
            self.timer_armed = false;
        }
    }

    /// A connection shutting down gracefully waits for its exchanges, as
    /// long as they move: one that writes nothing for `keep_alive_timeout`
    /// is `Stalled`.
    fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<Ending> {
        let written_now = self.written.load(Ordering::Relaxed);
        if self.written_then.is_none() {
            self.timer.as_mut().reset(tokio::time::Instant::now() + self.keep_alive_timeout);
        } else if self.timer.as_mut().poll(cx).is_ready() {
            if self.written_then == Some(written_now) {
                return Poll::Ready(Ending::Stalled);
            }
            self.timer.as_mut().reset(tokio::time::Instant::now() + self.keep_alive_timeout);
        } else {
            return Poll::Pending;
        }
        self.written_then = Some(written_now);
        // Polled again at once, which registers the new deadline.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

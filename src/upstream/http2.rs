//! HTTP/2 to upstreams (`h2c://`, prior knowledge; or `https://` ones
//! that agreed to `h2` in ALPN), for gRPC services and others that speak
//! HTTP/2: hyper's client, one multiplexed connection per upstream and
//! worker, driven by a task of its own.
//!
//! HTTP/1.1 goes through the gateway's own client (`http1`), where one
//! request's task does the whole exchange. HTTP/2 multiplexes many
//! exchanges on one connection, whose frames someone must read whichever
//! request they belong to: that is a connection task's work, and hyper's
//! is the one the server side already runs.
//!
//! A connection the upstream closed (a `GOAWAY`, a reset) is replaced on
//! the next request; a request that never left (hyper hands it back) is
//! sent once more on the new one, and one that may have reached the
//! upstream never is.

use std::sync::Mutex;
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::http::Body;
use crate::upstream::http1::Connection;
use crate::upstream::pool::{Error, Pool, Spoken, Target, connect_offering_h2};

/// HTTP/2 PINGs on an idle connection, so that a dead upstream is noticed
/// before a request waits on it.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// One worker's HTTP/2 upstream connections.
#[derive(Default)]
pub struct Http2Pool {
    /// A handful of upstreams per gateway: a list beats hashing the key.
    /// Only the worker's thread takes the lock.
    connections: Mutex<Vec<(Target, SendRequest<Body>)>>,
}

impl Http2Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Target, SendRequest<Body>)>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The open connection to `target`, if there is one.
    fn open(&self, target: &Target) -> Option<SendRequest<Body>> {
        let mut connections = self.lock();
        connections.retain(|(_, sender)| !sender.is_closed());
        connections.iter().find(|(t, _)| t.same_pool(target)).map(|(_, sender)| sender.clone())
    }

    /// Sends `req` (its URI in absolute form, so that hyper has the
    /// `:scheme` and `:authority`) to `target` and returns the response
    /// head; its body streams from the connection.
    pub async fn send(&self, target: &Target, mut req: Request<Body>) -> Result<Response<Incoming>, Error> {
        let mut fresh = false;
        loop {
            let mut sender = match self.open(target).filter(|_| !fresh) {
                Some(sender) => sender,
                None => {
                    fresh = true;
                    self.connect(target).await?
                }
            };
            // Waits while the upstream's stream limit is reached.
            if let Err(e) = sender.ready().await {
                if fresh {
                    return Err(Error::Http2(e));
                }
                fresh = true;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(res),
                Err(mut failed) => match failed.take_message() {
                    // Never sent: the connection went away as it was taken.
                    Some(unsent) if !fresh => {
                        req = unsent;
                        fresh = true;
                    }
                    _ => return Err(Error::Http2(failed.into_error())),
                },
            }
        }
    }

    /// Whether `target` is spoken to in HTTP/2: always for `h2c://`,
    /// never for `http://`, and for `https://` when the upstream agreed to
    /// `h2` in ALPN. The first request to one not asked yet makes the
    /// connection that asks, and leaves it where it belongs: with this
    /// pool, or idle in `http1`'s.
    pub async fn speaks_h2(&self, target: &Target, http1: &Pool) -> Result<bool, Error> {
        match target.spoken() {
            Spoken::Http1 => Ok(false),
            Spoken::Http2 => Ok(true),
            Spoken::Unknown => {
                let (conn, agreed) = Box::pin(connect_offering_h2(target)).await?;
                if agreed {
                    self.adopt(target, conn).await?;
                    target.learnt(Spoken::Http2);
                } else {
                    http1.adopt(target, conn);
                    target.learnt(Spoken::Http1);
                }
                tracing::debug!(upstream = %target.authority(), http2 = agreed, "ALPN told what the upstream speaks");
                Ok(agreed)
            }
        }
    }

    /// A new connection to `target`: prior knowledge for `h2c://`, ALPN's
    /// agreement for `https://`. An upstream that agreed before but no
    /// longer does is an error, and the next request asks it afresh.
    async fn connect(&self, target: &Target) -> Result<SendRequest<Body>, Error> {
        let (conn, agreed) = Box::pin(connect_offering_h2(target)).await?;
        if *target.scheme() == Scheme::HTTPS && !agreed {
            target.learnt(Spoken::Unknown);
            return Err(Error::NoLongerHttp2);
        }
        self.adopt(target, conn).await
    }

    /// Speaks HTTP/2 on `conn`, new and unused, and keeps it as the
    /// connection to `target`.
    pub async fn adopt(&self, target: &Target, conn: Box<Connection>) -> Result<SendRequest<Body>, Error> {
        let (io, _) = conn.into_parts();
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new()).keep_alive_interval(KEEP_ALIVE).adaptive_window(true);
        let (sender, connection) = builder.handshake(TokioIo::new(io)).await.map_err(Error::Http2)?;
        let authority = target.authority().clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %authority, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        let mut connections = self.lock();
        connections.retain(|(t, s)| !s.is_closed() && !t.same_pool(target));
        connections.push((target.clone(), sender.clone()));
        Ok(sender)
    }
}

//! HTTP/2 to upstreams (`h2c://`, prior knowledge), for gRPC services
//! and others that speak only HTTP/2: hyper's client, one multiplexed
//! connection per upstream and worker, driven by a task of its own.
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

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::http::Body;
use crate::upstream::pool::{Error, Target};

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

    async fn connect(&self, target: &Target) -> Result<SendRequest<Body>, Error> {
        let (io, _) = Box::pin(crate::upstream::pool::connect(target)).await?.into_parts();
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

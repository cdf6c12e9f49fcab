//! Relaying a WebSocket both ways once the upstream has switched: bytes
//! pass as they come, one buffer per direction, so a side that stops
//! reading stops the other side's sending (backpressure, not memory).
//!
//! Each direction's frames are followed as they pass
//! (`crate::http::websocket::Frames`), for two reasons. What is relayed
//! must be WebSocket frames and nothing else, or it could be a request no
//! token authorised: anything else ends the connection with 1002. And when
//! the gateway ends the connection itself (the token expired or was
//! revoked, it idled, the gateway is stopping), it finishes the frame in
//! flight, so the close frame it then sends each way lands between two
//! frames, as the peers expect it. A side that will not let the frame end
//! or the close go out within [`GRACE`] is cut.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::http::websocket::{CloseCode, Frames, Sender, close_frame};
use crate::telemetry::metrics::Counter;
use crate::upstream::http1::Io;

/// How much each direction holds at once.
const BUFFER: usize = 16 * 1024;
/// How long the gateway waits, once it has decided to close, for the
/// frame in flight to end, its close frames to go out and the peers to
/// hang up, before it drops both connections.
pub const GRACE: Duration = Duration::from_secs(1);

/// The upstream's side of a tunnel: its connection, and what it sent
/// after its `101` that was already read.
pub struct Upstream {
    io: Io,
    early: BytesMut,
}

impl Upstream {
    pub fn new(io: Io, early: BytesMut) -> Upstream {
        Upstream { io, early }
    }
}

/// Why the gateway ends a tunnel itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The token it was opened with was revoked.
    Revoked,
    /// The token it was opened with expired.
    Expired,
    /// The gateway is shutting down.
    Shutdown,
}

impl Ending {
    fn close(self) -> (CloseCode, &'static str) {
        match self {
            Ending::Revoked => (CloseCode::PolicyViolation, "token revoked"),
            Ending::Expired => (CloseCode::PolicyViolation, "token expired"),
            Ending::Shutdown => (CloseCode::GoingAway, "gateway shutting down"),
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client hung up first (after a closing handshake, or not).
    Client,
    /// The upstream did.
    Upstream,
    /// The gateway ended it.
    Gateway(Ending),
    /// Nothing went either way for the route's idle timeout.
    Idle,
    /// One side sent what is not WebSocket frames.
    ProtocolError,
    /// A connection failed.
    Error,
}

impl Ended {
    /// The `reason` label of `portcullis_websockets_closed_total`, and the
    /// access line's `ended`.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::Upstream => "upstream",
            Ended::Gateway(Ending::Revoked) => "revoked",
            Ended::Gateway(Ending::Expired) => "expired",
            Ended::Gateway(Ending::Shutdown) => "shutdown",
            Ended::Idle => "idle",
            Ended::ProtocolError => "protocol_error",
            Ended::Error => "error",
        }
    }
}

/// What a tunnel carried, and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub ended: Ended,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
}

/// How to relay one tunnel.
pub struct Relay {
    /// The route's idle timeout.
    pub idle: Duration,
    /// An extension (`permessage-deflate`) was agreed: frames may set the
    /// reserved bits.
    pub extensions: bool,
    /// The route's body byte counters, to and from the upstream.
    pub to_upstream: Counter,
    pub from_upstream: Counter,
}

/// One direction: bytes read from one side, written to the other.
struct Pump {
    frames: Frames,
    buf: Vec<u8>,
    /// What is read and not yet written: `buf[start..end]`.
    start: usize,
    end: usize,
    /// Its source has ended.
    eof: bool,
    /// Cut at the next frame boundary: the gateway is closing.
    stopping: bool,
    /// At that boundary: nothing more is read for the destination.
    cut: bool,
    /// The close frame to write after the cut, and how much of it went.
    close: Option<(Vec<u8>, usize)>,
    /// Its destination is shut down: this direction is over.
    done: bool,
    written: u64,
    counter: Counter,
}

enum PumpError {
    Io,
    Violation,
}

impl From<io::Error> for PumpError {
    fn from(_: io::Error) -> PumpError {
        PumpError::Io
    }
}

impl Pump {
    fn new(sender: Sender, extensions: bool, counter: Counter) -> Pump {
        Pump {
            frames: Frames::new(sender, extensions),
            buf: vec![0; BUFFER],
            start: 0,
            end: 0,
            eof: false,
            stopping: false,
            cut: false,
            close: None,
            done: false,
            written: 0,
            counter,
        }
    }

    /// Starts with `early`, bytes already read from the source.
    fn prime(&mut self, early: &[u8]) -> Result<(), PumpError> {
        if early.len() > self.buf.len() {
            self.buf.resize(early.len(), 0);
        }
        self.frames.follow(early, false).map_err(|_| PumpError::Violation)?;
        self.buf[..early.len()].copy_from_slice(early);
        self.end = early.len();
        Ok(())
    }

    /// Ends this direction at its next frame boundary with `close` (unless
    /// its sender already closed: nothing may follow a close frame).
    fn stop(&mut self, close: Vec<u8>) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        if !self.frames.closed() {
            self.close = Some((close, 0));
        }
        if self.frames.at_boundary() {
            self.cut = true;
        }
    }

    /// Ends this direction now, dropping what it holds: its source broke
    /// the protocol, and nothing of it can be trusted to end a frame.
    fn abandon(&mut self, close: Vec<u8>) {
        self.stopping = true;
        self.cut = true;
        self.start = self.end;
        self.close = Some((close, 0));
    }

    /// Moves bytes until it has to wait, or is done. `moved` is set when
    /// anything was read or written.
    fn poll<S, D>(
        &mut self,
        src: &mut S,
        dst: &mut D,
        cx: &mut Context<'_>,
        moved: &mut bool,
    ) -> Poll<Result<(), PumpError>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            while self.start < self.end {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Io));
                }
                self.start += n;
                self.written += n as u64;
                self.counter.inc_by(n as u64);
                *moved = true;
            }
            if self.cut || self.eof {
                if let Some((frame, sent)) = &mut self.close {
                    while *sent < frame.len() {
                        let n = ready!(Pin::new(&mut *dst).poll_write(cx, &frame[*sent..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(PumpError::Io));
                        }
                        *sent += n;
                    }
                }
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                // The peer may be gone already; the direction is over
                // either way.
                let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // What was written may sit in a TLS buffer.
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(())) => {}
            }
            let n = read.filled().len();
            if n == 0 {
                self.eof = true;
                continue;
            }
            *moved = true;
            let keep = self.frames.follow(&self.buf[..n], self.stopping).map_err(|_| PumpError::Violation)?;
            (self.start, self.end) = (0, keep);
            if self.stopping && self.frames.at_boundary() {
                self.cut = true;
            }
        }
    }
}

/// Reads and drops what `src` still sends, until it ends: a socket closed
/// with unread bytes is reset, and a reset can destroy the close frame on
/// its way to the peer.
fn poll_drain<S: AsyncRead + Unpin>(src: &mut S, cx: &mut Context<'_>) -> Poll<()> {
    let mut scratch = [0u8; 2048];
    loop {
        let mut read = ReadBuf::new(&mut scratch);
        match ready!(Pin::new(&mut *src).poll_read(cx, &mut read)) {
            Ok(()) if !read.filled().is_empty() => {}
            _ => return Poll::Ready(()),
        }
    }
}

/// Relays between `client` and `upstream` until both directions end, or
/// `ending` says the gateway ends it (or the route's idle timeout does),
/// and then for at most [`GRACE`] more.
pub async fn relay<C>(mut client: C, upstream: Upstream, relay: Relay, ending: impl Future<Output = Ending>) -> Summary
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Upstream { io: mut upstream, early } = upstream;
    let mut up = Pump::new(Sender::Client, relay.extensions, relay.to_upstream);
    let mut down = Pump::new(Sender::Server, relay.extensions, relay.from_upstream);
    let mut ending = pin!(ending);
    let mut ended: Option<Ended> = None;
    // Which side ended it, when neither the gateway nor an error did: the
    // first to send a close frame, or else the first to hang up.
    let mut first_close: Option<Ended> = None;
    let mut first_eof: Option<Ended> = None;
    let idle = relay.idle;
    let mut last_moved = Instant::now();
    let mut idle_timer = pin!(tokio::time::sleep(idle));
    let mut grace: Option<Pin<Box<Sleep>>> = None;
    let mask = || rand::random::<[u8; 4]>();
    let close_both = |up: &mut Pump, down: &mut Pump, code: CloseCode, reason: &str| {
        up.stop(close_frame(Sender::Client, code, reason, mask()));
        down.stop(close_frame(Sender::Server, code, reason, mask()));
    };

    if down.prime(&early).is_err() {
        ended = Some(Ended::ProtocolError);
        down.abandon(close_frame(Sender::Server, CloseCode::ProtocolError, "", [0; 4]));
        up.stop(close_frame(Sender::Client, CloseCode::ProtocolError, "", mask()));
    }

    let outcome = std::future::poll_fn(|cx| {
        if ended.is_none()
            && let Poll::Ready(why) = ending.as_mut().poll(cx)
        {
            let (code, reason) = why.close();
            close_both(&mut up, &mut down, code, reason);
            ended = Some(Ended::Gateway(why));
        }
        let mut moved = false;
        let mut failed = None;
        // One poll of each direction, whichever way the other went.
        if let Poll::Ready(Err(e)) = up.poll(&mut client, &mut upstream, cx, &mut moved) {
            failed = Some((e, true));
        }
        if let Poll::Ready(Err(e)) = down.poll(&mut upstream, &mut client, cx, &mut moved) {
            failed = failed.or(Some((e, false)));
        }
        match failed {
            Some((PumpError::Io, _)) => return Poll::Ready(ended.unwrap_or(Ended::Error)),
            Some((PumpError::Violation, from_client)) => {
                let (broken, other) = if from_client { (&mut up, &mut down) } else { (&mut down, &mut up) };
                let sender = if from_client { Sender::Client } else { Sender::Server };
                broken.abandon(close_frame(sender, CloseCode::ProtocolError, "", mask()));
                let other_sender = if from_client { Sender::Server } else { Sender::Client };
                other.stop(close_frame(other_sender, CloseCode::ProtocolError, "", mask()));
                ended = ended.or(Some(Ended::ProtocolError));
                // Polled again at once, to send the close frames.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            None => {}
        }
        if first_close.is_none() {
            if up.frames.closed() {
                first_close = Some(Ended::Client);
            } else if down.frames.closed() {
                first_close = Some(Ended::Upstream);
            }
        }
        if first_eof.is_none() {
            if up.eof {
                first_eof = Some(Ended::Client);
            } else if down.eof {
                first_eof = Some(Ended::Upstream);
            }
        }
        if up.done && down.done {
            let why = ended.or(first_close).or(first_eof).unwrap_or(Ended::Error);
            if ended.is_none() {
                return Poll::Ready(why);
            }
            // The gateway closed: let the peers hang up in their turn.
            let client_done = up.eof || poll_drain(&mut client, cx).is_ready();
            let upstream_done = down.eof || poll_drain(&mut upstream, cx).is_ready();
            if client_done && upstream_done {
                return Poll::Ready(why);
            }
        }
        // Once the gateway has decided to close, or one side is gone (a
        // WebSocket has no use for half a connection), the other has
        // GRACE to finish.
        if ended.is_some() || up.done || down.done {
            let timer = grace.get_or_insert_with(|| Box::pin(tokio::time::sleep(GRACE)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(ended.or(first_close).or(first_eof).unwrap_or(Ended::Error));
            }
            if ended.is_some() {
                return Poll::Pending;
            }
        }
        // The idle timer is moved only when it fires, not at every byte.
        let now = Instant::now();
        if moved {
            last_moved = now;
        }
        while idle_timer.as_mut().poll(cx).is_ready() {
            if last_moved + idle <= now {
                close_both(&mut up, &mut down, CloseCode::GoingAway, "idle timeout");
                ended = Some(Ended::Idle);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            idle_timer.as_mut().reset(last_moved + idle);
        }
        Poll::Pending
    })
    .await;
    Summary { ended: outcome, bytes_from_client: up.written, bytes_to_client: down.written }
}

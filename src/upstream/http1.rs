//! HTTP/1.1 to upstreams, spoken by the request's own task: the request
//! is written and the response read by the future that handles the
//! client's request, on a connection `crate::upstream::pool` lends it.
//!
//! hyper's client runs every connection as a task of its own and passes
//! requests, responses and body chunks to it over channels, so each
//! exchange wakes another task several times. A gateway's worker holds
//! both ends of an exchange anyway. Here nothing changes hands: the
//! request goes out in one write, and a response whose body came with its
//! head (most API answers) is finished, and its connection back in the
//! pool, before the client's response is even started.
//!
//! What a proxy's client must get right, and where this does it:
//! - **What is sent is framed by the gateway alone.** A body of known
//!   length goes with `Content-Length`, any other `chunked`; the client's
//!   own framing headers are never copied. A body that yields more than it
//!   declared fails the exchange before the extra byte is written: to the
//!   upstream it would be the start of another request.
//! - **What comes back is framed as RFC 9112 §6.3 says** ([`parse_head`]):
//!   no body for `HEAD`, 1xx, 204 and 304; `chunked` when it is the last
//!   transfer coding; else `Content-Length`, which must be one valid
//!   number; else the body runs to the end of the connection. Anything
//!   ambiguous (a conflicting length, `chunked` twice, a 101 nobody asked
//!   for) is an error, never a guess.
//! - **A connection is reused only when its exchange ended exactly where
//!   the framing said**: keep-alive on both sides, the request written in
//!   full, the response read to its end and not one byte after it (bytes
//!   after a response would be taken for the answer to the next request,
//!   perhaps another client's), and no 204 or 304 that declared a body
//!   (its upstream may send one late). An idle connection is looked at
//!   once more just before it is lent (`Connection::is_reusable`); bytes
//!   a buggy upstream sends after that instant still land in the next
//!   exchange, a window this narrows but cannot close.
//! - **Full duplex.** An upstream may answer before it has read the whole
//!   request body (a `413`, or a streaming API); the rest of the body is
//!   still sent while the response is relayed.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::http::stall::Stall;
use crate::http::{Body, BoxError, has_token};
use crate::upstream::pool::Home;

/// The most a response head (status line and header fields) may take.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields a response head may have (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// The most a chunk-size line may take, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most the trailer section of a chunked response may take.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// How much is read at a time.
const READ_BUF: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before it answered")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection in the middle of the body")]
    ClosedInBody,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("the response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The client's body failed (it went away halfway, most often).
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
    #[error("the request body is not as long as it declared")]
    RequestBodyLength,
    #[error("nothing came or went for {0:?} in the middle of the body")]
    Stalled(Duration),
}

/// An upstream connection's transport.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open connection to an upstream, between exchanges or in one.
pub struct Connection {
    io: Io,
    /// Bytes read and not yet used.
    buf: BytesMut,
}

impl Connection {
    pub fn new(io: Io) -> Box<Connection> {
        Box::new(Connection { io, buf: BytesMut::with_capacity(READ_BUF) })
    }

    /// Whether an idle connection may carry another exchange: the upstream
    /// has neither closed it nor sent anything on it (an answer to no
    /// request would be taken for the next one's). Never waits, and makes
    /// no system call unless the socket has something to report.
    pub fn is_reusable(&mut self) -> bool {
        self.buf.is_empty() && self.poll_fill(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    /// The transport, and what was read from it and not yet used: after a
    /// `101`, the first bytes of the new protocol.
    pub fn into_parts(self) -> (Io, BytesMut) {
        (self.io, self.buf)
    }

    /// The socket under the connection (which ALPN protocol its TLS
    /// agreed, which address it has).
    pub fn io(&self) -> &Io {
        &self.io
    }

    /// Reads what the socket has into `buf`; `Ok(0)` is the end of the
    /// stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_BUF / 4 {
            self.buf.reserve(READ_BUF);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A failed exchange, and whether the request may go again on another
/// connection.
#[derive(Debug)]
pub struct Failure {
    pub error: Error,
    /// Nothing of an answer came, and either nothing of the request went
    /// out or it is a body-less request with an idempotent method: safe to
    /// send again if the connection was a reused one (RFC 9110 §9.2.2),
    /// whose upstream may have closed it just as it was taken.
    pub may_retry: bool,
    /// Some of the request went out: the upstream may have read it, and
    /// may have died of it.
    pub written: bool,
}

/// Sends `head` and `body` on `conn` and reads the response head.
///
/// When the whole response came with its head, the exchange is over: the
/// connection is returned beside the response if it may carry another.
/// Otherwise the response body reads the rest, and hands the connection
/// to `home` once the exchange has ended cleanly; it fails if nothing moves
/// either way for `stall_after` (see `Stall`).
///
/// With `UPGRADE` (a WebSocket handshake, which has no body), a `101`
/// ends the exchange with the connection handed over whole
/// ([`Exchanged::Switched`]); any other answer is relayed, and its
/// connection carries nothing more.
pub async fn exchange<const UPGRADE: bool>(
    mut conn: Box<Connection>,
    head: &Parts,
    added: &Added,
    body: Body,
    stall_after: Duration,
    home: impl FnOnce() -> Home,
) -> Result<Exchanged, Failure> {
    let framing = request_framing(&body);
    let mut encoded = BytesMut::with_capacity(256 + 32 * (head.headers.len() + added.fields.len()));
    encode_head(head, added, framing, &mut encoded);
    let mut outgoing = Some(Outgoing::new(encoded.freeze(), body, framing));
    let body_less = framing == Framing::Empty;
    let idempotent = is_idempotent(&head.method);
    let mut write_error = None;
    // Bytes of the request the socket took.
    let mut written = 0;

    let parsed = std::future::poll_fn(|cx| {
        if let Some(out) = outgoing.as_mut() {
            let sent = out.poll_send(&mut conn.io, cx);
            written = out.written;
            match sent {
                Poll::Ready(Ok(())) => outgoing = None,
                Poll::Ready(Err(Error::Io(e))) => {
                    // The upstream may have answered and closed (a 413 to a
                    // large upload): what it said is still to be read.
                    write_error = Some(e);
                    outgoing = None;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        loop {
            if !conn.buf.is_empty()
                && let Some(parsed) = parse_head(&mut conn.buf, &head.method, UPGRADE)?
            {
                return Poll::Ready(Ok(parsed));
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if conn.buf.is_empty() => {
                    return Poll::Ready(Err(match write_error.take() {
                        Some(e) => Error::Io(e),
                        None => Error::ClosedBeforeAnswer,
                    }));
                }
                Ok(0) => return Poll::Ready(Err(Error::Malformed("the connection closed in the middle of the head"))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    })
    .await;

    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(error) => {
            // Nothing of an answer, on a connection that was then closed.
            let unanswered = matches!(error, Error::Io(_) | Error::ClosedBeforeAnswer);
            let may_retry = unanswered && body_less && (written == 0 || idempotent);
            return Err(Failure { error, may_retry, written: written > 0 });
        }
    };
    // An upstream that answered before it had the whole request may take
    // the rest of the body for a request of its own, whose answer would
    // answer the next exchange: the connection ends with this one.
    let keep_alive = parsed.keep_alive && write_error.is_none() && outgoing.is_none() && !UPGRADE;
    let (parts, framing) = (parsed.parts, parsed.framing);
    if UPGRADE && parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Only an upgrade's `parse_head` lets a 101 through, and the
        // upgrade had no body: what is on the connection from here on is
        // the new protocol's, the bytes already read included.
        if outgoing.is_some() || write_error.is_some() {
            let error = Error::Malformed("101 Switching Protocols before the request was sent");
            return Err(Failure { error, may_retry: false, written: true });
        }
        return Ok(Exchanged::Switched(parts, conn));
    }

    // The fast path: the whole response is here and the request is out.
    if outgoing.is_none() {
        let complete = match framing {
            Framing::Empty => Some(None),
            Framing::Length(n) if conn.buf.len() as u64 >= n => Some(Some(conn.buf.split_to(n as usize).freeze())),
            _ => None,
        };
        if let Some(body) = complete {
            let reusable = (keep_alive && conn.buf.is_empty()).then_some(conn);
            let body = ResponseBody { state: State::Complete(body.filter(|b| !b.is_empty())) };
            return Ok(Exchanged::Answered(Response::from_parts(parts, body), reusable));
        }
    }
    let decoder = match framing {
        Framing::Empty => Decoder::Done,
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(Chunked::Size),
        Framing::UntilClose => Decoder::UntilClose,
    };
    let stall = Stall::new(stall_after);
    let streaming = Streaming { conn: Some(conn), decoder, outgoing, keep_alive, home: Some(home()), stall };
    let body = ResponseBody { state: State::Streaming(Box::new(streaming)) };
    Ok(Exchanged::Answered(Response::from_parts(parts, body), None))
}

/// How an exchange ended.
pub enum Exchanged {
    /// The response, and its connection when the exchange is already over
    /// and the connection may carry another.
    Answered(Response<ResponseBody>, Option<Box<Connection>>),
    /// The upstream switched protocols (`upgrade` only): its `101`'s head,
    /// and the connection, which now speaks the new protocol.
    Switched(http::response::Parts, Box<Connection>),
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// How the request body goes: none when it has already ended, by length
/// when it knows it, chunked otherwise.
fn request_framing(body: &Body) -> Framing {
    if body.is_end_stream() {
        return Framing::Empty;
    }
    match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// Header fields the gateway adds to a request, carried beside it and
/// written by [`encode_head`] rather than inserted into its map: each
/// insert hashes, and a map sized for the client's few fields grows twice
/// on the way.
#[derive(Default)]
pub struct Added {
    /// Written first, as RFC 9112 §3.2 asks; a `Host` in the map is then
    /// not written.
    pub host: Option<HeaderValue>,
    /// Written after the map's fields, in this order.
    pub fields: Vec<(&'static HeaderName, HeaderValue)>,
}

/// The request line and header fields, in origin form (RFC 9112 §3.2.1).
/// `Content-Length` and `Transfer-Encoding` are written from `framing`,
/// never copied. Names and values are as `http` holds them, which cannot
/// contain CR, LF or NUL, so nothing here can split the head.
fn encode_head(head: &Parts, added: &Added, framing: Framing, out: &mut BytesMut) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = &added.host {
        encode_field(&header::HOST, host, out);
    }
    let mut declared_length = false;
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH {
            declared_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || (name == header::HOST && added.host.is_some()) {
            continue;
        }
        encode_field(name, value, out);
    }
    for (name, value) in &added.fields {
        encode_field(name, value, out);
    }
    match framing {
        // A method that usually carries content says it has none, as it
        // would have said to us.
        Framing::Empty if declared_length || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Empty | Framing::UntilClose => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

fn encode_field(name: &HeaderName, value: &HeaderValue, out: &mut BytesMut) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The request on its way out: the encoded head, then the body as it comes.
struct Outgoing {
    /// Encoded and not yet written, in order.
    queue: VecDeque<Bytes>,
    /// `None` once it has ended.
    body: Option<Body>,
    framing: Framing,
    /// For a body framed by length: what it may still yield.
    remaining: u64,
    /// Bytes the socket has taken.
    written: u64,
}

impl Outgoing {
    fn new(head: Bytes, body: Body, framing: Framing) -> Outgoing {
        let mut queue = VecDeque::with_capacity(4);
        queue.push_back(head);
        let (body, remaining) = match framing {
            Framing::Empty => (None, 0),
            Framing::Length(n) => (Some(body), n),
            Framing::Chunked | Framing::UntilClose => (Some(body), 0),
        };
        Outgoing { queue, body, framing, remaining, written: 0 }
    }

    /// Writes what is queued and takes more from the body, until all of it
    /// is written and flushed, or the socket or the body has to wait.
    fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            while !self.queue.is_empty() {
                self.written += ready!(write_queue(io, cx, &mut self.queue))? as u64;
            }
            let Some(body) = self.body.as_mut() else {
                return Pin::new(io).poll_flush(cx).map_err(Error::Io);
            };
            let frame = match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    // What is written may sit in a TLS buffer: out with it
                    // before waiting for the client.
                    ready!(Pin::new(io).poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(frame) => frame,
            };
            match frame {
                None => {
                    self.body = None;
                    match self.framing {
                        Framing::Chunked => self.queue.push_back(Bytes::from_static(b"0\r\n\r\n")),
                        _ if self.remaining > 0 => return Poll::Ready(Err(Error::RequestBodyLength)),
                        _ => {}
                    }
                }
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(Error::RequestBody(e)));
                }
                // Request trailers are not forwarded: the `Trailer` field
                // that would announce them is hop-by-hop, and removed.
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    if self.framing == Framing::Chunked {
                        let mut line = BytesMut::with_capacity(18);
                        push_hex(&mut line, data.len());
                        line.extend_from_slice(b"\r\n");
                        self.queue.push_back(line.freeze());
                        self.queue.push_back(data);
                        self.queue.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        // Never a byte past the declared end.
                        if data.len() as u64 > self.remaining {
                            self.body = None;
                            return Poll::Ready(Err(Error::RequestBodyLength));
                        }
                        self.remaining -= data.len() as u64;
                        self.queue.push_back(data);
                    }
                }
            }
        }
    }
}

fn push_hex(out: &mut BytesMut, n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// One write of the front of `queue` (gathered, when the transport can),
/// dropping what went out.
fn write_queue(io: &mut Io, cx: &mut Context<'_>, queue: &mut VecDeque<Bytes>) -> Poll<io::Result<usize>> {
    let n = if queue.len() > 1 && io.is_write_vectored() {
        let mut slices = [IoSlice::new(&[]); 8];
        let count = queue.len().min(slices.len());
        for (slice, bytes) in slices.iter_mut().zip(queue.iter()) {
            *slice = IoSlice::new(bytes);
        }
        ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
    } else {
        ready!(Pin::new(&mut *io).poll_write(cx, &queue[0]))?
    };
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    let mut left = n;
    while left > 0 {
        let Some(front) = queue.front_mut() else { break };
        if front.len() <= left {
            left -= front.len();
            queue.pop_front();
        } else {
            front.advance(left);
            left = 0;
        }
    }
    Poll::Ready(Ok(n))
}

/// A parsed response head and how its body is framed.
struct Parsed {
    parts: http::response::Parts,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head off the front of `buf`: `None` until it is
/// whole. Interim (1xx) responses are consumed and skipped, but for a
/// `101` to a request that asked to `upgrade`, which is the last head the
/// connection carries.
fn parse_head(buf: &mut BytesMut, method: &Method, upgrade: bool) -> Result<Option<Parsed>, Error> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut slots);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(Error::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("more than 100 header fields")),
            Err(e) => return Err(Error::Malformed(parse_error(e))),
        };
        if len > MAX_HEAD_BYTES {
            return Err(Error::HeadTooLarge);
        }
        let status = res.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(Error::Malformed("bad status code"))?;
        match status.as_u16() {
            101 if upgrade => {}
            // Only a WebSocket handshake asks to switch (any other
            // `Upgrade` is removed).
            101 => return Err(Error::Malformed("101 Switching Protocols, though no upgrade was asked for")),
            100..=199 => {
                buf.advance(len);
                if buf.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            _ => {}
        }
        let version = if res.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
        let reason = res.reason.filter(|r| Some(*r) != status.canonical_reason()).map(|r| r.as_bytes().to_vec());
        // Where each field is in `buf`, so that values can share it.
        let base = buf.as_ptr() as usize;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = res.headers.len();
        for (span, field) in spans.iter_mut().zip(res.headers.iter()) {
            // Within MAX_HEAD_BYTES, so a u32 holds them.
            let name = (field.name.as_ptr() as usize - base) as u32;
            let value = (field.value.as_ptr() as usize - base) as u32;
            *span = (name, name + field.name.len() as u32, value, value + field.value.len() as u32);
        }
        let bytes = buf.split_to(len).freeze();
        // With room for the two the gateway adds on the way back
        // (`X-Request-Id`, `Strict-Transport-Security`): a full map grows.
        let mut headers = HeaderMap::with_capacity(count + 2);
        for &(n0, n1, v0, v1) in &spans[..count] {
            let (n0, n1, v0, v1) = (n0 as usize, n1 as usize, v0 as usize, v1 as usize);
            let name = HeaderName::from_bytes(&bytes[n0..n1]).map_err(|_| Error::Malformed("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(v0..v1))
                .map_err(|_| Error::Malformed("bad header value"))?;
            headers.append(name, value);
        }
        let (framing, keep_alive) = if status == StatusCode::SWITCHING_PROTOCOLS {
            (Framing::Empty, false)
        } else {
            response_framing(status, version, method, &mut headers)?
        };
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        if let Some(reason) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
            parts.extensions.insert(reason);
        }
        return Ok(Some(Parsed { parts, framing, keep_alive }));
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "bad header name",
        httparse::Error::HeaderValue => "bad header value",
        httparse::Error::NewLine => "bad line ending",
        httparse::Error::Status => "bad status line",
        httparse::Error::Version => "bad HTTP version",
        _ => "bad head",
    }
}

/// RFC 9112 §6.3: how long the body of this response is, and whether the
/// connection can carry another exchange after it.
fn response_framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), Error> {
    let mut keep_alive = version == Version::HTTP_11 && !has_token(headers, &header::CONNECTION, "close");
    if version == Version::HTTP_10 {
        keep_alive = has_token(headers, &header::CONNECTION, "keep-alive");
    }
    if *method == Method::HEAD || matches!(status.as_u16(), 204 | 304) {
        // No body follows, whatever the length says; it is only relayed
        // (one value for a repeated one; a bad one as it came). But a 204
        // or 304 that declares a body comes from an upstream that may send
        // one anyway, later than the check before reuse can see: what it
        // sends would be read as the next exchange's answer, perhaps
        // another client's. Its connection carries nothing more.
        // (`Content-Length: 0` declares none, as Django sends with every
        // 204; a HEAD's answer always says how long the GET's would be.)
        let declares_body = *method != Method::HEAD
            && matches!(status.as_u16(), 204 | 304)
            && (headers.contains_key(header::TRANSFER_ENCODING)
                || headers.get_all(header::CONTENT_LENGTH).iter().any(|v| v.as_bytes() != b"0"));
        let _ = content_length(headers);
        return Ok((Framing::Empty, keep_alive && !declares_body));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Error::Malformed("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let mut codings = 0;
        let mut chunked_at = None;
        for value in headers.get_all(header::TRANSFER_ENCODING) {
            let value = value.to_str().map_err(|_| Error::Malformed("bad Transfer-Encoding"))?;
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if coding.eq_ignore_ascii_case("chunked") {
                    if chunked_at.is_some() {
                        return Err(Error::Malformed("chunked more than once"));
                    }
                    chunked_at = Some(codings);
                }
                codings += 1;
            }
        }
        // With a transfer coding, any Content-Length is wrong and must go
        // (§6.3 rule 3); the connection is not to be trusted after this.
        let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
        let keep_alive = keep_alive && !had_length;
        return match chunked_at {
            Some(at) if at + 1 == codings => Ok((Framing::Chunked, keep_alive)),
            Some(_) => Err(Error::Malformed("chunked is not the last transfer coding")),
            None => Ok((Framing::UntilClose, false)),
        };
    }
    match content_length(headers)? {
        Some(n) => Ok((Framing::Length(n), keep_alive)),
        None => Ok((Framing::UntilClose, false)),
    }
}

/// The one length the `Content-Length` fields give, if any. Repeated equal
/// values are accepted, and left as the one value they mean (§6.3 rule 5):
/// the next hop may be stricter.
fn content_length(headers: &mut HeaderMap) -> Result<Option<u64>, Error> {
    let (mut length, mut values) = (None, 0);
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or(Error::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
            values += 1;
        }
    }
    if let Some(n) = length.filter(|_| values > 1) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

/// `1*DIGIT`, without sign or spaces, that fits a u64.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A response body from an upstream.
pub struct ResponseBody {
    state: State,
}

enum State {
    /// All of it (or none), already read; its connection is back in the
    /// pool or closed.
    Complete(Option<Bytes>),
    /// Still on the connection.
    Streaming(Box<Streaming>),
}

struct Streaming {
    /// `None` once the connection went home or was dropped.
    conn: Option<Box<Connection>>,
    decoder: Decoder,
    /// What is left of the request, sent while the response comes.
    outgoing: Option<Outgoing>,
    keep_alive: bool,
    home: Option<Home>,
    /// Ends the exchange when its body stops moving: nothing read from the
    /// upstream and nothing of the request written for the route's timeout
    /// (within one to two of them) is an error, as nginx's
    /// `proxy_read_timeout` is.
    stall: Stall,
}

enum Decoder {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

/// How the response parser framed a response (see [`frame_for_fuzzing`]).
#[doc(hidden)]
#[derive(Debug, PartialEq, Eq)]
pub struct FramedForFuzzing {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The framing said where the body ends, and it ended there (not
    /// merely where the input did).
    pub ended: bool,
    /// Bytes after that end, which a connection must not be reused with.
    pub left_over: usize,
}

/// The response parser and body decoders as the fuzz targets (`fuzz/`)
/// and their corpora's replay in the suite (`tests/fuzz_corpora.rs`) drive
/// them: `wire` read as the answer to `method`, `step` bytes at a time, as
/// a connection would deliver it. `Ok(None)`: the head never completed.
/// Not an API: what it returns is whatever the properties need.
#[doc(hidden)]
pub fn frame_for_fuzzing(wire: &[u8], method: &Method, step: usize) -> Result<Option<FramedForFuzzing>, Error> {
    let fields = |map: &HeaderMap| map.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
    let mut pieces = wire.chunks(step.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(head) = parse_head(&mut buf, method, false)? {
            break head;
        }
        match pieces.next() {
            Some(piece) => buf.extend_from_slice(piece),
            None => return Ok(None),
        }
    };
    let mut decoder = match head.framing {
        Framing::Empty => Decoder::Done,
        Framing::Length(n) => Decoder::Length(n),
        Framing::Chunked => Decoder::Chunked(Chunked::Size),
        Framing::UntilClose => Decoder::UntilClose,
    };
    let (mut body, mut trailers) = (Vec::new(), Vec::new());
    let ended = loop {
        match decoder.decode(&mut buf)? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Trailers(t) => trailers = fields(&t),
            Decoded::End => break true,
            Decoded::Short => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => break false,
            },
        }
    };
    let left_over = buf.len() + pieces.map(<[u8]>::len).sum::<usize>();
    Ok(Some(FramedForFuzzing {
        status: head.parts.status.as_u16(),
        headers: fields(&head.parts.headers),
        body,
        trailers,
        ended,
        left_over,
    }))
}

/// Where a chunked decoder is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, with this many bytes left.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// At the trailer section (after the last chunk).
    Trailers,
}

/// What decoding what is buffered gave.
enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// More bytes are needed.
    Short,
    End,
}

impl Decoder {
    /// Decodes from the front of `buf`. After data, the framing that
    /// follows is consumed too if it is here, so a decoder that returns
    /// the last data is already `Done` when the end came with it (and the
    /// connection can go home without another read).
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Decoder::Done => Ok(Decoded::End),
            Decoder::UntilClose if buf.is_empty() => Ok(Decoded::Short),
            Decoder::UntilClose => Ok(Decoded::Data(buf.split().freeze())),
            Decoder::Length(0) => {
                *self = Decoder::Done;
                Ok(Decoded::End)
            }
            Decoder::Length(_) if buf.is_empty() => Ok(Decoded::Short),
            Decoder::Length(left) => {
                let take = (*left).min(buf.len() as u64);
                *left -= take;
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(Decoded::Data(buf.split_to(take as usize).freeze()))
            }
            Decoder::Chunked(state) => {
                let decoded = loop {
                    if let Chunked::Data(left) = *state {
                        if buf.is_empty() {
                            break Decoded::Short;
                        }
                        let take = left.min(buf.len() as u64);
                        *state = if take == left { Chunked::DataEnd } else { Chunked::Data(left - take) };
                        let data = buf.split_to(take as usize).freeze();
                        // Look ahead, trailers left for the next call; an
                        // error there is found again by that call.
                        if let Ok(Step::End) = skip_chunk_framing(state, buf, false) {
                            *self = Decoder::Done;
                        }
                        return Ok(Decoded::Data(data));
                    }
                    match skip_chunk_framing(state, buf, true)? {
                        Step::AtData => {}
                        Step::Short => break Decoded::Short,
                        Step::Trailers(trailers) => break Decoded::Trailers(trailers),
                        Step::End => break Decoded::End,
                    }
                };
                if matches!(decoded, Decoded::Trailers(_) | Decoded::End) {
                    *self = Decoder::Done;
                }
                Ok(decoded)
            }
        }
    }
}

/// Where consuming chunk framing stopped.
enum Step {
    /// At a chunk's data.
    AtData,
    /// The buffer ends before the framing does.
    Short,
    Trailers(HeaderMap),
    End,
}

/// Consumes chunk framing (the CRLF after data, size lines, the trailer
/// section) until data, the end, or the end of `buf`. Without
/// `trailers`, a non-empty trailer section is left where it is.
fn skip_chunk_framing(state: &mut Chunked, buf: &mut BytesMut, trailers: bool) -> Result<Step, Error> {
    loop {
        match *state {
            Chunked::Data(_) => return Ok(Step::AtData),
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::Short);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Size => match parse_chunk_size(buf)? {
                None => return Ok(Step::Short),
                Some((line, size)) => {
                    buf.advance(line);
                    *state = if size == 0 { Chunked::Trailers } else { Chunked::Data(size) };
                }
            },
            Chunked::Trailers if buf.starts_with(b"\r\n") => {
                buf.advance(2);
                return Ok(Step::End);
            }
            Chunked::Trailers if buf.len() < 2 || !trailers => return Ok(Step::Short),
            Chunked::Trailers => {
                let mut slots = [httparse::EMPTY_HEADER; 32];
                return match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut map = HeaderMap::with_capacity(fields.len());
                        for field in fields {
                            let name = HeaderName::from_bytes(field.name.as_bytes());
                            let value = HeaderValue::from_bytes(field.value);
                            if let (Ok(name), Ok(value)) = (name, value) {
                                map.append(name, value);
                            }
                        }
                        buf.advance(len);
                        Ok(Step::Trailers(map))
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILER_BYTES => {
                        Err(Error::Malformed("trailer section too large"))
                    }
                    Ok(httparse::Status::Partial) => Ok(Step::Short),
                    Err(_) => Err(Error::Malformed("bad trailer section")),
                };
            }
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF` (RFC 9112 §7.1.1): the line's length
/// and the size, or `None` if the line is not all here. Extensions are
/// skipped, but must be free of control characters; the size is one to
/// sixteen hex digits.
fn parse_chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, Error> {
    let bad = Error::Malformed("bad chunk size line");
    let Some(cr) = buf.iter().take(MAX_CHUNK_LINE).position(|b| *b == b'\r') else {
        return if buf.len() >= MAX_CHUNK_LINE { Err(bad) } else { Ok(None) };
    };
    if buf.len() < cr + 2 {
        return Ok(None);
    }
    if buf[cr + 1] != b'\n' {
        return Err(bad);
    }
    let line = &buf[..cr];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad);
    }
    let rest = &line[digits..];
    // BWS before an extension is spaces and tabs (RFC 9112 §7.1.1), not
    // the other ASCII whitespace (a bare LF, a form feed) that a lenient
    // peer might read as a line end.
    let ext = &rest[rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()..];
    if !(ext.is_empty() || ext[0] == b';') || ext.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(bad);
    }
    let size = line[..digits].iter().fold(0u64, |n, d| (n << 4) | u64::from(hex_value(*d)));
    Ok(Some((cr + 2, size)))
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

impl Streaming {
    /// The exchange ended cleanly: the connection goes home if it may
    /// carry another.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.keep_alive
            && self.outgoing.is_none()
            && conn.buf.is_empty()
            && let Some(home) = self.home.take()
        {
            home.put(conn);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(None) };
        if let Some(out) = self.outgoing.as_mut() {
            let written = out.written;
            let sent = out.poll_send(&mut conn.io, cx);
            if out.written != written {
                self.stall.moved();
            }
            match sent {
                Poll::Ready(Ok(())) => self.outgoing = None,
                // The answer is what matters now; the connection is done.
                Poll::Ready(Err(_)) => {
                    self.outgoing = None;
                    self.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let decoded = match self.decoder.decode(&mut conn.buf) {
                Ok(decoded) => decoded,
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match decoded {
                Decoded::Data(data) => {
                    if matches!(self.decoder, Decoder::Done) {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(trailers) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Decoded::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decoded::Short => {}
            }
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending if self.stall.stalled(cx) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Stalled(self.stall.after()))));
                }
                Poll::Pending => return Poll::Pending,
            };
            match filled {
                Ok(0) if matches!(self.decoder, Decoder::UntilClose) => {
                    self.decoder = Decoder::Done;
                    self.keep_alive = false;
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::ClosedInBody)));
                }
                Ok(_) => self.stall.moved(),
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
            }
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match &mut self.state {
            State::Complete(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            State::Streaming(streaming) => streaming.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Complete(body) => body.is_none(),
            State::Streaming(s) => s.conn.is_none() || matches!(s.decoder, Decoder::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Complete(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            State::Streaming(s) => match s.decoder {
                Decoder::Length(n) => SizeHint::with_exact(n),
                Decoder::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn parse(text: &str) -> Result<Option<Parsed>, Error> {
        parse_head(&mut BytesMut::from(text), &Method::GET, false)
    }

    fn parsed(text: &str) -> Parsed {
        parse(text).expect("a valid head").expect("a whole head")
    }

    fn malformed(text: &str) -> String {
        match parse(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text:?}"),
        }
    }

    #[test]
    fn a_response_is_framed_by_its_content_length_and_kept_alive() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello");
        let head = parse_head(&mut buf, &Method::GET, false).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(5), true));
        let values: Vec<_> = head.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"hello", "the body is left in the buffer");
        assert!(head.parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none());
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept() {
        let head = parsed("HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n");
        let reason = head.parts.extensions.get::<hyper::ext::ReasonPhrase>().expect("kept");
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
    }

    #[test]
    fn a_head_comes_whole_or_not_at_all() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Len").unwrap().is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nX-Big: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(parse(&huge), Err(Error::HeadTooLarge)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(malformed(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).contains("more than 100"));
    }

    #[test]
    fn a_101_to_an_upgrade_is_the_last_head_and_leaves_what_follows() {
        let text = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nContent-Length: 9\r\n\r\n\x81\x02hi";
        let mut buf = BytesMut::from(&text[..]);
        let head = parse_head(&mut buf, &Method::GET, true).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::SWITCHING_PROTOCOLS);
        // No length applies after a switch: the bytes are the new protocol's.
        assert_eq!((head.framing, head.keep_alive), (Framing::Empty, false));
        assert_eq!(&buf[..], b"\x81\x02hi");
        let mut interim = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\n\r\n");
        let head = parse_head(&mut interim, &Method::GET, true).unwrap().unwrap();
        assert_eq!(head.parts.status, StatusCode::SWITCHING_PROTOCOLS);
    }

    #[test]
    fn interim_responses_are_skipped_and_101_is_refused() {
        let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        assert!(parse_head(&mut buf, &Method::POST, false).unwrap().is_none(), "only interim heads so far");
        assert!(buf.is_empty(), "both consumed");
        buf.extend_from_slice(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(parse_head(&mut buf, &Method::POST, false).unwrap().unwrap().parts.status, StatusCode::CREATED);

        assert!(malformed("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n").contains("101"));
    }

    #[test]
    fn a_204_or_304_that_declares_a_body_ends_its_connection() {
        let keeps = |head: &str, method: &Method| {
            let mut buf = BytesMut::from(head);
            parse_head(&mut buf, method, false).expect("parses").expect("whole").keep_alive
        };
        for declared in ["Content-Length: 5\r\n", "Content-Length: 0, 5\r\n", "Transfer-Encoding: chunked\r\n"] {
            for status in ["204 No Content", "304 Not Modified"] {
                assert!(!keeps(&format!("HTTP/1.1 {status}\r\n{declared}\r\n"), &Method::GET), "{status} {declared}");
                // A HEAD's answer says how long the GET's would be.
                assert!(keeps(&format!("HTTP/1.1 {status}\r\n{declared}\r\n"), &Method::HEAD), "HEAD {status}");
            }
        }
        assert!(keeps("HTTP/1.1 204 No Content\r\n\r\n", &Method::GET));
        assert!(keeps("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", &Method::GET));
        assert!(keeps("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", &Method::GET));
        // A HEAD's answer says how long the GET's would be: nothing odd.
        assert!(keeps("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &Method::HEAD));
    }

    #[test]
    fn head_204_and_304_have_no_body_whatever_they_declare() {
        let head =
            parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), &Method::HEAD, false);
        assert_eq!(head.unwrap().unwrap().framing, Framing::Empty);
        for status in ["204 No Content", "304 Not Modified"] {
            // (And its connection goes: `a_204_or_304_that_declares_a_body_ends_its_connection`.)
            let head = parsed(&format!("HTTP/1.1 {status}\r\nContent-Length: 99\r\n\r\n"));
            assert_eq!((head.framing, head.keep_alive), (Framing::Empty, false), "{status}");
        }
    }

    #[test]
    fn transfer_codings_decide_before_content_length() {
        let head = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, true));

        // Both: chunked wins, the length goes, and the connection with it.
        let head = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, false));
        assert!(!head.parts.headers.contains_key(header::CONTENT_LENGTH));

        let head = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((head.framing, head.keep_alive), (Framing::UntilClose, false));

        assert!(malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").contains("last"));
        assert!(
            malformed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n")
                .contains("more than once")
        );
        assert!(malformed("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").contains("HTTP/1.0"));
    }

    #[test]
    fn a_content_length_must_be_one_plain_number() {
        for repeated in ["Content-Length: 5, 5\r\n", "Content-Length: 5\r\nContent-Length: 5\r\n"] {
            let head = parsed(&format!("HTTP/1.1 200 OK\r\n{repeated}\r\n"));
            assert_eq!(head.framing, Framing::Length(5), "{repeated:?}");
            // Relayed as the one value it means.
            let lengths: Vec<_> = head.parts.headers.get_all(header::CONTENT_LENGTH).iter().collect();
            assert_eq!(lengths, ["5"], "{repeated:?}");
        }
        let head = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(head.parts.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["5"]);
        // With no body (here a 304), the length is only relayed: one value too.
        let head = parsed("HTTP/1.1 304 Not Modified\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(head.framing, Framing::Empty);
        assert_eq!(head.parts.headers.get_all(header::CONTENT_LENGTH).iter().collect::<Vec<_>>(), ["5"]);
        for bad in ["5, 6", "+5", "-1", "0x5", "5 5", "", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(malformed(&text).contains("Content-Length"), "{bad:?}");
        }
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert!(malformed(text).contains("conflicting"));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let head = parsed("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((head.framing, head.keep_alive), (Framing::UntilClose, false), "no length: until close");
        assert!(!parsed("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!parsed("HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!parsed("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(parsed("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Decodes `wire` fed in pieces of `step` bytes: the data, the
    /// trailers, and whether the decoder reached the end.
    fn decode_chunked_in(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Error> {
        let mut decoder = Decoder::Chunked(Chunked::Size);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut pieces = wire.chunks(step);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, true)),
                Decoded::Short => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Ok((data, trailers, false)),
                },
            }
            if matches!(decoder, Decoder::Done) && buf.is_empty() && pieces.len() == 0 {
                return Ok((data, trailers, true));
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5\r\nhello\r\n6;name=value\r\n world\r\nA \t;x=1\r\n0123456789\r\n0\r\n\r\n";
        for step in 1..=wire.len() {
            let (data, trailers, ended) = decode_chunked_in(wire, step).expect("valid");
            assert_eq!(data, b"hello world0123456789", "step {step}");
            assert!(trailers.is_none() && ended, "step {step}");
        }
        let wire = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n";
        for step in 1..=wire.len() {
            let (data, trailers, ended) = decode_chunked_in(wire, step).expect("valid");
            assert_eq!(data, b"abc");
            let trailers = trailers.expect("trailers");
            assert_eq!((trailers["x-checksum"].as_bytes(), trailers.len(), ended), (&b"1"[..], 2, true));
        }
        let (_, _, ended) = decode_chunked_in(b"3\r\nabc\r\n", 4).expect("valid so far");
        assert!(!ended, "no last chunk yet");
    }

    #[test]
    fn the_end_of_a_chunked_body_is_seen_with_its_last_data() {
        let mut decoder = Decoder::Chunked(Chunked::Size);
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\n"[..]);
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::Data(d)) if d == "ok"));
        assert!(matches!(decoder, Decoder::Done), "no further read needed");
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_chunk_framing_is_refused() {
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
            b"5;\x01\r\nhello\r\n",
            b"5 x\r\nhello\r\n",
            b"-5\r\n",
            b"5\n\r\nhello\r\n",
            b"5\n;x\r\nhello\r\n",
            b"5\x0c;x\r\nhello\r\n",
        ] {
            assert!(decode_chunked_in(bad, bad.len()).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_line = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE]].concat();
        assert!(decode_chunked_in(&long_line, 512).is_err(), "an endless extension");
    }

    fn head_of(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().method(method).uri("/api/x?y=1");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).expect("request").into_parts().0
    }

    fn encoded(head: &Parts, body: &Body) -> String {
        let mut out = BytesMut::new();
        encode_head(head, &Added::default(), request_framing(body), &mut out);
        String::from_utf8(out.to_vec()).expect("ASCII")
    }

    #[test]
    fn the_gateway_alone_frames_what_it_sends() {
        let get = head_of(Method::GET, &[("host", "api"), ("x-a", "1"), ("x-a", "2")]);
        assert_eq!(
            encoded(&get, &crate::http::empty()),
            "GET /api/x?y=1 HTTP/1.1\r\nhost: api\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );

        let post = head_of(Method::POST, &[("host", "api")]);
        assert!(encoded(&post, &crate::http::empty()).ends_with("host: api\r\ncontent-length: 0\r\n\r\n"));

        // What the client said about framing is never copied.
        let lying = head_of(Method::PUT, &[("content-length", "999"), ("transfer-encoding", "chunked")]);
        let text = encoded(&lying, &crate::http::full("abc"));
        assert!(text.ends_with("HTTP/1.1\r\ncontent-length: 3\r\n\r\n"), "{text}");

        assert!(encoded(&post, &Frames::body(&["a"], None)).ends_with("transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn added_fields_follow_the_requests_own_and_its_host_comes_first() {
        let get = head_of(Method::GET, &[("x-a", "1"), ("host", "client.example")]);
        let added = Added {
            host: Some(HeaderValue::from_static("api.internal")),
            fields: vec![
                (&header::VIA, HeaderValue::from_static("1.1 gw")),
                (&header::FROM, HeaderValue::from_static("b")),
            ],
        };
        let mut out = BytesMut::new();
        encode_head(&get, &added, Framing::Empty, &mut out);
        assert_eq!(
            String::from_utf8(out.to_vec()).expect("ASCII"),
            "GET /api/x?y=1 HTTP/1.1\r\nhost: api.internal\r\nx-a: 1\r\nvia: 1.1 gw\r\nfrom: b\r\n\r\n"
        );
    }

    /// A body of frames that come one at a time, claiming `length`.
    pub struct Frames {
        frames: VecDeque<Bytes>,
        length: Option<u64>,
    }

    impl Frames {
        pub fn body(frames: &[&'static str], length: Option<u64>) -> Body {
            let frames = frames.iter().map(|f| Bytes::from_static(f.as_bytes())).collect();
            Frames { frames, length }.boxed_unsync()
        }
    }

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.frames.pop_front().map(|f| Ok(Frame::data(f))))
        }

        fn size_hint(&self) -> SizeHint {
            self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }
}

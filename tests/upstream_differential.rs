//! The gateway's own HTTP/1.1 client (`portcullis::upstream::pool`)
//! against hyper's, over the same scripted upstream answers: valid ones,
//! and the shapes response splitting and desynchronisation are made of
//! (lengths that disagree, chunking, trailers, interim responses, bodies
//! where none may be, bytes after the end). For each answer:
//!
//! - either both clients frame it alike (status, body and trailers), or
//!   the gateway's refuses it where hyper's may accept it; the gateway's
//!   never accepts what it frames differently;
//! - a valid answer is framed, not refused (a client that refused
//!   everything would pass the first rule);
//! - the request after it, on the same client, gets its own answer: no
//!   byte of one answer is ever read as part of the next, whether the
//!   connection was kept or not.
//!
//! The scripted upstream answers its first request with the case's bytes
//! verbatim and every later one with [`NEXT`]. Where the two differ, it
//! is the gateway's client refusing: `chunked` twice or not last, and a
//! `101` to a request that did not ask to upgrade. Where both frame an
//! answer that is not well formed, they frame it alike: `Content-Length`
//! with `chunked` is chunked (RFC 9112 §6.3; the gateway's client then
//! closes the connection), a `204` or `304` has no body whatever it
//! declares, and bytes past an answer's end are not its body.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use portcullis::upstream::http1::Added;
use portcullis::upstream::pool::{Pool, Target};
use support::tcp;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// The answer to every request after the first.
const NEXT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext";
/// How long an exchange may take before it counts as refused.
const BOUND: Duration = Duration::from_secs(3);

struct Case {
    name: &'static str,
    method: Method,
    answer: &'static [u8],
    /// The upstream closes the connection after the answer.
    close: bool,
    /// A well-formed answer, which both clients must frame.
    valid: bool,
}

const fn case(name: &'static str, answer: &'static [u8], close: bool, valid: bool) -> Case {
    Case { name, method: Method::GET, answer, close, valid }
}

const fn head(name: &'static str, answer: &'static [u8], valid: bool) -> Case {
    Case { name, method: Method::HEAD, answer, close: false, valid }
}

const CASES: &[Case] = &[
    // Well-formed framing.
    case("content-length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false, true),
    case("chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false, true),
    case(
        "chunked with extensions",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n0;last\r\n\r\n",
        false,
        true,
    ),
    case(
        "chunked with trailers",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n",
        false,
        true,
    ),
    case("close-delimited", b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", true, true),
    case("HTTP/1.0 close-delimited", b"HTTP/1.0 200 OK\r\n\r\nuntil the end", true, true),
    case(
        "HTTP/1.0 keep-alive",
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello",
        false,
        true,
    ),
    case("interim 100 first", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false, true),
    case(
        "interim 103 with fields",
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        false,
        true,
    ),
    case("no reason phrase", b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok", false, true),
    case("empty body", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false, true),
    case("204", b"HTTP/1.1 204 No Content\r\n\r\n", false, true),
    case("304", b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n", false, true),
    head("HEAD with a length", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true),
    head("HEAD chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", true),
    case("a large chunk size in hex", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", false, true),
    // Bodies where none may be, and bytes past the end.
    case("204 declaring a body", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", false, false),
    case("204 sending a body", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello", false, false),
    case("304 sending a body", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\nhello", false, false),
    head("HEAD answered with a body", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
    case("longer than its length", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged", false, false),
    case(
        "bytes after the last chunk",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
        false,
        false,
    ),
    case("shorter than its length", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", true, false),
    case("chunked cut short", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel", true, false),
    // Lengths and codings that disagree.
    case(
        "content-length and chunked",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
        false,
    ),
    case("two lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nhello", false, false),
    case("a list of lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 2\r\n\r\nhello", false, false),
    case("a repeated length", b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello", false, false),
    case("a signed length", b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello", false, false),
    case("a negative length", b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nhello", false, false),
    case("a length past u64", b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\nhello", false, false),
    case("chunked twice", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", false, false),
    case("chunked not last", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nhello", true, false),
    case("an unknown coding", b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\nhello", true, false),
    case("a chunk size past u64", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n", true, false),
    case("a chunk size with junk", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n", true, false),
    case("a chunk without its CRLF", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloX0\r\n\r\n", true, false),
    // Heads that parsers read differently.
    case("a space before the colon", b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok", true, false),
    case("a folded field", b"HTTP/1.1 200 OK\r\nx-a: 1\r\n  folded\r\ncontent-length: 2\r\n\r\nok", true, false),
    case("bare LF line ends", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", false, false),
    case("a NUL in a value", b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok", true, false),
    case("not HTTP", b"SSH-2.0-OpenSSH_9.2\r\n", true, false),
    case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true, false),
    case("a three-digit status too long", b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok", true, false),
    case("an unasked 101", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\nraw bytes", true, false),
];

/// What a client made of an answer.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Framed { status: u16, body: Bytes, trailers: Vec<(String, String)> },
    Refused,
}

fn framed(status: u16, body: Bytes, trailers: Option<&HeaderMap>) -> Outcome {
    let trailers = trailers
        .map(|t| t.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect())
        .unwrap_or_default();
    Outcome::Framed { status, body, trailers }
}

/// An upstream that answers its first request with `answer` (closing
/// after it if `close`) and every later one with [`NEXT`].
async fn scripted(answer: &'static [u8], close: bool) -> SocketAddr {
    // The first request is the first connection's: each client opens one
    // and sends the case's request on it.
    let (addr, _) = tcp::serve(move |mut stream, n| async move {
        let mut buf = Vec::new();
        let mut first = n == 0;
        while tcp::read_head(&mut stream, &mut buf).await {
            if std::mem::take(&mut first) {
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                if close {
                    let _ = stream.shutdown().await;
                    return;
                }
            } else if stream.write_all(NEXT).await.is_err() {
                return;
            }
        }
    })
    .await;
    addr
}

fn request(method: Method) -> Request<portcullis::http::Body> {
    let mut req = Request::new(portcullis::http::empty());
    *req.method_mut() = method;
    *req.uri_mut() = http::Uri::from_static("/");
    req
}

/// The case's exchange and the next one, through the gateway's client.
async fn through_ours(case: &Case) -> (Outcome, Outcome) {
    let addr = scripted(case.answer, case.close).await;
    let pool = Pool::new();
    let target = Target::new(Scheme::HTTP, addr.to_string().parse().expect("authority"), None);
    let exchange = |method: Method| {
        let (pool, target) = (&pool, &target);
        async move {
            let added = Added { host: Some(target.host.clone()), fields: Vec::new() };
            let outcome = async {
                let res = pool.send(target, request(method), &added, Instant::now(), BOUND).await.ok()?;
                let status = res.status().as_u16();
                let collected = res.into_body().collect().await.ok()?;
                let trailers = collected.trailers().cloned();
                Some(framed(status, collected.to_bytes(), trailers.as_ref()))
            };
            tokio::time::timeout(BOUND, outcome).await.ok().flatten().unwrap_or(Outcome::Refused)
        }
    };
    let first = exchange(case.method.clone()).await;
    let next = exchange(Method::GET).await;
    (first, next)
}

/// The case's exchange through hyper's client (on a connection of its own).
async fn through_hyper(case: &Case) -> Outcome {
    let addr = scripted(case.answer, case.close).await;
    let outcome = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(connection);
        let req = Request::builder()
            .method(case.method.clone())
            .uri("/")
            .header("host", addr.to_string())
            .body(Empty::<Bytes>::new())
            .ok()?;
        let res = sender.send_request(req).await.ok()?;
        let status = res.status().as_u16();
        let collected = res.into_body().collect().await.ok()?;
        let trailers = collected.trailers().cloned();
        Some(framed(status, collected.to_bytes(), trailers.as_ref()))
    };
    tokio::time::timeout(BOUND, outcome).await.ok().flatten().unwrap_or(Outcome::Refused)
}

#[tokio::test]
async fn the_gateways_client_frames_every_answer_as_hyper_does_or_refuses_it_and_never_desyncs() {
    let next = framed(200, Bytes::from_static(b"next"), None);
    let mut table = Vec::new();
    for case in CASES {
        let ((ours, ours_next), theirs) = tokio::join!(through_ours(case), through_hyper(case));
        if ours != Outcome::Refused {
            assert_eq!(ours, theirs, "{}: the gateway's client framed it, and differently from hyper's", case.name);
        }
        if case.valid {
            assert_ne!(ours, Outcome::Refused, "{}: a valid answer is framed", case.name);
        }
        assert_eq!(ours_next, next, "{}: the request after it got its own answer", case.name);
        let verdict = |o: &Outcome| if *o == Outcome::Refused { "refused" } else { "framed" };
        table.push(format!("{:<32} ours {:<8} hyper {}", case.name, verdict(&ours), verdict(&theirs)));
    }
    eprintln!("{}", table.join("\n"));
}

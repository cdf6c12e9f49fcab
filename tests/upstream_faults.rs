//! Upstreams that fail in the ways real ones do, one fault per
//! connection: each is answered `502` or `504` within the route's timeout
//! (or, once a response has started, ends that response), its connection
//! is never used again, and the gateway's workers go on serving everyone
//! else meanwhile.
//!
//! The faulty upstream gives its first connection the fault and answers
//! every later one properly, so the request after a fault shows whether
//! the gateway took a new connection for it.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::{Gateway, Upstream, config_toml, get, tcp};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What the upstream does to its first connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Reads the request and never answers.
    Hang,
    /// Sends the head one byte a second.
    TrickleHead,
    /// Sends a head and half its body, then resets the connection.
    ResetMidBody,
    /// Sends something that is not HTTP.
    Garbage,
    /// Sends a head larger than any the gateway reads (64 KiB).
    EnormousHead,
    /// Closes the connection without a word.
    HangUp,
}

const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood";

/// An upstream that gives its first connection `fault` and answers every
/// request on the others with [`GOOD`]; and how many connections it took.
async fn faulty(fault: Fault) -> (SocketAddr, Arc<AtomicUsize>) {
    tcp::serve(move |stream, n| async move {
        if n == 0 {
            misbehave(stream, fault).await;
        } else {
            answer_well(stream).await;
        }
    })
    .await
}

async fn answer_well(mut stream: TcpStream) {
    let mut buf = Vec::new();
    while tcp::read_head(&mut stream, &mut buf).await {
        if stream.write_all(GOOD).await.is_err() {
            return;
        }
    }
}

async fn misbehave(mut stream: TcpStream, fault: Fault) {
    if !tcp::read_head(&mut stream, &mut Vec::new()).await {
        return;
    }
    match fault {
        Fault::Hang => {
            // Holds the connection open until the gateway lets go of it.
            let _ = stream.read(&mut [0u8; 1]).await;
        }
        Fault::TrickleHead => {
            for byte in GOOD {
                if stream.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Fault::ResetMidBody => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf of it").await;
            let _ = stream.flush().await;
            // Linger 0: the close is a reset, not an orderly end.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        }
        Fault::Garbage => {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
            let _ = stream.read(&mut [0u8; 1]).await;
        }
        Fault::EnormousHead => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            while head.len() < 80 * 1024 {
                head.extend_from_slice(
                    b"x-filler: 0123456789012345678901234567890123456789012345678901234567890123\r\n",
                );
            }
            let _ = stream.write_all(&head).await;
            let _ = stream.read(&mut [0u8; 1]).await;
        }
        Fault::HangUp => drop(stream),
    }
}

/// A gateway with a public route `/faulty/` to `faulty` (a 1 s timeout),
/// and its standard routes to a well-behaved `upstream`.
fn config(upstream: SocketAddr, faulty: SocketAddr) -> String {
    config_toml(
        upstream,
        &format!(
            "\n[[routes]]\nname = \"faulty\"\npath_prefix = \"/faulty/\"\nupstream = \"http://{faulty}\"\ntimeout = \"1s\"\npublic = true\n"
        ),
    )
}

/// A raw request on a connection of its own, and everything the gateway
/// sent back before it closed the connection or `within` passed.
async fn raw_exchange(gw: &Gateway, path: &str, within: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(gw.public).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", gw.public);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut got)).await;
    got
}

#[tokio::test]
async fn each_fault_is_a_502_or_504_in_bounded_time_on_a_connection_never_used_again() {
    let upstream = Upstream::start().await;
    for (fault, status) in [
        (Fault::Hang, StatusCode::GATEWAY_TIMEOUT),
        (Fault::TrickleHead, StatusCode::GATEWAY_TIMEOUT),
        (Fault::Garbage, StatusCode::BAD_GATEWAY),
        (Fault::EnormousHead, StatusCode::BAD_GATEWAY),
        (Fault::HangUp, StatusCode::BAD_GATEWAY),
    ] {
        let (addr, connections) = faulty(fault).await;
        let gw = Gateway::start(&config(upstream.addr, addr)).await;
        // The fault, and meanwhile another route's requests: a worker
        // waiting on a faulty upstream is not a worker lost.
        let started = Instant::now();
        let faulty_url = gw.url("/faulty/x");
        let faulted = get(&faulty_url, &[]);
        let others = async {
            for _ in 0..5 {
                let reply = get(&gw.url("/public/x"), &[]).await;
                assert_eq!(reply.status, StatusCode::OK, "{fault:?}: another route while the fault lasts");
            }
            started.elapsed()
        };
        let (reply, others_took) = tokio::join!(faulted, others);
        let took = started.elapsed();
        assert_eq!(reply.status, status, "{fault:?}: {}", reply.text());
        // The route's timeout (1 s), and some slack for a loaded machine.
        assert!(took < Duration::from_secs(4), "{fault:?}: answered after {took:?}");
        assert!(others_took < Duration::from_secs(2), "{fault:?}: other requests waited {others_took:?}");

        // The next request gets a new connection, and a good answer.
        let reply = get(&gw.url("/faulty/y"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{fault:?}: the request after it");
        assert_eq!(reply.text(), "good");
        assert_eq!(connections.load(Ordering::SeqCst), 2, "{fault:?}: a new connection for the next request");
        gw.stop().await;
    }
}

/// A reset after the response has started cannot be a 502 any more: the
/// gateway closes the client's connection, so the response ends short of
/// its length, and never passes for a whole one. (When the reset comes
/// before hyper has flushed the head, the client gets nothing at all, as
/// an aborted exchange.) The upstream connection is not used again.
#[tokio::test]
async fn a_reset_mid_body_cuts_the_clients_response_short_and_is_not_reused() {
    let upstream = Upstream::start().await;
    let (addr, connections) = faulty(Fault::ResetMidBody).await;
    let gw = Gateway::start(&config(upstream.addr, addr)).await;
    let got = raw_exchange(&gw, "/faulty/x", Duration::from_secs(4)).await;
    let text = String::from_utf8_lossy(&got);
    if !got.is_empty() {
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.to_ascii_lowercase().contains("content-length: 100\r\n"), "{text}");
        let body = &got[got.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4..];
        assert!(body.len() < 100, "the body ends short of its length: {} bytes", body.len());
    }

    let reply = get(&gw.url("/faulty/y"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "good");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

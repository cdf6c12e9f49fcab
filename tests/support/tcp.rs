//! Raw TCP upstreams, for tests that script what an upstream does byte by
//! byte: a listener on a port of its own whose connections are counted and
//! each handed to the test's code, and the reading of one request head.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};

/// Listens on `127.0.0.1:0` and runs `serve` on each connection, with its
/// number (from 0, in the order they were accepted), on a task of its own;
/// returns the address and the count of connections accepted.
pub async fn serve<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, n));
        }
    });
    (addr, accepted)
}

/// Reads from `stream` into `buf` until it holds a whole request head, and
/// takes that head off its front (the tests' requests have no bodies);
/// `false` when the peer closed or failed first.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..at + 4);
            return true;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

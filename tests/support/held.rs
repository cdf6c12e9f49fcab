//! An HTTP/1.1 upstream that holds every request until the test releases
//! it, so a request can be caught in flight (drain on SIGTERM, shutdown
//! ordering). It reports each request head as soon as it has read it, and
//! answers `200 ok` with `Connection: close` once released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// How long a test waits for the held request to arrive.
const BOUND: Duration = Duration::from_secs(10);

pub struct HeldUpstream {
    pub addr: SocketAddr,
    heads: mpsc::UnboundedReceiver<String>,
    release: Arc<Semaphore>,
    task: JoinHandle<()>,
}

impl HeldUpstream {
    pub async fn start() -> HeldUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, heads) = mpsc::unbounded_channel();
        let release = Arc::new(Semaphore::new(0));
        let task = tokio::spawn({
            let release = release.clone();
            async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let (tx, release) = (tx.clone(), release.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                        if let Ok(permit) = release.acquire().await {
                            permit.forget();
                        }
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        });
        HeldUpstream { addr, heads, release, task }
    }

    /// The head of the next request that arrived (bounded wait).
    pub async fn next_head(&mut self) -> String {
        tokio::time::timeout(BOUND, self.heads.recv())
            .await
            .expect("the upstream received a request in time")
            .expect("upstream running")
    }

    /// Lets one held request have its answer.
    pub fn release_one(&self) {
        self.release.add_permits(1);
    }
}

impl Drop for HeldUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

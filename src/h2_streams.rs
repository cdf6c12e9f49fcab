//! HTTP/2 streams that stop moving are reset, each on its own.
//!
//! hyper runs every HTTP/2 stream as a task of its own, spawned through the
//! executor it is given. [`StreamExecutor`] spawns it under watch: a stream
//! whose task is not woken for a whole window (a client that holds the
//! stream's flow-control window at zero, a request body that stopped
//! arriving) is dropped. hyper then resets the stream (`RST_STREAM`,
//! `CANCEL`) and what it held goes, the upstream connection with it, while
//! the connection and its other streams carry on.
//!
//! The connection-level rule in `server::serve_io` (a closing connection
//! that writes nothing for `keep_alive_timeout` is dropped) does not reach
//! these: a client that keeps its connection busy with fresh requests never
//! lets it close. Envoy's `stream_idle_timeout` is the model; the window
//! here is `keep_alive_timeout`, the same as the connection's.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

/// Spawns hyper's HTTP/2 stream tasks, each dropped once it has not moved
/// for `window`.
#[derive(Clone, Copy, Debug)]
pub struct StreamExecutor {
    window: Duration,
}

impl StreamExecutor {
    pub fn new(window: Duration) -> StreamExecutor {
        StreamExecutor { window }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(moving_or_dropped(stream, self.window));
    }
}

/// Runs `stream` until it ends, or until a whole `window` passes in which
/// it was never woken.
async fn moving_or_dropped<F: Future<Output = ()>>(stream: F, window: Duration) {
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::sleep(window);
    let mut deadline = std::pin::pin!(deadline);
    // Whether the stream was woken since the deadline was last set. The
    // deadline is looked at only when due, and moved once per window, not
    // on every wake-up (the same shape as the upstream body's stall timer).
    let mut moved = false;
    std::future::poll_fn(|cx| {
        // Before the deadline, only the stream can have woken this task.
        if !deadline.is_elapsed() {
            moved = true;
        }
        if stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        while deadline.as_mut().poll(cx).is_ready() {
            if !moved {
                tracing::debug!(?window, "reset an HTTP/2 stream that made no progress");
                return Poll::Ready(());
            }
            moved = false;
            deadline.as_mut().reset(tokio::time::Instant::now() + window);
        }
        Poll::Pending
    })
    .await
}

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
//! A stream that waits on its upstream (for the response head, or for more
//! of the body) is not stalled by the client: the route's `timeout` bounds
//! that wait, so such a stream says so ([`waiting_on_upstream`]) and the
//! window does not run meanwhile. The window is `server.stream_idle_timeout`
//! (Envoy's `stream_idle_timeout`, nginx's `send_timeout`), which can then be
//! much shorter than any route's timeout: a client that holds streams still
//! holds their upstream connections for that long at most.
//!
//! The connection-level rule in `server::serve_io` (a closing connection
//! that writes nothing for `keep_alive_timeout` is dropped) does not reach
//! these: a client that keeps its connection busy with fresh requests never
//! lets it close.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use crate::http::stall::Stall;

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
/// it was never woken (cut within one to two windows of its last wake-up).
async fn moving_or_dropped<F: Future<Output = ()>>(stream: F, window: Duration) {
    let mut stream = std::pin::pin!(stream);
    let mut stall = Stall::new(window);
    // The stream is polled with a waker of its own, which notes each
    // wake-up before passing it on: the timer's own wake-ups do not count,
    // however late this task gets to run.
    let watch =
        Arc::new(Watch { woken: AtomicBool::new(false), task: Mutex::new(None), upstream_waits: AtomicUsize::new(0) });
    let waker = Waker::from(watch.clone());
    std::future::poll_fn(|cx| {
        {
            let mut task = watch.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let polled = STREAM.sync_scope(watch.clone(), || stream.as_mut().poll(&mut Context::from_waker(&waker)));
        if polled.is_ready() {
            return Poll::Ready(());
        }
        // After the poll: a wake-up during it counts too, and so does a
        // wait on the upstream, which is the route timeout's to bound.
        if watch.woken.swap(false, Ordering::AcqRel) || watch.upstream_waits.load(Ordering::Acquire) > 0 {
            stall.moved();
        }
        if stall.stalled(cx) {
            tracing::debug!(?window, "reset an HTTP/2 stream that made no progress");
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await
}

tokio::task_local! {
    /// The watch of the HTTP/2 stream being polled, if any.
    static STREAM: Arc<Watch>;
}

/// Notes that the stream was woken, and wakes the task that runs it.
struct Watch {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
    /// Waits on the upstream in progress (see [`waiting_on_upstream`]).
    upstream_waits: AtomicUsize,
}

/// Says, while it lives, that the HTTP/2 stream which took it waits on its
/// upstream rather than on its client.
pub struct UpstreamWait(Arc<Watch>);

impl Drop for UpstreamWait {
    fn drop(&mut self) {
        self.0.upstream_waits.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks the HTTP/2 stream being polled as waiting on its upstream until
/// the guard is dropped; `None` outside one (HTTP/1.1 has no stream watch).
pub fn waiting_on_upstream() -> Option<UpstreamWait> {
    STREAM
        .try_with(|watch| {
            watch.upstream_waits.fetch_add(1, Ordering::AcqRel);
            UpstreamWait(watch.clone())
        })
        .ok()
}

impl Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

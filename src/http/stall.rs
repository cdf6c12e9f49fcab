//! Ending what stops moving: an upstream body that neither reads nor
//! writes (`upstream::http1`), an HTTP/2 stream never woken (`h2_streams`).
//!
//! Progress is only noted as it happens; the timer is looked at when it
//! fires, and moved then, once per window rather than at every step. So a
//! stall is seen between one and two windows after the last progress, and
//! a busy exchange pays one flag write per step.

use std::future::Future as _;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

pub struct Stall {
    after: Duration,
    /// Made the first time it is looked at: an exchange that never has to
    /// wait never has a timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    moved: bool,
}

impl Stall {
    pub fn new(after: Duration) -> Stall {
        Stall { after, timer: None, moved: false }
    }

    /// The window.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Notes progress since the timer was last looked at.
    pub fn moved(&mut self) {
        self.moved = true;
    }

    /// Whether a whole window passed with no progress, registering `cx` for
    /// when the next one would end.
    pub fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let after = self.after;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        while timer.as_mut().poll(cx).is_ready() {
            if !std::mem::take(&mut self.moved) {
                return true;
            }
            timer.as_mut().reset(tokio::time::Instant::now() + after);
        }
        false
    }
}

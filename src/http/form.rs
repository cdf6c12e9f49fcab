//! Request bodies the gateway reads whole itself (forms to the
//! authorization server and the login pages, a bearer token in a proxied
//! form): bounded in size, and in time, so that a client that declares a
//! body and then trickles it, or never sends it, cannot hold a connection
//! and its task (RFC 9112 §9.3 leaves the timing to the server; nginx's
//! `client_body_timeout` is the same idea).

use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;

use http::HeaderValue;

/// Whether a `Content-Type` names a form (`application/x-www-form-urlencoded`,
/// any case, parameters ignored).
pub fn is_form_urlencoded(ct: &HeaderValue) -> bool {
    ct.to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// How a form body is read.
#[derive(Debug, Clone, Copy)]
pub struct FormReader {
    /// `server.max_form_body_bytes`.
    max_bytes: usize,
    /// The whole body must come within this of the handler asking for it:
    /// `server.header_read_timeout`, the budget its head had.
    timeout: Duration,
}

/// Why a form body could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    TooLarge,
    TimedOut,
    /// The connection failed or broke the framing mid-body.
    Unreadable,
}

impl FormReader {
    /// At most `max_bytes`, all of them within `timeout`.
    pub fn new(max_bytes: usize, timeout: Duration) -> FormReader {
        FormReader { max_bytes, timeout }
    }

    pub async fn read(&self, body: Incoming) -> Result<Bytes, FormError> {
        // A declared length over the bound is refused before a byte is read
        // (hyper's hint is the `Content-Length`; chunked bodies are counted
        // as they come).
        if body.size_hint().lower() > self.max_bytes as u64 {
            return Err(FormError::TooLarge);
        }
        match tokio::time::timeout(self.timeout, Limited::new(body, self.max_bytes).collect()).await {
            Err(_) => Err(FormError::TimedOut),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => Err(FormError::TooLarge),
            Ok(Err(_)) => Err(FormError::Unreadable),
        }
    }
}

//! Request ids and the access log.
//!
//! Every request gets an `X-Request-Id`: the client's when it sent a sane
//! one, a fresh random one otherwise. It goes upstream and back to the
//! client. The access log is one line per request (JSON or text, as the
//! rest of the log) on the `access` target, with the route, the
//! normalised path without its query, status, durations, upstream and the
//! identity the token proved; never the token, never the query.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore as _;

use crate::tokens::Identity;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the gateway learnt about a request, for the access log. It
/// borrows the route's names from the configuration the request ran on.
#[derive(Debug, Clone, Default)]
pub struct AccessInfo<'a> {
    pub route: Option<&'a str>,
    /// The normalised path (no query).
    pub path: Option<String>,
    pub upstream: Option<&'a str>,
    pub upstream_time: Option<Duration>,
    /// Whom the token named (the worker's copy, not a new one).
    pub identity: Option<Arc<Identity>>,
}

/// A client's id is kept if it is 1 to 128 characters of a conservative
/// set (so it can go into logs and headers as is); otherwise a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(v), None) = (sent.next(), sent.next()) {
        let b = v.as_bytes();
        if (1..=128).contains(&b.len())
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'='))
        {
            return v.clone();
        }
    }
    let mut bytes = [0u8; 16];
    // A thread-local CSPRNG: ids must not collide, and need not be secret.
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut hex = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
        hex[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 0xf)];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Whether access lines are written at all: with the access target
/// filtered out (a `warn` level), a request copies nothing for the log.
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// One access log line. The caller checks [`enabled`] first, before it
/// copies anything for the line.
#[allow(clippy::too_many_arguments)]
pub fn log(
    request_id: &HeaderValue,
    method: &http::Method,
    raw_path: &str,
    status: http::StatusCode,
    duration: Duration,
    info: &AccessInfo<'_>,
) {
    tracing::info!(
        target: "access",
        request_id = request_id.to_str().unwrap_or(""),
        method = method.as_str(),
        path = info.path.as_deref().unwrap_or(raw_path),
        status = status.as_u16(),
        duration_ms = duration.as_secs_f64() * 1000.0,
        route = info.route.unwrap_or("(none)"),
        upstream = info.upstream.unwrap_or(""),
        upstream_ms = info.upstream_time.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        client_id = info.identity.as_deref().map_or("", |i| i.client_id.as_str()),
        subject = info.identity.as_deref().map_or("", |i| i.subject.as_str()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&h));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        assert_eq!(request_id(&h).len(), 32);
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}

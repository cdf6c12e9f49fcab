//! HTTP vocabulary every room shares, and nothing above it: the `Body`
//! type of every response, the helpers that build the JSON answers the
//! gateway makes itself, request-path normalisation (`path`), trusted
//! proxies and the client's address (`net`), form bodies read under a
//! deadline (`form`), the timers that end connections and HTTP/2
//! streams that stop moving (`stall`, `h2_streams`), and the frames of
//! the WebSockets the gateway relays (`websocket`), and what it reads of
//! gRPC calls (`grpc`).
//!
//! This room imports no other room of the crate. Which error becomes which
//! response is decided by each adapter (`gateway::refusal`,
//! `web::endpoints`, `web`, `server::admin`), each in one place, with these
//! helpers.

pub mod form;
pub mod grpc;
pub mod h2_streams;
pub mod net;
pub mod path;
pub mod stall;
pub mod websocket;

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether a comma-separated field (`Connection`, `Upgrade`) names
/// `token`, in any letter case.
pub fn has_token(headers: &http::HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
}

/// The body type of every response the public listener sends.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e: Infallible| match e {}).boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with `Cache-Control: no-store`.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `{"error": code, "error_description": description}`.
pub fn error_json(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": code, "error_description": description }).to_string())
}

/// A `503` that tells the client to come back in a second.
pub fn try_again_shortly(description: &str) -> Response<Body> {
    let mut res = error_json(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description);
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

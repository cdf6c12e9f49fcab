//! The built-in demo API (`upstream = "static://"`), which lets the
//! README's story run with no other process.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::auth::tokens::Identity;
use crate::http::{Body, full};

/// The built-in demo API (`upstream = "static://"`): answers with what the
/// gateway established, so the whole story runs with no other process.
pub(super) fn static_demo(req: &Request<Body>, path_and_query: &str, identity: Option<&Identity>) -> Response<Body> {
    let body = serde_json::json!({
        "service": "portcullis static demo upstream",
        "method": req.method().as_str(),
        "path": path_and_query,
        "subject": identity.map(|i| i.subject.as_str()),
        "client_id": identity.map(|i| i.client_id.as_str()),
        "scope": identity.map(|i| i.scopes.to_string()),
    });
    let mut res = Response::new(full(Bytes::from(body.to_string())));
    *res.status_mut() = StatusCode::OK;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

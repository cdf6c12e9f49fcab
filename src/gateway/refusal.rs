//! The one place a refusal of the public listener becomes a response:
//! status, headers (the RFC 6750 challenge, `Allow`, `Retry-After`) and a
//! short JSON body. No internal detail reaches a client.

use http::{HeaderValue, Response, StatusCode, header};

use crate::auth::bearer::{BearerError, ChallengeError, challenge};
use crate::auth::tokens::Rejection;
use crate::http::{Body, error_json, json, try_again_shortly};
use crate::proxy::ForwardError;
use crate::scope::ScopeSet;
use crate::telemetry::metrics::Outcome;

/// Why the gateway answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    /// The route does not allow the method; `Allow` lists those it does.
    MethodNotAllowed(HeaderValue),
    BadRequest(&'static str),
    /// The host the request names is not one this gateway serves
    /// (`server.allowed_hosts`).
    MisdirectedRequest,
    /// A WebSocket handshake on a route with `websockets = false`.
    UpgradeForbidden,
    PayloadTooLarge,
    /// A `Transfer-Encoding` with a coding other than `chunked`.
    UnsupportedTransferCoding,
    /// A body the gateway reads itself did not come in time (`crate::http::form`).
    BodyTimeout,
    /// No bearer token at all (RFC 6750 §3.1: no error code).
    MissingToken,
    Bearer(BearerError),
    InvalidToken(Rejection),
    InsufficientScope(ScopeSet),
    UpstreamUnreachable,
    UpstreamTimeout,
    /// A gRPC call's deadline (`grpc-timeout`) passed before the upstream
    /// answered.
    DeadlineExceeded,
    /// No upstream exchange came free within the route's timeout
    /// (`server.max_upstream_exchanges`, and per connection).
    Busy,
    /// The store could not be asked; fail closed, and say it is temporary.
    Unavailable,
}

impl Refusal {
    pub fn outcome(&self) -> Outcome {
        match self {
            Refusal::NotFound => Outcome::NotFound,
            Refusal::MethodNotAllowed(_) => Outcome::MethodNotAllowed,
            Refusal::BadRequest(_)
            | Refusal::MisdirectedRequest
            | Refusal::UpgradeForbidden
            | Refusal::PayloadTooLarge
            | Refusal::UnsupportedTransferCoding
            | Refusal::BodyTimeout
            | Refusal::Bearer(_) => Outcome::InvalidRequest,
            Refusal::MissingToken => Outcome::MissingToken,
            Refusal::InvalidToken(_) => Outcome::InvalidToken,
            Refusal::InsufficientScope(_) => Outcome::InsufficientScope,
            Refusal::UpstreamUnreachable => Outcome::UpstreamError,
            Refusal::UpstreamTimeout | Refusal::DeadlineExceeded => Outcome::UpstreamTimeout,
            Refusal::Unavailable | Refusal::Busy => Outcome::Unavailable,
        }
    }

    /// The `reason` label of `portcullis_denials_total`, for refusals that
    /// are bearer-enforcement decisions.
    pub fn denial_reason(&self) -> Option<&'static str> {
        match self {
            Refusal::MissingToken => Some("missing_token"),
            Refusal::Bearer(_) => Some("invalid_request"),
            Refusal::InvalidToken(Rejection::Expired) => Some("expired"),
            Refusal::InvalidToken(Rejection::Revoked) => Some("revoked"),
            Refusal::InvalidToken(_) => Some("invalid_token"),
            Refusal::InsufficientScope(_) => Some("insufficient_scope"),
            _ => None,
        }
    }

    /// What the refusal says: the JSON `error_description`, gRPC's
    /// `grpc-message`.
    pub fn description(&self) -> &'static str {
        match self {
            Refusal::NotFound => "No route matches this path",
            Refusal::MethodNotAllowed(_) => "This route does not allow the method",
            Refusal::BadRequest(description) => description,
            Refusal::MisdirectedRequest => "This gateway does not serve the host the request names",
            Refusal::UpgradeForbidden => "This route does not accept WebSocket connections",
            Refusal::PayloadTooLarge => "The request body is larger than this gateway accepts",
            Refusal::UnsupportedTransferCoding => "The only transfer coding this gateway implements is chunked",
            Refusal::BodyTimeout => "The request body did not arrive in time",
            Refusal::MissingToken => "This route requires a bearer access token",
            Refusal::Bearer(e) => e.description(),
            Refusal::InvalidToken(r) => r.description(),
            Refusal::InsufficientScope(_) => "The access token does not grant the scope this request needs",
            Refusal::UpstreamUnreachable => "The upstream service could not be reached",
            Refusal::UpstreamTimeout => "The upstream service did not answer in time",
            Refusal::DeadlineExceeded => "The upstream service did not answer before the call's deadline",
            Refusal::Busy => {
                "The gateway has as many requests in progress to its upstreams as it allows; try again shortly"
            }
            Refusal::Unavailable => "The gateway cannot validate tokens right now; try again shortly",
        }
    }

    /// The response. `realm` names the protection space in challenges.
    pub fn into_response(self, realm: &str) -> Response<Body> {
        let description = self.description();
        let bearer = |status, code: ChallengeError, scope: Option<&ScopeSet>| {
            let mut res = error_json(status, code.code(), description);
            res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge(realm, Some((code, description)), scope));
            res
        };
        match self {
            Refusal::NotFound => error_json(StatusCode::NOT_FOUND, "not_found", description),
            Refusal::MethodNotAllowed(allow) => {
                let mut res = error_json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", description);
                res.headers_mut().insert(header::ALLOW, allow);
                res
            }
            Refusal::BadRequest(_) => error_json(StatusCode::BAD_REQUEST, "invalid_request", description),
            Refusal::MisdirectedRequest => {
                error_json(StatusCode::MISDIRECTED_REQUEST, "misdirected_request", description)
            }
            Refusal::UpgradeForbidden => error_json(StatusCode::FORBIDDEN, "forbidden", description),
            Refusal::PayloadTooLarge => error_json(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", description),
            Refusal::UnsupportedTransferCoding => {
                error_json(StatusCode::NOT_IMPLEMENTED, "not_implemented", description)
            }
            Refusal::BodyTimeout => error_json(StatusCode::REQUEST_TIMEOUT, "invalid_request", description),
            Refusal::MissingToken => {
                let mut res = json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error_description":"This route requires a bearer access token"}"#,
                );
                res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge(realm, None, None));
                res
            }
            Refusal::Bearer(_) => bearer(StatusCode::BAD_REQUEST, ChallengeError::InvalidRequest, None),
            Refusal::InvalidToken(_) => bearer(StatusCode::UNAUTHORIZED, ChallengeError::InvalidToken, None),
            Refusal::InsufficientScope(scope) => {
                bearer(StatusCode::FORBIDDEN, ChallengeError::InsufficientScope, Some(&scope))
            }
            Refusal::UpstreamUnreachable => error_json(StatusCode::BAD_GATEWAY, "bad_gateway", description),
            Refusal::UpstreamTimeout | Refusal::DeadlineExceeded => {
                error_json(StatusCode::GATEWAY_TIMEOUT, "gateway_timeout", description)
            }
            Refusal::Busy | Refusal::Unavailable => try_again_shortly(description),
        }
    }

    /// The response to a gRPC client (HTTP/2, `content-type: application/grpc…`),
    /// which reads a status from trailers, not from HTTP: `200` with
    /// `grpc-status` and `grpc-message` in the headers and no body (the
    /// protocol's Trailers-Only form), the status the gRPC mapping of the
    /// HTTP one gives (401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404
    /// UNIMPLEMENTED, 502/503/504 UNAVAILABLE…), and the same
    /// `WWW-Authenticate`, `Allow` and `Retry-After`.
    pub fn into_grpc_response(self, realm: &str) -> Response<Body> {
        let description = self.description();
        let deadline = self == Refusal::DeadlineExceeded;
        let http = self.into_response(realm);
        let code: u16 = match http.status().as_u16() {
            _ if deadline => 4, // DEADLINE_EXCEEDED
            400 | 413 => 3,     // INVALID_ARGUMENT
            401 => 16,          // UNAUTHENTICATED
            403 => 7,           // PERMISSION_DENIED
            404 | 405 => 12,    // UNIMPLEMENTED
            408 => 4,           // DEADLINE_EXCEEDED
            421 => 9,           // FAILED_PRECONDITION
            502..=504 => 14,    // UNAVAILABLE
            _ => 2,             // UNKNOWN
        };
        let mut res = Response::new(crate::http::empty());
        for name in [header::WWW_AUTHENTICATE, header::ALLOW, header::RETRY_AFTER] {
            if let Some(value) = http.headers().get(&name) {
                res.headers_mut().insert(name, value.clone());
            }
        }
        let headers = res.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_str(&grpc_message(description)) {
            headers.insert("grpc-message", message);
        }
        res
    }
}

/// `text` as `grpc-message` carries it: percent-encoded outside printable
/// ASCII, and `%` itself (the gRPC HTTP/2 protocol's rule).
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl From<ForwardError> for Refusal {
    fn from(e: ForwardError) -> Refusal {
        match e {
            ForwardError::BadTarget => Refusal::BadRequest("The request target cannot be forwarded"),
            ForwardError::Busy => Refusal::Busy,
            ForwardError::Timeout => Refusal::UpstreamTimeout,
            ForwardError::Unreachable => Refusal::UpstreamUnreachable,
            ForwardError::ClientBody => Refusal::BadRequest("The request body could not be read"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(grpc_message("100% sure, caf\u{e9}\n"), "100%25 sure, caf%C3%A9%0A");
    }

    #[test]
    fn a_deadline_is_deadline_exceeded_to_grpc_and_504_to_http() {
        let res = Refusal::DeadlineExceeded.into_grpc_response("r");
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(Refusal::DeadlineExceeded.into_response("r").status(), StatusCode::GATEWAY_TIMEOUT);
    }
}

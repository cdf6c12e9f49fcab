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
    PayloadTooLarge,
    /// A body the gateway reads itself did not come in time (`crate::http::form`).
    BodyTimeout,
    /// No bearer token at all (RFC 6750 §3.1: no error code).
    MissingToken,
    Bearer(BearerError),
    InvalidToken(Rejection),
    InsufficientScope(ScopeSet),
    UpstreamUnreachable,
    UpstreamTimeout,
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
            | Refusal::PayloadTooLarge
            | Refusal::BodyTimeout
            | Refusal::Bearer(_) => Outcome::InvalidRequest,
            Refusal::MissingToken => Outcome::MissingToken,
            Refusal::InvalidToken(_) => Outcome::InvalidToken,
            Refusal::InsufficientScope(_) => Outcome::InsufficientScope,
            Refusal::UpstreamUnreachable => Outcome::UpstreamError,
            Refusal::UpstreamTimeout => Outcome::UpstreamTimeout,
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

    /// The response. `realm` names the protection space in challenges.
    pub fn into_response(self, realm: &str) -> Response<Body> {
        let bearer = |status, code: ChallengeError, description: &str, scope: Option<&ScopeSet>| {
            let mut res = error_json(status, code.code(), description);
            res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge(realm, Some((code, description)), scope));
            res
        };
        match self {
            Refusal::NotFound => error_json(StatusCode::NOT_FOUND, "not_found", "No route matches this path"),
            Refusal::MethodNotAllowed(allow) => {
                let mut res = error_json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "This route does not allow the method",
                );
                res.headers_mut().insert(header::ALLOW, allow);
                res
            }
            Refusal::BadRequest(description) => error_json(StatusCode::BAD_REQUEST, "invalid_request", description),
            Refusal::MisdirectedRequest => error_json(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_request",
                "This gateway does not serve the host the request names",
            ),
            Refusal::PayloadTooLarge => error_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "The request body is larger than this gateway accepts",
            ),
            Refusal::BodyTimeout => {
                error_json(StatusCode::REQUEST_TIMEOUT, "invalid_request", "The request body did not arrive in time")
            }
            Refusal::MissingToken => {
                let mut res = json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error_description":"This route requires a bearer access token"}"#,
                );
                res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge(realm, None, None));
                res
            }
            Refusal::Bearer(e) => {
                bearer(StatusCode::BAD_REQUEST, ChallengeError::InvalidRequest, e.description(), None)
            }
            Refusal::InvalidToken(r) => {
                bearer(StatusCode::UNAUTHORIZED, ChallengeError::InvalidToken, r.description(), None)
            }
            Refusal::InsufficientScope(scope) => bearer(
                StatusCode::FORBIDDEN,
                ChallengeError::InsufficientScope,
                "The access token does not grant the scope this request needs",
                Some(&scope),
            ),
            Refusal::UpstreamUnreachable => {
                error_json(StatusCode::BAD_GATEWAY, "bad_gateway", "The upstream service could not be reached")
            }
            Refusal::UpstreamTimeout => error_json(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "The upstream service did not answer in time",
            ),
            Refusal::Busy => try_again_shortly(
                "The gateway has as many requests in progress to its upstreams as it allows; try again shortly",
            ),
            Refusal::Unavailable => {
                try_again_shortly("The gateway cannot validate tokens right now; try again shortly")
            }
        }
    }
}

impl From<ForwardError> for Refusal {
    fn from(e: ForwardError) -> Refusal {
        match e {
            ForwardError::BadTarget => Refusal::BadRequest("The request target cannot be forwarded"),
            ForwardError::Busy => Refusal::Busy,
            ForwardError::Timeout => Refusal::UpstreamTimeout,
            ForwardError::Unreachable => Refusal::UpstreamUnreachable,
        }
    }
}

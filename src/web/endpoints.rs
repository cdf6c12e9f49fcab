//! HTTP adapter of the authorization server: maps requests on the token,
//! revocation, JWKS and metadata endpoints to `crate::oauth`, and its
//! results to RFC 6749 §5.1/§5.2 responses. Protocol decisions live in
//! `oauth`; this module only reads forms and writes JSON.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tracing::Instrument as _;

use std::net::IpAddr;

use crate::config::Config;
use crate::http::form::{FormError, FormReader, is_form_urlencoded};
use crate::http::{Body, error_json, json};
use crate::oauth::{AuthorizationServer, BasicCredentials, ClientAuth, ErrorCode, MalformedBasic, OAuthError, Params};
use crate::telemetry::metrics::Metrics;
use crate::web::Web;

pub use crate::config::endpoints::Endpoint;

pub struct AuthzEndpoints {
    server: Arc<AuthorizationServer>,
    web: Web,
    metrics: Arc<Metrics>,
    paths: [(String, Endpoint); 7],
    metadata: Bytes,
    form: FormReader,
    realm: String,
}

impl AuthzEndpoints {
    pub fn new(config: &Config, server: AuthorizationServer, metrics: Arc<Metrics>) -> AuthzEndpoints {
        let base = &config.authorization_server.issuer_path;
        let server = Arc::new(server);
        let web = Web::new(config, server.clone(), metrics.clone());
        let paths = Endpoint::ALL.map(|e| (e.path(base), e));
        let metadata = Bytes::from(server.metadata().to_string());
        let form = config.server.form_reader();
        let realm = config.server.realm.clone();
        AuthzEndpoints { server, web, metrics, paths, metadata, form, realm }
    }

    /// The authorization server behind the endpoints.
    pub fn server(&self) -> &Arc<AuthorizationServer> {
        &self.server
    }

    /// The endpoint at `path` (normalised), if any.
    pub fn endpoint(&self, path: &str) -> Option<Endpoint> {
        self.paths.iter().find(|(p, _)| p == path).map(|(_, e)| *e)
    }

    pub async fn handle(&self, endpoint: Endpoint, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        // Every audit event of the authorization server carries the peer and
        // the request id (the access log's, to join the two).
        let request_id = req.headers().get(&crate::telemetry::access::X_REQUEST_ID).and_then(|v| v.to_str().ok());
        let span = tracing::info_span!(target: crate::telemetry::audit::TARGET, "oauth", peer = %peer, request_id);
        self.serve(endpoint, req, peer).instrument(span).await
    }

    async fn serve(&self, endpoint: Endpoint, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        match endpoint {
            Endpoint::Authorize => self.web.authorize(req).await,
            Endpoint::Login => self.web.login(req, peer).await,
            Endpoint::Introspection => {
                let result = match self.read_form(req).await {
                    Ok((headers, params)) => {
                        self.server
                            .introspect(ClientAuth { basic: basic_credentials(&headers), from: peer }, &params)
                            .await
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(body) => json(StatusCode::OK, body.to_string()),
                    Err(e) => self.error_response(e),
                }
            }
            Endpoint::Jwks | Endpoint::Metadata => {
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    return method_not_allowed("GET, HEAD");
                }
                let body = if endpoint == Endpoint::Jwks { self.server.tokens.jwks() } else { self.metadata.clone() };
                let mut res = json(StatusCode::OK, body);
                res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
                res
            }
            Endpoint::Token => {
                let result = match self.read_form(req).await {
                    Ok((headers, params)) => {
                        self.server.token(ClientAuth { basic: basic_credentials(&headers), from: peer }, &params).await
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok((grant, token)) => {
                        self.metrics.tokens_issued.with_label_values(&[grant.as_str()]).inc();
                        self.metrics.token_requests.with_label_values(&["issued"]).inc();
                        let mut res = json(StatusCode::OK, serde_json::to_vec(&token).unwrap_or_default());
                        res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
                        res
                    }
                    Err(e) => {
                        self.metrics.token_requests.with_label_values(&[e.code.as_str()]).inc();
                        self.error_response(e)
                    }
                }
            }
            Endpoint::Revocation => {
                let result = match self.read_form(req).await {
                    Ok((headers, params)) => {
                        self.server.revoke(ClientAuth { basic: basic_credentials(&headers), from: peer }, &params).await
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        // RFC 7009 §2.2: the body is ignored; send none.
                        let mut res = Response::new(crate::http::empty());
                        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                        res
                    }
                    Err(e) => self.error_response(e),
                }
            }
        }
    }

    /// Reads a POSTed form body, bounded in size and time (`crate::http::form`).
    async fn read_form(&self, req: Request<Incoming>) -> Result<(HeaderMap, Params), OAuthError> {
        if req.method() != Method::POST {
            return Err(OAuthError::new(ErrorCode::InvalidRequest, "This endpoint accepts only POST"));
        }
        // RFC 6749 §2.3.1: credentials never travel in the request URI.
        if req.uri().query().is_some_and(|q| q.contains("client_secret")) {
            return Err(OAuthError::new(ErrorCode::InvalidRequest, "Client credentials must not be sent in the URL"));
        }
        if !req.headers().get(header::CONTENT_TYPE).is_some_and(is_form_urlencoded) {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "The request body must be application/x-www-form-urlencoded",
            ));
        }
        let (parts, body) = req.into_parts();
        let bytes = self.form.read(body).await.map_err(|e| {
            OAuthError::new(
                ErrorCode::InvalidRequest,
                match e {
                    FormError::TimedOut => "The request body did not arrive in time",
                    FormError::TooLarge | FormError::Unreadable => "The request body is too large or unreadable",
                },
            )
        })?;
        Ok((parts.headers, Params::parse(&bytes)?))
    }

    fn error_response(&self, e: OAuthError) -> Response<Body> {
        let status = match e.code {
            ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SlowDown => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut res = error_json(status, e.code.as_str(), e.description);
        res.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if e.code == ErrorCode::InvalidClient {
            // A 401 must carry a challenge (RFC 9110 §15.5.2); RFC 6749 §5.2
            // names the scheme the client tried, and Basic is the one we take.
            let challenge = format!("Basic realm=\"{}\"", self.realm);
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if e.code == ErrorCode::SlowDown {
            let retry = crate::oauth::clients::FAILURE_WINDOW.as_secs().to_string();
            if let Ok(v) = HeaderValue::from_str(&retry) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        res
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut res = error_json(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "Method not allowed");
    res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

/// `Authorization: Basic` client credentials (RFC 6749 §2.3.1: the id and
/// secret are form-urlencoded, then joined with `:` and base64-encoded).
/// `None` when the header is absent or another scheme; `Some(Err)` when it
/// is Basic but malformed.
fn basic_credentials(headers: &HeaderMap) -> Option<Result<BasicCredentials, MalformedBasic>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(Err(MalformedBasic));
    }
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    Some(BasicCredentials::parse(encoded.trim()))
}

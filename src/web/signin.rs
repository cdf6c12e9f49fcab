//! The authorization endpoint (RFC 6749 §4.1.1) with its login and
//! consent pages, server-rendered, no JavaScript.
//!
//! - The client and redirect URI are validated before anything else
//!   (`oauth::authorize::validate`); until then errors are pages, never
//!   redirects.
//! - Sessions are random cookies (`HttpOnly; SameSite=Lax`; `__Host-` and
//!   `Secure` under https) whose hash is stored, and a new one at every
//!   sign-in ends the one the browser came with; every POST carries a CSRF
//!   token (the session's, or before sign-in one bound to the login
//!   cookie by a key of the server's).
//! - Passwords are checked with argon2 on a blocking thread; an unknown
//!   user costs the same as a wrong password; repeated failures for one
//!   account or one address are refused for a while.
//! - Pages forbid framing, load nothing from elsewhere (a strict CSP whose
//!   only style is hashed), and send no referrer.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use subtle::ConstantTimeEq as _;

use super::pages::Pages;
use crate::auth::tokens::random_token;
use crate::config::endpoints::{
    Endpoint, HOST_LOGIN_COOKIE, HOST_SESSION_COOKIE, LOGIN_COOKIE, SESSION_COOKIE, cookie_path,
};
use crate::config::{Config, UserConfig};
use crate::http::form::{FormError, FormReader};
use crate::http::{Body, full};
use crate::oauth::authorize::{self, AuthorizationRequest, AuthorizeError, RawParams};
use crate::oauth::clients::verify_hash;
use crate::oauth::throttle::Throttle;
use crate::oauth::{AuthorizationServer, SessionRecord, StoreError};
use crate::telemetry::audit::{self, Event};
use crate::telemetry::metrics::Metrics;

/// Failed logins per account, and per client address, within
/// `LOGIN_WINDOW`, before further attempts are refused.
pub const MAX_LOGIN_FAILURES_PER_USER: u32 = 5;
pub const MAX_LOGIN_FAILURES_PER_ADDRESS: u32 = 20;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);

pub struct Web {
    server: Arc<AuthorizationServer>,
    pages: Pages,
    users: Vec<UserConfig>,
    scope_descriptions: std::collections::BTreeMap<String, String>,
    issuer: String,
    /// `{issuer path}/oauth/authorize` and `{issuer path}/oauth/login`.
    authorize_path: String,
    login_path: String,
    /// `{issuer path}/oauth` (or `/` for `__Host-` cookies): where the
    /// cookies are sent.
    cookie_path: String,
    secure_cookies: bool,
    /// The cookies' names (`__Host-` ones under https).
    session_cookie: &'static str,
    login_cookie: &'static str,
    /// `scheme://host[:port]` of the issuer, as browsers write `Origin`.
    issuer_origin: String,
    session_ttl: Duration,
    form: FormReader,
    metrics: Arc<Metrics>,
    user_failures: Throttle<String>,
    address_failures: Throttle<IpAddr>,
    dummy_hash: String,
}

/// A response header set for every page.
fn page_response(status: StatusCode, html: String, form_action: &str, style_hash: &str) -> Response<Body> {
    let mut res = Response::new(full(Bytes::from(html)));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    let csp = format!(
        "default-src 'none'; style-src '{style_hash}'; form-action 'self'{form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

fn see_other(location: &str) -> Response<Body> {
    let mut res = Response::new(crate::http::empty());
    *res.status_mut() = StatusCode::SEE_OTHER;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// The origin a redirect URI lands on, as a CSP source: a form whose
/// answer redirects there must be allowed to (Chromium applies
/// `form-action` to redirects).
fn csp_origin(uri: &str) -> String {
    let origin = match uri.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!(" {scheme}://{authority}")
        }
        None => uri.split_once(':').map_or_else(String::new, |(scheme, _)| format!(" {scheme}:")),
    };
    // Nothing that could end the directive or the header.
    origin.chars().filter(|c| !matches!(c, ';' | ',' | '\'' | '"') && !c.is_control()).collect()
}

/// A cookie's value from the `Cookie` headers, when it is there exactly
/// once. Two of one name means someone set a second (a page on the same
/// site can, for another path): neither is believed.
///
/// Bytes, not text: one cookie of another site's that is not ASCII (a
/// sibling domain can set one) must not hide the gateway's in the same
/// header. Ours are ASCII tokens; one that is not is not ours.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found =
        headers.get_all(header::COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')).filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        });
    let first = found.next()?;
    if found.next().is_some() {
        return None;
    }
    std::str::from_utf8(first).ok()
}

fn login_csrf(key: &[u8; 32], nonce: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"portcullis sign-in form\0");
    mac.update(nonce.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn ct_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Web {
    pub fn new(config: &Config, server: Arc<AuthorizationServer>, metrics: Arc<Metrics>) -> Web {
        let base = &config.authorization_server.issuer_path;
        let secure = config.authorization_server.secure_cookies;
        // Counted across the replicas that share the store.
        let user_failures = server.share(
            Throttle::new(MAX_LOGIN_FAILURES_PER_USER, LOGIN_WINDOW, 100_000),
            "login-user",
            String::clone,
        );
        let address_failures = server.share(
            Throttle::new(MAX_LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW, 100_000),
            "login-address",
            IpAddr::to_string,
        );
        Web {
            server,
            pages: Pages::new(),
            users: config.users.clone(),
            scope_descriptions: config.scope_descriptions.clone(),
            issuer: config.authorization_server.issuer.clone(),
            issuer_origin: {
                let issuer = &config.authorization_server.issuer;
                let after_scheme = issuer.find("://").map_or(0, |i| i + 3);
                let end = issuer[after_scheme..].find('/').map_or(issuer.len(), |i| after_scheme + i);
                issuer[..end].to_string()
            },
            authorize_path: Endpoint::Authorize.path(base),
            login_path: Endpoint::Login.path(base),
            cookie_path: if secure { "/".to_string() } else { cookie_path(base) },
            secure_cookies: secure,
            session_cookie: if secure { HOST_SESSION_COOKIE } else { SESSION_COOKIE },
            login_cookie: if secure { HOST_LOGIN_COOKIE } else { LOGIN_COOKIE },
            session_ttl: config.authorization_server.session_ttl,
            form: config.server.form_reader(),
            metrics,
            user_failures,
            address_failures,
            dummy_hash: crate::oauth::clients::hash_secret("portcullis-dummy-password").unwrap_or_default(),
        }
    }

    fn flow(&self, outcome: &str) {
        self.metrics.authorization_flow.with_label_values(&[outcome]).inc();
    }

    fn error_page(&self, status: StatusCode, title: &str, message: &str) -> Response<Body> {
        page_response(status, self.pages.error(title, message), "", self.pages.style_hash())
    }

    fn cookie_header(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let path = &self.cookie_path;
        let v = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
    }

    /// `GET` or `POST` on the authorization endpoint.
    pub async fn authorize(&self, req: Request<Incoming>) -> Response<Body> {
        match *req.method() {
            Method::GET => {
                let params = RawParams::parse(req.uri().query().unwrap_or("").as_bytes());
                let query = req.uri().query().unwrap_or("").to_string();
                self.show(req.headers(), &params, &query).await
            }
            Method::POST => self.decide(req).await,
            _ => {
                let mut res = self.error_page(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "Use GET or POST.");
                res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                res
            }
        }
    }

    async fn validate(&self, params: &RawParams) -> Result<AuthorizationRequest, Box<Response<Body>>> {
        // Look the client up first (it may live in the store), then let the
        // synchronous rules run.
        let client = match params.one("client_id") {
            Ok(Some(id)) => self.server.clients.get(id).await,
            _ => None,
        };
        authorize::validate(params, |_| client.clone()).map_err(|e| {
            Box::new(match e {
                AuthorizeError::Page(message) => {
                    tracing::info!(reason = message, "authorization request refused");
                    self.error_page(StatusCode::BAD_REQUEST, "This request cannot be served", message)
                }
                AuthorizeError::Redirect { redirect_uri, error, description, state } => self.back_to_client(
                    &redirect_uri,
                    &[("error", error), ("error_description", description)],
                    state.as_deref(),
                ),
            })
        })
    }

    /// Whether a form POST comes from a page of this site, as far as the
    /// browser tells: `Sec-Fetch-Site`, where sent, says `same-origin`, and
    /// `Origin`, unless `null`, is the issuer's or the host the request is
    /// for. A page on another port or subdomain of
    /// the same site could otherwise post a sign-in with its own
    /// credentials (login CSRF), cookies and token included; a client that
    /// sends neither header is no browser, and is left to the CSRF token.
    fn sent_from_here<B>(&self, req: &Request<B>) -> bool {
        let headers = req.headers();
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return false;
        }
        // `null`: the pages' `Referrer-Policy: no-referrer` makes browsers
        // send that with their own forms' POSTs; `Sec-Fetch-Site` has
        // spoken then, where the browser sends it.
        let Some(origin) = headers.get(header::ORIGIN).map(HeaderValue::as_bytes).filter(|o| *o != b"null") else {
            return true;
        };
        if origin.eq_ignore_ascii_case(self.issuer_origin.as_bytes()) {
            return true;
        }
        let host = headers
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or(req.uri().authority().map(|a| a.as_str().as_bytes()));
        let authority = origin.iter().position(|b| *b == b':').and_then(|colon| origin.get(colon + 3..));
        matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
    }

    fn not_from_here(&self) -> Response<Body> {
        tracing::warn!("a form posted from another site's page refused");
        self.error_page(StatusCode::FORBIDDEN, "Request refused", "The form was not sent by this site.")
    }

    /// The sign-in form's CSRF token for the login cookie `nonce`: bound to
    /// it and to this server's key, so only a pair the server made passes,
    /// never one an attacker chose (the double-submit check it replaces took
    /// any cookie and field that were equal). The key is derived from the
    /// signing key, so it is the same across reloads and on every replica.
    fn login_csrf(&self, nonce: &str) -> String {
        login_csrf(&self.server.tokens.form_keys()[0], nonce)
    }

    /// Whether `token` is the CSRF token for `nonce` under any form key
    /// still published: a form shown before a key rotation posts after it.
    fn login_csrf_matches(&self, token: &str, nonce: &str) -> bool {
        self.server.tokens.form_keys().iter().any(|key| ct_eq(token, &login_csrf(key, nonce)))
    }

    async fn session(&self, headers: &HeaderMap) -> Option<SessionRecord> {
        let value = cookie(headers, self.session_cookie)?;
        match self.server.session(value).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed");
                None
            }
        }
    }

    /// Shows the login page, the consent page, or (consent already given
    /// to a confidential client) redirects straight back with a code.
    async fn show(&self, headers: &HeaderMap, params: &RawParams, query: &str) -> Response<Body> {
        let request = match self.validate(params).await {
            Ok(r) => r,
            Err(res) => return *res,
        };
        let Some(session) = self.session(headers).await else {
            return self.login_page(&request, &format!("{}?{query}", self.authorize_path), None, "", StatusCode::OK);
        };
        let consented = match self.server.consent(&session.subject, &request.client.client_id).await {
            Ok(given) => given.is_some_and(|given| request.scopes.is_subset(&given)),
            Err(e) => return self.unavailable(e),
        };
        // A public client's identity cannot be assured (RFC 8252 §8.6,
        // RFC 6749 §10.2): anyone may send the browser here with its
        // client_id, a matching (loopback) redirect URI and a PKCE
        // challenge of their own. Without a page to answer, a remembered
        // consent would hand them a code; the user is asked every time.
        if consented && !request.client.public {
            self.flow("consent_remembered");
            return self.approve(&request, &session.subject).await;
        }
        self.consent_page(&request, params, &session)
    }

    fn login_page(
        &self,
        request: &AuthorizationRequest,
        return_to: &str,
        error: Option<&str>,
        username: &str,
        status: StatusCode,
    ) -> Response<Body> {
        let nonce = random_token();
        let csrf = self.login_csrf(&nonce);
        let html = self.pages.login(&request.client.name, &self.login_path, &csrf, return_to, error, username);
        let mut res = page_response(status, html, &csp_origin(&request.redirect_uri), self.pages.style_hash());
        res.headers_mut().append(header::SET_COOKIE, self.cookie_header(self.login_cookie, &nonce, 3600));
        res
    }

    fn consent_page(
        &self,
        request: &AuthorizationRequest,
        params: &RawParams,
        session: &SessionRecord,
    ) -> Response<Body> {
        let scopes: Vec<(String, String)> = request
            .scopes
            .iter()
            .map(|s| {
                let description = self.scope_descriptions.get(s).cloned().unwrap_or_else(|| format!("Use “{s}”"));
                (s.to_string(), description)
            })
            .collect();
        let fields: Vec<(String, String)> = params
            .pairs()
            .filter(|(k, _)| !matches!(*k, "csrf" | "decision"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let html = self.pages.consent(
            &request.client.name,
            &session.subject,
            &scopes,
            &self.authorize_path,
            &session.csrf_token,
            &fields,
        );
        page_response(StatusCode::OK, html, &csp_origin(&request.redirect_uri), self.pages.style_hash())
    }

    async fn approve(&self, request: &AuthorizationRequest, subject: &str) -> Response<Body> {
        let code = match self.server.issue_code(request, subject).await {
            Ok(c) => c,
            Err(e) => return self.unavailable(e),
        };
        tracing::info!(client_id = %request.client.client_id, subject = %subject, scope = %request.scopes, "authorization code issued");
        self.back_to_client(&request.redirect_uri, &[("code", &code)], request.state.as_deref())
    }

    /// The 303 back to the client's redirect URI with `params`, the
    /// unchanged `state`, and `iss` (RFC 9207: the client can tell which
    /// server answered).
    fn back_to_client(&self, redirect_uri: &str, params: &[(&str, &str)], state: Option<&str>) -> Response<Body> {
        let mut p = params.to_vec();
        if let Some(s) = state {
            p.push(("state", s));
        }
        p.push(("iss", &self.issuer));
        see_other(&authorize::redirect_with(redirect_uri, &p))
    }

    fn unavailable(&self, e: StoreError) -> Response<Body> {
        tracing::error!(error = %e, "authorization endpoint could not reach the store");
        self.error_page(StatusCode::SERVICE_UNAVAILABLE, "Try again shortly", "The service is temporarily unavailable.")
    }

    async fn read_form(&self, req: Request<Incoming>) -> Result<(HeaderMap, RawParams), Box<Response<Body>>> {
        if !req.headers().get(header::CONTENT_TYPE).is_some_and(crate::http::form::is_form_urlencoded) {
            return Err(Box::new(self.error_page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "Expected a form submission.",
            )));
        }
        let (parts, body) = req.into_parts();
        match self.form.read(body).await {
            Ok(b) => Ok((parts.headers, RawParams::parse(&b))),
            Err(FormError::TimedOut) => Err(Box::new(self.error_page(
                StatusCode::REQUEST_TIMEOUT,
                "Bad request",
                "The form did not arrive in time.",
            ))),
            Err(_) => {
                Err(Box::new(self.error_page(StatusCode::PAYLOAD_TOO_LARGE, "Bad request", "The form is too large.")))
            }
        }
    }

    /// The consent form's answer.
    async fn decide(&self, req: Request<Incoming>) -> Response<Body> {
        if !self.sent_from_here(&req) {
            return self.not_from_here();
        }
        let (headers, form) = match self.read_form(req).await {
            Ok(f) => f,
            Err(res) => return *res,
        };
        let request = match self.validate(&form).await {
            Ok(r) => r,
            Err(res) => return *res,
        };
        let Some(session) = self.session(&headers).await else {
            return self.error_page(
                StatusCode::BAD_REQUEST,
                "Your session ended",
                "Please go back to the application and start again.",
            );
        };
        let csrf_ok = form.one("csrf").ok().flatten().is_some_and(|t| ct_eq(t, &session.csrf_token));
        if !csrf_ok {
            tracing::warn!(subject = %session.subject, "consent form with a bad CSRF token refused");
            return self.error_page(
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form has expired or was not sent by this site.",
            );
        }
        match form.one("decision").ok().flatten() {
            Some("approve") => {
                if let Err(e) =
                    self.server.add_consent(&session.subject, &request.client.client_id, &request.scopes).await
                {
                    return self.unavailable(e);
                }
                let scope = request.scopes.to_string();
                audit::record(
                    Event::ConsentGranted,
                    audit::Fields {
                        client_id: Some(&request.client.client_id),
                        subject: Some(&session.subject),
                        scope: Some(&scope),
                        ..Default::default()
                    },
                );
                self.flow("consent_granted");
                self.approve(&request, &session.subject).await
            }
            Some("deny") => {
                audit::record(
                    Event::ConsentDenied,
                    audit::Fields {
                        client_id: Some(&request.client.client_id),
                        subject: Some(&session.subject),
                        ..Default::default()
                    },
                );
                self.flow("consent_denied");
                self.back_to_client(
                    &request.redirect_uri,
                    &[("error", "access_denied"), ("error_description", "The user denied the request")],
                    request.state.as_deref(),
                )
            }
            _ => self.error_page(StatusCode::BAD_REQUEST, "Bad request", "Choose Allow or Deny."),
        }
    }

    /// `POST` on the login endpoint.
    pub async fn login(&self, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
        if req.method() != Method::POST {
            let mut res = self.error_page(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "Use POST.");
            res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return res;
        }
        if !self.sent_from_here(&req) {
            return self.not_from_here();
        }
        let (headers, form) = match self.read_form(req).await {
            Ok(f) => f,
            Err(res) => return *res,
        };
        // SECURITY #14: go back only to this server's authorization endpoint.
        let return_to = form.one("return_to").ok().flatten().unwrap_or("");
        let Some(query) = return_to.strip_prefix(&format!("{}?", self.authorize_path)) else {
            return self.error_page(StatusCode::BAD_REQUEST, "Bad request", "The sign-in form is incomplete.");
        };
        let request = match self.validate(&RawParams::parse(query.as_bytes())).await {
            Ok(r) => r,
            Err(res) => return *res,
        };
        let csrf_ok = match (form.one("csrf").ok().flatten(), cookie(&headers, self.login_cookie)) {
            (Some(token), Some(nonce)) => self.login_csrf_matches(token, nonce),
            _ => false,
        };
        if !csrf_ok {
            tracing::warn!("sign-in form with a bad CSRF token refused");
            return self.error_page(
                StatusCode::FORBIDDEN,
                "Request refused",
                "The form has expired or was not sent by this site.",
            );
        }
        let username = form.one("username").ok().flatten().unwrap_or("");
        let password = form.one("password").ok().flatten().unwrap_or("");
        // One attempt at a time per account and per address
        // (`crate::oauth::throttle`): a burst of guesses gets no more tries than a
        // sequence would. Always the account first, so two attempts never
        // wait on each other.
        let user_attempt = self.user_failures.attempt(username.to_string()).await;
        let address_attempt = self.address_failures.attempt(peer).await;
        if self.user_failures.refuses(&user_attempt) || self.address_failures.refuses(&address_attempt) {
            self.flow("login_throttled");
            tracing::warn!(username = %username, %peer, "sign-in throttled after repeated failures");
            audit::record(
                Event::LoginThrottled,
                audit::Fields {
                    client_id: Some(&request.client.client_id),
                    subject: Some(username),
                    ..Default::default()
                },
            );
            let mut res = self.login_page(
                &request,
                return_to,
                Some("Too many failed sign-in attempts. Wait a few minutes and try again."),
                username,
                StatusCode::TOO_MANY_REQUESTS,
            );
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(LOGIN_WINDOW.as_secs()));
            return res;
        }
        if !self.check_password(username, password).await {
            user_attempt.failed().await;
            address_attempt.failed().await;
            self.flow("login_failed");
            audit::record(
                Event::LoginFailed,
                audit::Fields {
                    client_id: Some(&request.client.client_id),
                    subject: Some(username),
                    ..Default::default()
                },
            );
            return self.login_page(&request, return_to, Some("Wrong username or password."), username, StatusCode::OK);
        }
        drop((user_attempt, address_attempt));
        let replaced = cookie(&headers, self.session_cookie);
        let value = match self.server.sign_in(username, self.session_ttl, replaced).await {
            Ok(value) => value,
            Err(e) => return self.unavailable(e),
        };
        self.flow("login_succeeded");
        audit::record(
            Event::LoginSucceeded,
            audit::Fields { client_id: Some(&request.client.client_id), subject: Some(username), ..Default::default() },
        );
        // RFC 9700 §4.12: 303, so the browser does not re-POST credentials.
        let mut res = see_other(return_to);
        let h = res.headers_mut();
        h.append(header::SET_COOKIE, self.cookie_header(self.session_cookie, &value, self.session_ttl.as_secs()));
        h.append(header::SET_COOKIE, self.cookie_header(self.login_cookie, "", 0));
        res
    }

    /// Argon2 against the user's hash, or a dummy one for an unknown user,
    /// so both cost the same (no user enumeration by timing).
    async fn check_password(&self, username: &str, password: &str) -> bool {
        let user = self.users.iter().find(|u| u.username == username);
        let known = user.is_some();
        let hash = user.map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let password = password.to_string();
        let ok = tokio::task::spawn_blocking(move || verify_hash(&password, &hash)).await.unwrap_or(false);
        ok && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; portcullis_session_x=2; portcullis_session=3"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("3"));
        assert_eq!(cookie(&h, "b"), None);
        // Beside another site's cookie that is not text: still found.
        let mut other = HeaderMap::new();
        other.insert(header::COOKIE, HeaderValue::from_bytes(b"x=\xc3\xa9; portcullis_session=5").unwrap());
        assert_eq!(cookie(&other, SESSION_COOKIE), Some("5"));
        // Twice (one planted for a longer path): neither.
        h.append(header::COOKIE, HeaderValue::from_static("portcullis_session=4"));
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }

    #[test]
    fn csp_origins() {
        assert_eq!(csp_origin("https://app.example/cb?x=1"), " https://app.example");
        assert_eq!(csp_origin("http://127.0.0.1:3000/cb"), " http://127.0.0.1:3000");
        assert_eq!(csp_origin("com.example.app:/cb"), " com.example.app:");
    }
}

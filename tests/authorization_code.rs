//! The authorization code flow end to end over real sockets, the test acting
//! as both the browser (it follows redirects by hand, keeps its own cookie
//! jar, reads the server-rendered forms and posts them back) and the client
//! (token, refresh, introspection and revocation requests).
//!
//! Covered: the authorization endpoint (RFC 6749 §4.1.1/§4.1.2, OAuth 2.1
//! §4.1, RFC 9207 `iss`), login and consent pages (CSRF, framing, CSP,
//! cookies, throttling, no open redirect), PKCE (RFC 7636, S256 only, no
//! downgrade), the code grant (§4.1.3: single use, bound to client, redirect
//! URI and verifier; replay revokes the grant; atomic redemption), refresh
//! tokens (RFC 6749 §6, RFC 9700 §4.14.2 rotation and family revocation),
//! introspection (RFC 7662), revocation (RFC 7009), public clients, the
//! flow's metrics, and durability across a restart: the authorization-server
//! items of `SECURITY.md`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use portcullis::auth::clock::ManualClock;
use portcullis::config::Config;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use support::{APP_SECRET_HASH, Gateway, OTHER_SECRET_HASH, Reply, Upstream, config_toml, get, send};

const FORM: &str = "application/x-www-form-urlencoded";
const ISSUER: &str = "http://127.0.0.1:8080";
/// `ISSUER` as it appears in a redirect's query.
const ISS_ENCODED: &str = "http%3A%2F%2F127.0.0.1%3A8080";
const WEB_CB: &str = "https://web.example/cb";
const WEB_LOOPBACK_CB: &str = "http://127.0.0.1:3000/cb";
const SPA_CB: &str = "https://spa.example/cb";
const LEGACY_CB: &str = "https://legacy.example/cb";
const RW: &str = "calendar.read calendar.write";
const TTL_LINE: &str = "access_token_ttl = \"15m\"";

/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// Another well-formed verifier, not the one of `CHALLENGE`.
const OTHER_VERIFIER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// `portcullis hash-password` of "wonderland".
const ALICE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$o+SLnrzidWhAHTABsaKk5Q$KI7slupHmBsuX65OnHTgvmcEz2cllVK/efHCjjZDMhQ";
const ALICE_PASSWORD: &str = "wonderland";
/// `portcullis hash-password` of "builder".
const BOB_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$MvMxbKspJnhs0/dGWrvQiQ$fkSzK3EbgfrUHJPjDjTJ4T0UObrrKfB+XZxP28cUAWQ";
const BOB_PASSWORD: &str = "builder";

/// Users, scope descriptions and three authorization-code clients on top of
/// `support::config_toml`:
/// - `web` / `app-secret`: confidential, two redirect URIs (one loopback),
///   `calendar.read calendar.write`, refresh tokens;
/// - `spa`: public, one redirect URI, `calendar.read`, refresh tokens;
/// - `legacy` / `other-secret`: confidential, PKCE not required, no refresh
///   tokens.
fn extra() -> String {
    format!(
        r#"
[[users]]
username = "alice"
password_hash = "{ALICE_HASH}"

[[users]]
username = "bob"
password_hash = "{BOB_HASH}"

[[clients]]
client_id = "web"
name = "Calendar Web"
client_secret_hash = "{APP_SECRET_HASH}"
redirect_uris = ["{WEB_CB}", "{WEB_LOOPBACK_CB}"]
scopes = ["calendar.read", "calendar.write"]
grant_types = ["authorization_code", "refresh_token"]

[[clients]]
client_id = "spa"
name = "Calendar SPA"
public = true
redirect_uris = ["{SPA_CB}"]
scopes = ["calendar.read"]
grant_types = ["authorization_code", "refresh_token"]

[[clients]]
client_id = "legacy"
name = "Legacy Calendar"
client_secret_hash = "{OTHER_SECRET_HASH}"
redirect_uris = ["{LEGACY_CB}"]
scopes = ["calendar.read"]
grant_types = ["authorization_code"]
require_pkce = false

[scopes]
"calendar.read" = {{ description = "See your calendar events" }}
"#
    )
}

fn toml(upstream: &Upstream) -> String {
    config_toml(upstream.addr, &extra())
}

// ---------------------------------------------------------------------------
// Helpers: URLs, forms, HTML

/// A form body (or query) from pairs, properly encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `/oauth/authorize?` with `pairs` as its query.
fn authorize_url(pairs: &[(&str, &str)]) -> String {
    format!("/oauth/authorize?{}", form(pairs))
}

/// An authorization request of `web` for `WEB_CB` with PKCE, and `scope`
/// when given.
fn web_url(scope: Option<&str>, state: &str) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", WEB_CB),
        ("state", state),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    if let Some(s) = scope {
        pairs.push(("scope", s));
    }
    authorize_url(&pairs)
}

/// Undoes minijinja's HTML escaping.
fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The attributes of every `<tag ...>` in `html`, values unescaped (a
/// boolean attribute maps to "").
fn tags(html: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let end = after.find('>').expect("a closed tag");
        let mut text = &after[..end];
        let mut attrs = BTreeMap::new();
        loop {
            text = text.trim_start();
            if text.is_empty() {
                break;
            }
            let name_end = text.find(['=', ' ']).unwrap_or(text.len());
            let name = text[..name_end].to_string();
            text = &text[name_end..];
            if let Some(quoted) = text.strip_prefix("=\"") {
                let close = quoted.find('"').expect("a closed attribute value");
                attrs.insert(name, unescape(&quoted[..close]));
                text = &quoted[close + 1..];
            } else {
                attrs.insert(name, String::new());
            }
        }
        out.push(attrs);
        rest = &after[end..];
    }
    out
}

/// The hidden inputs of the page's form, in document order.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    tags(html, "input")
        .into_iter()
        .filter(|a| a.get("type").map(String::as_str) == Some("hidden"))
        .map(|a| (a["name"].clone(), a.get("value").cloned().unwrap_or_default()))
        .collect()
}

/// The one POST form's action.
fn form_action(html: &str) -> String {
    let forms = tags(html, "form");
    assert_eq!(forms.len(), 1, "one form: {html}");
    assert_eq!(forms[0]["method"], "post", "{html}");
    forms[0]["action"].clone()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    let mut found = fields.iter().filter(|(k, _)| k == name);
    let value = found.next().unwrap_or_else(|| panic!("no field {name} in {fields:?}"));
    assert!(found.next().is_none(), "{name} twice in {fields:?}");
    &value.1
}

/// The inline stylesheet's CSP hash source.
fn style_hash(html: &str) -> String {
    let style = html.split("<style>").nth(1).and_then(|s| s.split("</style>").next()).expect("an inline style");
    format!("'sha256-{}'", STANDARD.encode(Sha256::digest(style.as_bytes())))
}

/// The headers every login, consent and error page carries; `form_origin`
/// is the client origin its form may be answered with a redirect to.
fn assert_page_headers(reply: &Reply, form_origin: &str) {
    assert_eq!(reply.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    let html = reply.text();
    let csp = format!(
        "default-src 'none'; style-src {}; form-action 'self'{form_origin}; frame-ancestors 'none'; base-uri 'none'",
        style_hash(&html)
    );
    assert_eq!(reply.header("content-security-policy"), Some(csp.as_str()));
    // No CORS on the authorization endpoint, and nothing loaded from elsewhere.
    assert_eq!(reply.header("access-control-allow-origin"), None);
    for outside in ["<script", "<link", "<img", "<iframe", "<object", " src=", "url(", "@import"] {
        assert!(!html.contains(outside), "{outside} in {html}");
    }
}

/// A `400` (or `status`) HTML error page with `message`, and no redirect.
fn assert_error_page(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("location"), None);
    assert_eq!(reply.header("set-cookie"), None);
    assert_page_headers(reply, "");
    let html = reply.text();
    let shown = tags(&html, "p").iter().any(|p| p.get("role").map(String::as_str) == Some("alert"));
    assert!(shown, "{html}");
    assert!(unescape(&html).contains(message), "{message:?} not in {html}");
}

/// A parsed `Set-Cookie`: name, value and the attributes as a set.
fn set_cookies(reply: &Reply) -> Vec<(String, String, BTreeSet<String>)> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let v = v.to_str().expect("ASCII cookie");
            let mut parts = v.split(';').map(str::trim);
            let (name, value) = parts.next().and_then(|p| p.split_once('=')).expect("name=value");
            (name.to_string(), value.to_string(), parts.map(str::to_string).collect())
        })
        .collect()
}

fn attrs(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// The browser

/// A browser: one cookie jar, requests to one gateway, redirects followed
/// by hand.
struct Browser<'g> {
    gw: &'g Gateway,
    jar: BTreeMap<String, String>,
    /// The `X-Forwarded-For` a proxy in front adds for this browser.
    forwarded_for: Option<&'static str>,
}

impl<'g> Browser<'g> {
    fn new(gw: &'g Gateway) -> Self {
        Browser { gw, jar: BTreeMap::new(), forwarded_for: None }
    }

    /// A browser behind a proxy that names it as `address`.
    fn behind_proxy(gw: &'g Gateway, address: &'static str) -> Self {
        Browser { forwarded_for: Some(address), ..Browser::new(gw) }
    }

    fn cookie_header(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn absorb(&mut self, reply: &Reply) {
        for (name, value, attrs) in set_cookies(reply) {
            if value.is_empty() || attrs.iter().any(|a| a.eq_ignore_ascii_case("max-age=0")) {
                self.jar.remove(&name);
            } else {
                self.jar.insert(name, value);
            }
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.jar.get(name).map(String::as_str)
    }

    async fn get(&mut self, path: &str) -> Reply {
        let cookie = self.cookie_header();
        let mut headers = vec![("origin", "https://web.example")];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        headers.extend(self.forwarded_for.map(|a| ("x-forwarded-for", a)));
        let reply = get(&self.gw.url(path), &headers).await;
        self.absorb(&reply);
        reply
    }

    async fn post(&mut self, path: &str, fields: &[(String, String)]) -> Reply {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cookie = self.cookie_header();
        let mut headers = vec![("content-type", FORM)];
        if !cookie.is_empty() {
            headers.push(("cookie", cookie.as_str()));
        }
        headers.extend(self.forwarded_for.map(|a| ("x-forwarded-for", a)));
        let reply = send(Method::POST, &self.gw.url(path), &headers, form(&pairs)).await;
        self.absorb(&reply);
        reply
    }

    /// Fills in and submits the sign-in form of `page`.
    async fn submit_login(&mut self, page: &Reply, username: &str, password: &str) -> Reply {
        let html = page.text();
        let action = form_action(&html);
        let mut fields = hidden_fields(&html);
        fields.push(("username".into(), username.into()));
        fields.push(("password".into(), password.into()));
        self.post(&action, &fields).await
    }

    /// Opens `url` signed out, signs in, checks the 303 back to `url` and
    /// follows it; returns what `url` answers then.
    async fn sign_in(&mut self, url: &str, username: &str, password: &str) -> Reply {
        let page = self.get(url).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert!(page.text().contains("<h1>Sign in</h1>"), "{}", page.text());
        let reply = self.submit_login(&page, username, password).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
        assert_eq!(reply.header("location"), Some(url));
        assert!(self.cookie("portcullis_session").is_some());
        self.get(url).await
    }

    /// Answers the consent page `page` with `decision`.
    async fn decide(&mut self, page: &Reply, decision: &str) -> Reply {
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let html = page.text();
        assert!(html.contains("<h1>Allow "), "not a consent page: {html}");
        let action = form_action(&html);
        let mut fields = hidden_fields(&html);
        fields.push(("decision".into(), decision.into()));
        self.post(&action, &fields).await
    }

    /// From signed out, through sign-in and consent, to the code.
    async fn first_code(&mut self, url: &str, username: &str, password: &str, base: &str, state: &str) -> String {
        let consent = self.sign_in(url, username, password).await;
        let reply = self.decide(&consent, "approve").await;
        code_of(&reply, base, Some(state))
    }

    /// A code for `url` when consent is already on record.
    async fn code(&mut self, url: &str, base: &str, state: &str) -> String {
        let reply = self.get(url).await;
        code_of(&reply, base, Some(state))
    }
}

/// The query of a 303 to `base`, in order.
fn redirect_params(reply: &Reply, base: &str) -> Vec<(String, String)> {
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    let location = reply.header("location").expect("a Location");
    let query = location.strip_prefix(&format!("{base}?")).unwrap_or_else(|| panic!("{location} is not at {base}"));
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The code of a successful authorization response (RFC 6749 §4.1.2) with
/// exactly `state` and `iss` (RFC 9207).
fn code_of(reply: &Reply, base: &str, state: Option<&str>) -> String {
    let params = redirect_params(reply, base);
    let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    match state {
        Some(s) => {
            assert_eq!(names, ["code", "state", "iss"], "{params:?}");
            assert_eq!(params[1].1, s);
        }
        None => assert_eq!(names, ["code", "iss"], "{params:?}"),
    }
    assert_eq!(params.last().expect("iss").1, ISSUER);
    let code = params[0].1.clone();
    assert!(code.len() >= 22 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{code}");
    code
}

/// An error authorization response (RFC 6749 §4.1.2.1) with `state` and `iss`.
fn assert_error_redirect(reply: &Reply, base: &str, error: &str, state: Option<&str>) {
    let params = redirect_params(reply, base);
    let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    match state {
        Some(s) => {
            assert_eq!(names, ["error", "error_description", "state", "iss"], "{params:?}");
            assert_eq!(params[2].1, s);
        }
        None => assert_eq!(names, ["error", "error_description", "iss"], "{params:?}"),
    }
    assert_eq!(params[0].1, error, "{params:?}");
    assert!(!params[1].1.is_empty());
    assert_eq!(params.last().expect("iss").1, ISSUER);
}

// ---------------------------------------------------------------------------
// Helpers: the client side

/// `Authorization: Basic` (RFC 6749 §2.3.1).
fn basic(client_id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{}:{}", encode(client_id), encode(secret))))
}

fn web_auth() -> String {
    basic("web", "app-secret")
}

async fn post_form(gw: &Gateway, path: &str, auth: Option<&str>, pairs: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("content-type", FORM)];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    send(Method::POST, &gw.url(path), &headers, form(pairs)).await
}

/// The code grant for `web` as a well-behaved client sends it.
async fn redeem_web(gw: &Gateway, code: &str) -> Reply {
    let pairs =
        [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", WEB_CB), ("code_verifier", VERIFIER)];
    post_form(gw, "/oauth/token", Some(&web_auth()), &pairs).await
}

async fn refresh(gw: &Gateway, auth: Option<&str>, token: &str, extra: &[(&str, &str)]) -> Reply {
    let mut pairs = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
    pairs.extend_from_slice(extra);
    post_form(gw, "/oauth/token", auth, &pairs).await
}

/// Asserts an RFC 6749 §5.1 response with `scope` and a refresh token
/// exactly when `refreshable`; returns (access token, refresh token).
fn issued(reply: &Reply, scope: &str, refreshable: bool) -> (String, String) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    let body = reply.json();
    let keys: BTreeSet<&str> = body.as_object().expect("an object").keys().map(String::as_str).collect();
    let mut want = BTreeSet::from(["access_token", "expires_in", "scope", "token_type"]);
    if refreshable {
        want.insert("refresh_token");
    }
    assert_eq!(keys, want, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], scope, "{body}");
    let access = body["access_token"].as_str().expect("access_token").to_string();
    let refresh = body["refresh_token"].as_str().unwrap_or_default().to_string();
    if refreshable {
        assert!(refresh.len() >= 22 && refresh.is_ascii() && refresh != access, "{body}");
    }
    (access, refresh)
}

/// Asserts an RFC 6749 §5.2 error response.
fn assert_oauth_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    let body = reply.json();
    assert_eq!(body["error"], code, "{body}");
    assert!(body["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
}

fn assert_invalid_grant(reply: &Reply, description: &str) {
    assert_oauth_error(reply, StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(reply.json()["error_description"], description, "{}", reply.text());
}

/// How a refresh token of a revoked family may be refused: as used (the
/// revocation marks every refresh token of the grant used) or for its grant.
const DEAD_REFRESH: [&str; 2] =
    ["The refresh token was already used", "The grant behind this refresh token was revoked"];

fn assert_dead_refresh(reply: &Reply) {
    assert_oauth_error(reply, StatusCode::BAD_REQUEST, "invalid_grant");
    let description = reply.json()["error_description"].as_str().unwrap_or_default().to_string();
    assert!(DEAD_REFRESH.contains(&description.as_str()), "{}", reply.text());
}

/// What an access token of `web` says: a JWT's claims, or what
/// introspection tells `web` of an opaque token (the suites run with both
/// formats).
async fn claims(gw: &Gateway, token: &str) -> Value {
    if token.starts_with("pca_") {
        let reply = introspect(gw, Some(&web_auth()), token).await;
        assert_eq!(reply.json()["active"], true, "{}", reply.text());
        return reply.json();
    }
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

async fn call_calendar(gw: &Gateway, token: &str) -> Reply {
    get(&gw.url("/calendar/events"), &[("authorization", &format!("Bearer {token}"))]).await
}

/// The token gets through to the upstream as `subject`.
async fn assert_works(gw: &Gateway, upstream: &mut Upstream, token: &str, subject: &str) {
    let reply = call_calendar(gw, token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.headers["x-auth-subject"], subject);
}

/// The token is refused as revoked, and the upstream sees nothing.
async fn assert_revoked(gw: &Gateway, upstream: &mut Upstream, token: &str) {
    let reply = call_calendar(gw, token).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token was revoked\""
        )
    );
    assert!(upstream.saw_nothing());
}

async fn introspect(gw: &Gateway, auth: Option<&str>, token: &str) -> Reply {
    post_form(gw, "/oauth/introspect", auth, &[("token", token)]).await
}

/// The `web` client's tokens for alice, through a whole browser flow:
/// (access token, refresh token). Each call signs in afresh (a new grant);
/// consent is asked for only the first time.
async fn web_tokens(gw: &Gateway, scope: Option<&str>) -> (String, String) {
    let mut alice = Browser::new(gw);
    let reply = alice.sign_in(&web_url(scope, "s"), "alice", ALICE_PASSWORD).await;
    let reply = if reply.status == StatusCode::OK { alice.decide(&reply, "approve").await } else { reply };
    let code = code_of(&reply, WEB_CB, Some("s"));
    issued(&redeem_web(gw, &code).await, scope.unwrap_or(RW), true)
}

/// The lines of the Prometheus text at the admin `/metrics`.
async fn metrics(gw: &Gateway) -> BTreeSet<String> {
    let reply = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text().lines().map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// 1. The happy path

#[tokio::test]
async fn login_consent_code_and_tokens() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    // A state with everything that needs escaping in a URL and in HTML.
    let state = "s/1&x=y \"q\" <t> 'é'+%";
    let url = web_url(None, state);

    // The login page.
    let page = alice.get(&url).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_page_headers(&page, " https://web.example");
    let html = page.text();
    assert!(html.contains("<strong>Calendar Web</strong> wants to use your account."), "{html}");
    assert!(html.contains("<label for=\"username\">Username</label>"), "{html}");
    assert!(html.contains("<label for=\"password\">Password</label>"), "{html}");
    let inputs = tags(&html, "input");
    let username = inputs.iter().find(|a| a.get("name").map(String::as_str) == Some("username")).expect("username");
    assert_eq!((username["type"].as_str(), username["id"].as_str()), ("text", "username"));
    assert_eq!(username["autocomplete"], "username");
    let password = inputs.iter().find(|a| a.get("name").map(String::as_str) == Some("password")).expect("password");
    assert_eq!((password["type"].as_str(), password["id"].as_str()), ("password", "password"));
    assert_eq!(password["autocomplete"], "current-password");
    assert!(!password.contains_key("value"), "a password is never echoed");
    assert_eq!(form_action(&html), "/oauth/login");
    let fields = hidden_fields(&html);
    assert_eq!(fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["csrf", "return_to"]);
    assert_eq!(field(&fields, "return_to"), url, "the request comes back verbatim");
    let csrf = field(&fields, "csrf").to_string();
    assert!(csrf.len() >= 22, "{csrf}");
    let cookies = set_cookies(&page);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0].0, "portcullis_login");
    assert!(cookies[0].1.len() >= 22, "{cookies:?}");
    assert_ne!(cookies[0].1, csrf, "the form's token is bound to the cookie by the server's key, not a copy of it");
    assert_eq!(cookies[0].2, attrs(&["Path=/oauth", "HttpOnly", "SameSite=Lax", "Max-Age=3600"]));

    // Sign in: 303 (never 307) back to the request, with a session cookie.
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert_eq!(reply.header("location"), Some(url.as_str()));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let cookies = set_cookies(&reply);
    let session = cookies.iter().find(|c| c.0 == "portcullis_session").expect("a session cookie");
    assert!(session.1.len() >= 22, "{session:?}");
    // No `Secure`: the issuer is http://127.0.0.1 (a browser drops Secure
    // cookies over http); see `secure_cookies`.
    assert_eq!(session.2, attrs(&["Path=/oauth", "HttpOnly", "SameSite=Lax", "Max-Age=28800"]));
    let login = cookies.iter().find(|c| c.0 == "portcullis_login").expect("the login cookie is cleared");
    assert_eq!((login.1.as_str(), &login.2), ("", &attrs(&["Path=/oauth", "HttpOnly", "SameSite=Lax", "Max-Age=0"])));
    assert_eq!(cookies.len(), 2);

    // The consent page.
    let consent = alice.get(&url).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text());
    assert_page_headers(&consent, " https://web.example");
    assert_eq!(consent.header("set-cookie"), None);
    let html = consent.text();
    assert!(html.contains("<h1>Allow Calendar Web?</h1>"), "{html}");
    assert!(html.contains("Signed in as <strong>alice</strong>"), "{html}");
    assert!(html.contains("<li>See your calendar events <span class=\"scope-name\">(calendar.read)</span></li>"));
    // A scope without a configured description is still named.
    assert!(html.contains("<li>Use “calendar.write” <span class=\"scope-name\">(calendar.write)</span></li>"));
    let buttons = tags(&html, "button");
    let decisions: Vec<(&str, &str)> =
        buttons.iter().map(|b| (b["name"].as_str(), b["value"].as_str())).collect::<Vec<_>>();
    assert_eq!(decisions, [("decision", "approve"), ("decision", "deny")]);
    assert_eq!(form_action(&html), "/oauth/authorize");
    let fields = hidden_fields(&html);
    let carried: BTreeMap<&str, &str> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(carried.len(), fields.len(), "no field twice: {fields:?}");
    let csrf = carried["csrf"];
    assert!(csrf.len() >= 22);
    assert_eq!(
        carried,
        BTreeMap::from([
            ("client_id", "web"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("csrf", csrf),
            ("redirect_uri", WEB_CB),
            ("response_type", "code"),
            ("state", state),
        ])
    );

    // Approve: 303 to the client with the code, the exact state and iss.
    let reply = alice.decide(&consent, "approve").await;
    let code = code_of(&reply, WEB_CB, Some(state));
    assert_eq!(
        reply.header("location"),
        Some(format!("{WEB_CB}?code={}&state={}&iss={ISS_ENCODED}", encode(&code), encode(state)).as_str())
    );
    assert_eq!(reply.header("set-cookie"), None);

    // The client redeems it.
    let (access, refresh) = issued(&redeem_web(&gw, &code).await, RW, true);
    let c = claims(&gw, &access).await;
    assert_eq!((c["sub"].as_str(), c["client_id"].as_str()), (Some("alice"), Some("web")), "{c}");
    assert_eq!((c["iss"].as_str(), c["scope"].as_str()), (Some(ISSUER), Some(RW)), "{c}");
    assert!(refresh.starts_with("pcr_"), "{refresh}");

    // The token works on a route, as alice (a user's sub, not the client's).
    let reply = call_calendar(&gw, &access).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-client-id"], "web");
    assert_eq!(seen.headers["x-auth-scope"], RW);
    gw.stop().await;
}

/// The authorization endpoint and the sign-in form take only what they
/// serve.
#[tokio::test]
async fn endpoints_refuse_other_methods() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;

    let reply = send(Method::PUT, &gw.url(&web_url(None, "s")), &[], "").await;
    assert_error_page(&reply, StatusCode::METHOD_NOT_ALLOWED, "Use GET or POST.");
    assert_eq!(reply.header("allow"), Some("GET, POST"));
    let reply = get(&gw.url("/oauth/login"), &[]).await;
    assert_error_page(&reply, StatusCode::METHOD_NOT_ALLOWED, "Use POST.");
    assert_eq!(reply.header("allow"), Some("POST"));
    // A consent answer must be a form.
    let reply = send(Method::POST, &gw.url("/oauth/authorize"), &[("content-type", "application/json")], "{}").await;
    assert_error_page(&reply, StatusCode::BAD_REQUEST, "Expected a form submission.");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Consent is remembered, per user and per scope

#[tokio::test]
async fn consent_is_remembered_per_user_and_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);

    let read = web_url(Some("calendar.read"), "one");
    let consent = alice.sign_in(&read, "alice", ALICE_PASSWORD).await;
    assert!(!consent.text().contains("calendar.write"), "only what is asked: {}", consent.text());
    let first = code_of(&alice.decide(&consent, "approve").await, WEB_CB, Some("one"));

    // The same scope again: straight back with a new code, no page.
    let reply = alice.get(&web_url(Some("calendar.read"), "two")).await;
    let second = code_of(&reply, WEB_CB, Some("two"));
    assert_ne!(first, second);
    issued(&redeem_web(&gw, &second).await, "calendar.read", true);

    // More scope: asked again, for everything requested.
    let consent = alice.get(&web_url(None, "three")).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text());
    assert!(consent.text().contains("(calendar.write)"), "{}", consent.text());
    assert!(consent.text().contains("(calendar.read)"), "{}", consent.text());
    let code = code_of(&alice.decide(&consent, "approve").await, WEB_CB, Some("three"));
    issued(&redeem_web(&gw, &code).await, RW, true);

    // Now any subset goes straight through.
    for (scope, state) in [(Some("calendar.write"), "four"), (None, "five"), (Some("calendar.read"), "six")] {
        let code = alice.code(&web_url(scope, state), WEB_CB, state).await;
        issued(&redeem_web(&gw, &code).await, scope.unwrap_or(RW), true);
    }

    // Consent is alice's, not the browser's or the client's: bob is asked.
    let mut bob = Browser::new(&gw);
    let consent = bob.sign_in(&read, "bob", BOB_PASSWORD).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text());
    assert!(consent.text().contains("Signed in as <strong>bob</strong>"), "{}", consent.text());
    let code = code_of(&bob.decide(&consent, "approve").await, WEB_CB, Some("one"));
    let (access, _) = issued(&redeem_web(&gw, &code).await, "calendar.read", true);
    assert_eq!(claims(&gw, &access).await["sub"], "bob");
    // And alice's consent for web says nothing about spa.
    let spa = authorize_url(&[
        ("response_type", "code"),
        ("client_id", "spa"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let consent = alice.get(&spa).await;
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text());
    assert!(consent.text().contains("<h1>Allow Calendar SPA?</h1>"), "{}", consent.text());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Deny

#[tokio::test]
async fn denied_consent_sends_access_denied() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);

    let url = web_url(None, "xyz");
    let consent = alice.sign_in(&url, "alice", ALICE_PASSWORD).await;
    let reply = alice.decide(&consent, "deny").await;
    assert_error_redirect(&reply, WEB_CB, "access_denied", Some("xyz"));
    assert_eq!(
        reply.header("location"),
        Some(
            format!(
                "{WEB_CB}?error=access_denied&error_description=The+user+denied+the+request&state=xyz&iss={ISS_ENCODED}"
            )
            .as_str()
        )
    );

    // A denial is not remembered as consent: asked again next time.
    let again = alice.get(&url).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert!(again.text().contains("<h1>Allow Calendar Web?</h1>"));
    // Neither allow nor deny: refused, nothing issued.
    let mut fields = hidden_fields(&again.text());
    fields.push(("decision".into(), "maybe".into()));
    let reply = alice.post("/oauth/authorize", &fields).await;
    assert_error_page(&reply, StatusCode::BAD_REQUEST, "Choose Allow or Deny.");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Until the client and redirect URI are trusted, errors are pages

#[tokio::test]
async fn untrusted_client_or_redirect_uri_is_an_error_page_never_a_redirect() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    // Signed in, so that nothing below can be a login page.
    let consent = alice.sign_in(&web_url(None, "s"), "alice", ALICE_PASSWORD).await;
    assert_eq!(consent.status, StatusCode::OK);

    let base = |client: Option<&str>, redirect: Option<&str>| {
        let mut p = vec![("response_type", "token"), ("state", "s")];
        if let Some(c) = client {
            p.push(("client_id", c));
        }
        if let Some(r) = redirect {
            p.push(("redirect_uri", r));
        }
        authorize_url(&p)
    };
    let cases = [
        (base(None, Some(WEB_CB)), "client_id is missing"),
        (base(Some("nobody"), Some(WEB_CB)), "The client_id names no registered client"),
        (format!("{}&client_id=web", base(Some("web"), Some(WEB_CB))), "The client_id parameter is repeated"),
        (format!("{}&redirect_uri=x", base(Some("web"), Some(WEB_CB))), "The redirect_uri parameter is repeated"),
        (base(Some("web"), None), "The redirect_uri parameter is required for this client"),
        (base(Some("app"), None), "This client has no redirect URI registered"),
        (base(Some("web"), Some("https://evil.example/cb")), "The redirect_uri is not registered for this client"),
    ];
    for (url, message) in &cases {
        // Both signed in and signed out.
        for reply in [alice.get(url).await, get(&gw.url(url), &[]).await] {
            assert_error_page(&reply, StatusCode::BAD_REQUEST, message);
        }
    }

    // Byte-for-byte comparison (RFC 9700 §4.1.3).
    for uri in [
        "https://web.example/c",
        "https://web.example/cb/",
        "https://web.example/cbx",
        "https://web.example/cb?x=1",
        "https://web.example/cb#x",
        "https://WEB.example/cb",
        "https://web.example/CB",
        "https://web.example:443/cb",
        "http://web.example/cb",
        "https://web.example.evil.example/cb",
        "https://web.example/cb/../cb",
        "https://web.example%2fcb",
        "https://evil.example@web.example/cb",
        "https://web.example/cb%20",
        " https://web.example/cb",
        // The loopback exception is for the port alone.
        "http://127.0.0.1:3000/cb/",
        "http://127.0.0.1:3000/CB",
        "http://127.0.0.1:3000/cb?x=1",
        "http://127.0.0.2:3000/cb",
        "http://localhost:3000/cb",
        "https://127.0.0.1:3000/cb",
        "http://127.0.0.1:3000@evil.example/cb",
        // Any port, but one a socket can have, and the scheme as registered
        // (SECURITY.md 50, RFC 8252 §7.3).
        "http://127.0.0.1:0/cb",
        "http://127.0.0.1:99999/cb",
        "http://127.0.0.1:/cb",
        "HTTP://127.0.0.1:3000/cb",
    ] {
        let mut url = web_url(None, "s");
        url = url.replace(&format!("redirect_uri={}", encode(WEB_CB)), &format!("redirect_uri={}", encode(uri)));
        assert!(url.contains(&encode(uri)), "{url}");
        let reply = alice.get(&url).await;
        assert_error_page(&reply, StatusCode::BAD_REQUEST, "The redirect_uri is not registered for this client");
    }
    // A client registered for client credentials only.
    let no_code_flow =
        authorize_url(&[("response_type", "code"), ("client_id", "app"), ("redirect_uri", "https://app.example/cb")]);
    assert_error_page(&alice.get(&no_code_flow).await, StatusCode::BAD_REQUEST, "The redirect_uri is not registered");

    // The same checks apply to the consent form's answer: a tampered
    // redirect_uri is a page, and nothing goes to it.
    let mut fields = hidden_fields(&consent.text());
    for (k, v) in fields.iter_mut() {
        if k == "redirect_uri" {
            *v = "https://evil.example/cb".into();
        }
    }
    fields.push(("decision".into(), "approve".into()));
    let reply = alice.post("/oauth/authorize", &fields).await;
    assert_error_page(&reply, StatusCode::BAD_REQUEST, "The redirect_uri is not registered for this client");
    gw.stop().await;
}

/// RFC 8252 §7.3: a native app on the loopback interface may take any port.
#[tokio::test]
async fn loopback_redirect_uri_may_use_any_port() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);

    let cb = "http://127.0.0.1:4567/cb";
    let url = authorize_url(&[
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", cb),
        ("state", "native"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let page = alice.get(&url).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_page_headers(&page, " http://127.0.0.1:4567");
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, cb, "native").await;

    // The token request names the redirect URI the request used, port and all.
    let pairs = |redirect: &'static str, code: &str| {
        form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", VERIFIER),
        ])
    };
    let auth = web_auth();
    let headers = [("content-type", FORM), ("authorization", auth.as_str())];
    let reply = send(Method::POST, &gw.url("/oauth/token"), &headers, pairs(WEB_LOOPBACK_CB, &code)).await;
    assert_invalid_grant(&reply, "The redirect_uri does not match the authorization request");
    let code = alice.code(&url, cb, "native").await;
    let reply = send(Method::POST, &gw.url("/oauth/token"), &headers, pairs(cb, &code)).await;
    issued(&reply, RW, true);

    // IPv6 loopback is not registered for web; 127.0.0.1 without a port is.
    let other = url.replace(&encode(cb), &encode("http://127.0.0.1/cb"));
    let reply = alice.get(&other).await;
    code_of(&reply, "http://127.0.0.1/cb", Some("native"));
    let v6 = url.replace(&encode(cb), &encode("http://[::1]:4567/cb"));
    assert_error_page(&alice.get(&v6).await, StatusCode::BAD_REQUEST, "The redirect_uri is not registered");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Once they are, errors go back to the client

#[tokio::test]
async fn request_errors_are_redirected_to_the_client_with_state_and_iss() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let consent = alice.sign_in(&web_url(None, "s"), "alice", ALICE_PASSWORD).await;
    assert_eq!(consent.status, StatusCode::OK);
    let mut stranger = Browser::new(&gw);

    let ok: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", "web"),
        ("redirect_uri", WEB_CB),
        ("state", "st"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
        ("scope", "calendar.read"),
    ];
    // The allowed request without `names`, and with `name = value`.
    let without =
        |names: &[&str]| -> Vec<(&str, &str)> { ok.iter().filter(|(k, _)| !names.contains(k)).copied().collect() };
    let with = |name: &'static str, value: Option<&'static str>| {
        let mut p = without(&[name]);
        if let Some(v) = value {
            p.push((name, v));
        }
        authorize_url(&p)
    };
    let cases = [
        (with("response_type", Some("token")), "unsupported_response_type"),
        (with("response_type", Some("code id_token")), "unsupported_response_type"),
        (with("response_type", None), "invalid_request"),
        (authorize_url(&without(&["code_challenge", "code_challenge_method"])), "invalid_request"),
        (with("code_challenge", None), "invalid_request"),
        (with("code_challenge_method", Some("plain")), "invalid_request"),
        (with("code_challenge_method", None), "invalid_request"),
        (with("code_challenge", Some("tooshort")), "invalid_request"),
        (with("scope", Some("calendar.delete")), "invalid_scope"),
        (with("scope", Some("calendar.read admin")), "invalid_scope"),
        (with("scope", Some("calendar.read \"x\"")), "invalid_scope"),
        (format!("{}&scope=calendar.read", with("scope", Some("calendar.read"))), "invalid_request"),
    ];
    for (url, error) in &cases {
        for reply in [alice.get(url).await, stranger.get(url).await] {
            assert_error_redirect(&reply, WEB_CB, error, Some("st"));
        }
    }
    // A repeated state cannot be echoed, but the error still goes back.
    let url = format!("{}&state=other", with("state", Some("st")));
    assert_error_redirect(&alice.get(&url).await, WEB_CB, "invalid_request", None);
    // No state sent, none returned.
    assert_error_redirect(
        &alice.get(&with("state", None).replace("S256", "plain")).await,
        WEB_CB,
        "invalid_request",
        None,
    );

    // The allowed case of the same request.
    let reply = alice.get(&authorize_url(&ok)).await;
    assert_eq!(reply.status, StatusCode::OK, "consent page: {}", reply.text());

    // The public client: PKCE is not optional.
    let spa = authorize_url(&[("response_type", "code"), ("client_id", "spa"), ("state", "p")]);
    assert_error_redirect(&alice.get(&spa).await, SPA_CB, "invalid_request", Some("p"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Token endpoint errors for codes

#[tokio::test]
async fn code_must_match_client_redirect_uri_and_verifier() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let url = web_url(None, "s");
    let first = alice.first_code(&url, "alice", ALICE_PASSWORD, WEB_CB, "s").await;
    let auth = web_auth();
    let legacy = basic("legacy", "other-secret");
    let token = |auth: String, pairs: Vec<(&'static str, String)>| {
        let gw = &gw;
        async move {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(gw, "/oauth/token", Some(&auth), &pairs).await
        }
    };
    let grant = |code: &str, redirect: Option<&str>, verifier: Option<&str>| {
        let mut p = vec![("grant_type", "authorization_code".to_string()), ("code", code.to_string())];
        if let Some(r) = redirect {
            p.push(("redirect_uri", r.to_string()));
        }
        if let Some(v) = verifier {
            p.push(("code_verifier", v.to_string()));
        }
        p
    };

    // Each refused with invalid_grant, and none of them uses the code up
    // (RFC 6749 §4.1.3 binds it to client, redirect URI and verifier; a
    // request that does not match changes nothing): the same code is
    // redeemed at the end.
    let code = first;
    let reply = token(auth.clone(), grant(&code, Some(WEB_CB), Some(OTHER_VERIFIER))).await;
    assert_invalid_grant(&reply, "The code_verifier does not match the code_challenge");
    let reply = token(auth.clone(), grant(&code, Some(WEB_CB), None)).await;
    assert_invalid_grant(&reply, "The code_verifier is missing");
    let reply = token(auth.clone(), grant(&code, Some(WEB_LOOPBACK_CB), Some(VERIFIER))).await;
    assert_invalid_grant(&reply, "The redirect_uri does not match the authorization request");
    let reply = token(auth.clone(), grant(&code, None, Some(VERIFIER))).await;
    assert_invalid_grant(&reply, "The redirect_uri does not match the authorization request");
    let reply = token(legacy.clone(), grant(&code, Some(WEB_CB), Some(VERIFIER))).await;
    assert_invalid_grant(&reply, "The authorization code was issued to another client");
    let reply = token(auth.clone(), grant("not-a-code-we-issued", Some(WEB_CB), Some(VERIFIER))).await;
    assert_invalid_grant(&reply, "The authorization code is invalid");
    // A second code for the same request, for the end.
    let other = alice.code(&url, WEB_CB, "s").await;
    assert_ne!(other, code);

    // Malformed requests.
    let reply = token(auth.clone(), grant("", Some(WEB_CB), Some(VERIFIER))).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let reply = token(auth.clone(), grant(&code, Some(WEB_CB), Some("short"))).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    // A confidential client must authenticate; a wrong secret is invalid_client.
    let pairs = grant(&code, Some(WEB_CB), Some(VERIFIER));
    let mut public_style = pairs.clone();
    public_style.push(("client_id", "web".into()));
    let p: Vec<(&str, &str)> = public_style.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_oauth_error(&post_form(&gw, "/oauth/token", None, &p).await, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = token(basic("web", "wrong"), pairs.clone()).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // None of this used the code up: the allowed case, with it.
    let (access, _) = issued(&token(auth.clone(), pairs.clone()).await, RW, true);
    assert_eq!(claims(&gw, &access).await["sub"], "alice");
    assert_invalid_grant(&token(auth.clone(), pairs).await, "The authorization code was already used");
    // A second code of the same user is a grant of its own.
    issued(&token(auth, grant(&other, Some(WEB_CB), Some(VERIFIER))).await, RW, true);
    gw.stop().await;
}

/// RFC 9700 §4.8.2 (SECURITY #4): a verifier is required exactly when a
/// challenge was sent; a verifier for a code issued without one is a PKCE
/// downgrade and refused.
#[tokio::test]
async fn pkce_downgrade_is_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let auth = basic("legacy", "other-secret");
    let url = authorize_url(&[("response_type", "code"), ("client_id", "legacy"), ("state", "l")]);
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, LEGACY_CB, "l").await;

    let with_verifier = [("grant_type", "authorization_code"), ("code", &code), ("code_verifier", VERIFIER)];
    let reply = post_form(&gw, "/oauth/token", Some(&auth), &with_verifier).await;
    assert_invalid_grant(&reply, "No code_challenge was sent for this code");

    // Allowed: no challenge, no verifier; redirect_uri was not sent, so it
    // need not be; no refresh token for a client without that grant.
    let code = alice.code(&url, LEGACY_CB, "l").await;
    let reply =
        post_form(&gw, "/oauth/token", Some(&auth), &[("grant_type", "authorization_code"), ("code", &code)]).await;
    issued(&reply, "calendar.read", false);

    // With a challenge, the same client must send the verifier.
    let pkce = format!("{url}&code_challenge={CHALLENGE}&code_challenge_method=S256");
    let code = alice.code(&pkce, LEGACY_CB, "l").await;
    let reply =
        post_form(&gw, "/oauth/token", Some(&auth), &[("grant_type", "authorization_code"), ("code", &code)]).await;
    assert_invalid_grant(&reply, "The code_verifier is missing");
    let code = alice.code(&pkce, LEGACY_CB, "l").await;
    let reply = post_form(
        &gw,
        "/oauth/token",
        Some(&auth),
        &[("grant_type", "authorization_code"), ("code", &code), ("code_verifier", VERIFIER)],
    )
    .await;
    issued(&reply, "calendar.read", false);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 7. Replay

/// OAuth 2.1 §4.1.3 (SECURITY #6): a code used twice revokes what it gave,
/// even tokens already in the validation cache; a replay that does not
/// match the code (wrong client or verifier) revokes nothing.
#[tokio::test]
async fn code_replay_revokes_the_grant_but_an_invalid_replay_does_not() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let code = alice.first_code(&web_url(None, "s"), "alice", ALICE_PASSWORD, WEB_CB, "s").await;
    let (access, refresh_token) = issued(&redeem_web(&gw, &code).await, RW, true);
    // Used once, so cached.
    assert_works(&gw, &mut upstream, &access, "alice").await;

    // Invalid replays: another client, a wrong verifier.
    let reply = post_form(
        &gw,
        "/oauth/token",
        Some(&basic("legacy", "other-secret")),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", WEB_CB)],
    )
    .await;
    assert_invalid_grant(&reply, "The authorization code was issued to another client");
    let reply = post_form(
        &gw,
        "/oauth/token",
        Some(&web_auth()),
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", WEB_CB),
            ("code_verifier", OTHER_VERIFIER),
        ],
    )
    .await;
    assert_invalid_grant(&reply, "The code_verifier does not match the code_challenge");
    assert_works(&gw, &mut upstream, &access, "alice").await;

    // A valid replay.
    assert_invalid_grant(&redeem_web(&gw, &code).await, "The authorization code was already used");
    assert_revoked(&gw, &mut upstream, &access).await;
    assert_dead_refresh(&refresh(&gw, Some(&web_auth()), &refresh_token, &[]).await);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Parallel redemption

/// SECURITY #7: N parallel redemptions of one code give exactly one
/// success, the others `invalid_grant`; over several rounds, each with a
/// fresh code.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_redemptions_of_one_code_have_one_winner() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let url = web_url(None, "s");
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, WEB_CB, "s").await;
    // Allowed: a lone redemption (which also gets the client's secret
    // verified once, so the racers below are not spaced out by argon2).
    issued(&redeem_web(&gw, &code).await, RW, true);

    for round in 0..ROUNDS {
        let code = alice.code(&url, WEB_CB, "s").await;
        let replies = race(&gw, web_auth(), code_grant(&code)).await;
        let winner = one_winner(&replies, &["The authorization code was already used"], round);
        issued(winner, RW, true);
    }
    gw.stop().await;
}

/// Concurrent requests per race, and races per test.
const RACERS: usize = 10;
const ROUNDS: usize = 20;
/// Racers when what matters is the winner racing one replay: with two,
/// the replay's revocation and the winner's issuing meet in about a third
/// of the rounds here (with ten, a late loser usually revokes after the
/// winner is done, which hides the interleaving).
const REPLAY_RACERS: usize = 2;

fn code_grant(code: &str) -> String {
    form(&[("grant_type", "authorization_code"), ("code", code), ("redirect_uri", WEB_CB), ("code_verifier", VERIFIER)])
}

/// The one 200 of `replies`; every other is `invalid_grant` with one of
/// `descriptions`.
fn one_winner<'r>(replies: &'r [Reply], descriptions: &[&str], round: usize) -> &'r Reply {
    let winners = replies.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(
        winners,
        1,
        "round {round}: exactly one must win: {:?}",
        replies.iter().map(Reply::text).collect::<Vec<_>>()
    );
    at_most_one_winner(replies, descriptions, round).expect("the winner")
}

/// The 200 of `replies`, if any: never more than one; every other is
/// `invalid_grant` with one of `descriptions`.
fn at_most_one_winner<'r>(replies: &'r [Reply], descriptions: &[&str], round: usize) -> Option<&'r Reply> {
    let texts = || replies.iter().map(Reply::text).collect::<Vec<_>>();
    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == StatusCode::OK).collect();
    assert!(winners.len() <= 1, "round {round}: more than one won: {:?}", texts());
    for r in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_oauth_error(r, StatusCode::BAD_REQUEST, "invalid_grant");
        let description = r.json()["error_description"].as_str().unwrap_or_default().to_string();
        assert!(descriptions.contains(&description.as_str()), "round {round}: {:?}", texts());
    }
    winners.first().copied()
}

/// OAuth 2.1 §4.1.3 and RFC 9700 §4.14.2 (SECURITY #6, #10): the losers of
/// a race are replays, and a replay revokes every token of the grant, so
/// what the winner was issued must end revoked too, even when it was
/// minted while the revocation ran. A winner's access token that is still
/// accepted is a token of a revoked grant that outlives the revocation.
/// Each round is a fresh grant; the interleaving that matters happens in
/// some rounds only, so there are several.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_won_in_a_race_with_replays_end_revoked() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let url = web_url(None, "s");
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, WEB_CB, "s").await;
    issued(&redeem_web(&gw, &code).await, RW, true);

    let mut survivors = Vec::new();
    for round in 0..ROUNDS {
        // A code redeemed by racers.
        let code = alice.code(&url, WEB_CB, "s").await;
        let replies = race_n(&[&gw], REPLAY_RACERS, web_auth(), code_grant(&code)).await;
        let (access, refresh_token) =
            issued(one_winner(&replies, &["The authorization code was already used"], round), RW, true);
        let refreshed = refresh(&gw, Some(&web_auth()), &refresh_token, &[]).await;
        assert_oauth_error(&refreshed, StatusCode::BAD_REQUEST, "invalid_grant");
        if call_calendar(&gw, &access).await.status != StatusCode::UNAUTHORIZED {
            survivors.push(format!("round {round}: the code race winner's access token"));
            upstream.next().await;
        }

        // A refresh token presented by racers.
        let code = alice.code(&url, WEB_CB, "s").await;
        let (_, refresh_token) = issued(&redeem_web(&gw, &code).await, RW, true);
        let body = form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh_token)]);
        let replies = race_n(&[&gw], REPLAY_RACERS, web_auth(), body).await;
        // (Whether one of them must win is `parallel_refreshes_have_one_winner`'s
        // concern; here, what a winner got must not outlive its grant.)
        if let Some(winner) = at_most_one_winner(&replies, &DEAD_REFRESH, round) {
            let (access, rotated) = issued(winner, RW, true);
            let refreshed = refresh(&gw, Some(&web_auth()), &rotated, &[]).await;
            assert_oauth_error(&refreshed, StatusCode::BAD_REQUEST, "invalid_grant");
            if call_calendar(&gw, &access).await.status != StatusCode::UNAUTHORIZED {
                survivors.push(format!("round {round}: the refresh race winner's access token"));
                upstream.next().await;
            }
        }
    }
    assert!(survivors.is_empty(), "access tokens of revoked grants still accepted:\n{}", survivors.join("\n"));
    gw.stop().await;
}

/// `RACERS` copies of a token request at once.
async fn race(gw: &Gateway, auth: String, body: String) -> Vec<Reply> {
    race_n(&[gw], RACERS, auth, body).await
}

/// Sends `n` copies of a token request at once, to each of `gateways` in
/// turn: every task waits at a barrier, so none is sent before all are
/// ready to send.
async fn race_n(gateways: &[&Gateway], n: usize, auth: String, body: String) -> Vec<Reply> {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = gateways[i % gateways.len()].url("/oauth/token");
            let (barrier, auth, body) = (barrier.clone(), auth.clone(), body.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                send(Method::POST, &url, &[("content-type", FORM), ("authorization", &auth)], body).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.expect("request task"));
    }
    replies
}

// ---------------------------------------------------------------------------
// 9. Refresh tokens

/// RFC 9700 §4.14.2 (SECURITY #10): each refresh rotates the token; using
/// a rotated one revokes the whole family, newest tokens included.
#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let auth = web_auth();
    let (a1, r1) = web_tokens(&gw, None).await;

    let (a2, r2) = issued(&refresh(&gw, Some(&auth), &r1, &[]).await, RW, true);
    assert_ne!(r1, r2);
    assert_ne!(a1, a2);
    assert_eq!(claims(&gw, &a2).await["sub"], "alice");
    let (a3, r3) = issued(&refresh(&gw, Some(&auth), &r2, &[]).await, RW, true);
    assert_ne!(r3, r2);
    for a in [&a1, &a2, &a3] {
        assert_works(&gw, &mut upstream, a, "alice").await;
    }
    // A grant of another user is a family of its own.
    let (other_access, other_refresh) = web_tokens(&gw, Some("calendar.read")).await;

    // r1 again: refused, and everything of its grant is revoked.
    assert_invalid_grant(&refresh(&gw, Some(&auth), &r1, &[]).await, "The refresh token was already used");
    for a in [&a1, &a2, &a3] {
        assert_revoked(&gw, &mut upstream, a).await;
    }
    assert_dead_refresh(&refresh(&gw, Some(&auth), &r3, &[]).await);
    assert_eq!(introspect(&gw, Some(&auth), &r3).await.json(), json!({"active": false}));

    // The other family is untouched.
    assert_works(&gw, &mut upstream, &other_access, "alice").await;
    issued(&refresh(&gw, Some(&auth), &other_refresh, &[]).await, "calendar.read", true);
    gw.stop().await;
}

/// RFC 6749 §6: the scope may be narrowed, never widened past what the
/// resource owner granted; "if omitted [it] is treated as equal to the
/// scope originally granted", and a new refresh token's scope "MUST be
/// identical to that of the refresh token included by the client".
#[tokio::test]
async fn refresh_scope_narrows_but_never_widens() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let auth = web_auth();
    let (_, r1) = web_tokens(&gw, None).await;

    let (narrow, r2) =
        issued(&refresh(&gw, Some(&auth), &r1, &[("scope", "calendar.read")]).await, "calendar.read", true);
    assert_eq!(claims(&gw, &narrow).await["scope"], "calendar.read");
    assert_works(&gw, &mut upstream, &narrow, "alice").await;
    let write =
        send(Method::POST, &gw.url("/calendar/events"), &[("authorization", &format!("Bearer {narrow}"))], "").await;
    assert_eq!(write.status, StatusCode::FORBIDDEN, "{}", write.text());

    // The rotated token goes on working.
    issued(&refresh(&gw, Some(&auth), &r2, &[("scope", "calendar.read")]).await, "calendar.read", true);

    // Widening past the grant: a grant of calendar.read alone, a scope the
    // client does not have.
    let (_, read_only) = web_tokens(&gw, Some("calendar.read")).await;
    let reply = refresh(&gw, Some(&auth), &read_only, &[("scope", RW)]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    let (_, whole) = web_tokens(&gw, None).await;
    let reply = refresh(&gw, Some(&auth), &whole, &[("scope", "calendar.read admin")]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    gw.stop().await;
}

/// RFC 6749 §6: after a narrowed refresh the new refresh token still
/// stands for the whole grant ("the refresh token scope MUST be identical
/// to that of the refresh token included by the client in the request"),
/// and a later refresh that omits `scope` gets "the scope originally
/// granted by the resource owner".
#[tokio::test]
async fn a_narrowed_refresh_keeps_the_grants_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let auth = web_auth();
    let (_, r1) = web_tokens(&gw, None).await;

    let (_, r2) = issued(&refresh(&gw, Some(&auth), &r1, &[("scope", "calendar.read")]).await, "calendar.read", true);
    let reply = introspect(&gw, Some(&auth), &r2).await;
    assert_eq!(reply.json()["scope"], RW, "the new refresh token's scope: {}", reply.text());
    issued(&refresh(&gw, Some(&auth), &r2, &[]).await, RW, true);
    gw.stop().await;
}

/// A refused refresh (here `invalid_scope`) issues nothing, so it must not
/// rotate the token either: the client's next, correct request works, and
/// is not taken for a stolen token's reuse (which would revoke the grant).
#[tokio::test]
async fn a_refused_refresh_does_not_burn_the_refresh_token() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let auth = web_auth();
    let (access, r1) = web_tokens(&gw, Some("calendar.read")).await;
    assert_works(&gw, &mut upstream, &access, "alice").await;

    let reply = refresh(&gw, Some(&auth), &r1, &[("scope", RW)]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    let reply = refresh(&gw, Some(&auth), &r1, &[]).await;
    issued(&reply, "calendar.read", true);
    assert_works(&gw, &mut upstream, &access, "alice").await;
    gw.stop().await;
}

/// RFC 6749 §6 / SECURITY #10: a refresh token is bound to its client; a
/// presentation by another client neither works nor burns it.
#[tokio::test]
async fn refresh_token_is_bound_to_its_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let (_, web_refresh) = web_tokens(&gw, None).await;

    // spa (public, allowed refresh tokens) presenting web's token.
    let reply = refresh(&gw, None, &web_refresh, &[("client_id", "spa")]).await;
    assert_invalid_grant(&reply, "The refresh token was issued to another client");
    // legacy may not refresh at all.
    let reply = refresh(&gw, Some(&basic("legacy", "other-secret")), &web_refresh, &[]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unauthorized_client");
    // Without authentication a confidential client's token is not usable.
    let reply = refresh(&gw, None, &web_refresh, &[("client_id", "web")]).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = refresh(&gw, Some(&web_auth()), "pcr_unknown", &[]).await;
    assert_invalid_grant(&reply, "The refresh token is invalid");
    let reply = refresh(&gw, Some(&web_auth()), "", &[]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    // The owner still can.
    issued(&refresh(&gw, Some(&web_auth()), &web_refresh, &[]).await, RW, true);
    gw.stop().await;
}

/// SECURITY #10: rotation is atomic; of parallel refreshes with one token
/// exactly one succeeds (the first use is a valid refresh; only the later
/// ones are reuses, RFC 9700 §4.14.2), the others are `invalid_grant`;
/// over several rounds, each with a fresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_refreshes_have_one_winner() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let (_, mut token) = web_tokens(&gw, None).await;

    for round in 0..ROUNDS {
        let body = form(&[("grant_type", "refresh_token"), ("refresh_token", &token)]);
        let replies = race(&gw, web_auth(), body).await;
        one_winner(&replies, &DEAD_REFRESH, round);
        // A fresh family for the next round (this one was revoked by the
        // losers' reuse).
        token = web_tokens(&gw, None).await.1;
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 9b. Across replicas (PostgreSQL)

/// Two gateways with this suite's configuration on one new database of the
/// PostgreSQL test cluster; `None` when there is no cluster (outside CI).
async fn replicas(upstream: &Upstream) -> Option<(Gateway, Gateway)> {
    let url = support::postgres::database().await?;
    let toml = toml(upstream).replace("url = \"sqlite::memory:\"", &format!("url = \"{url}\""));
    assert!(toml.contains(&url), "the store anchor moved");
    Some((Gateway::start(&toml).await, Gateway::start(&toml).await))
}

/// Each step of the flow on another replica than the last: the sign-in
/// page from A posted to B (its CSRF token holds), the session B made
/// honoured by A, consent posted to B, the code redeemed on A and the token
/// used on B. Replaying the code on B revokes the grant on both.
#[tokio::test]
async fn the_flow_works_whichever_replica_serves_each_step() {
    let mut upstream = Upstream::start().await;
    let Some((a, b)) = replicas(&upstream).await else { return };
    let url = web_url(None, "s");
    let mut alice = Browser::new(&a);
    let page = alice.get(&url).await;
    assert!(page.text().contains("<h1>Sign in</h1>"), "{}", page.text());
    alice.gw = &b;
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    alice.gw = &a;
    let consent = alice.get(&url).await;
    alice.gw = &b;
    let code = code_of(&alice.decide(&consent, "approve").await, WEB_CB, Some("s"));
    let (access, _) = issued(&redeem_web(&a, &code).await, RW, true);
    assert_works(&b, &mut upstream, &access, "alice").await;

    assert_invalid_grant(&redeem_web(&b, &code).await, "The authorization code was already used");
    assert_revoked(&b, &mut upstream, &access).await;
    assert_revoked(&a, &mut upstream, &access).await;
    a.stop().await;
    b.stop().await;
}

/// SECURITY #7 across replicas: a code raced on A and B at once is
/// redeemed once (a conditional `UPDATE` in the shared database).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_redemptions_across_replicas_have_one_winner() {
    let upstream = Upstream::start().await;
    let Some((a, b)) = replicas(&upstream).await else { return };
    let mut alice = Browser::new(&a);
    let url = web_url(None, "s");
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, WEB_CB, "s").await;
    // Allowed: one redemption on each (the client's secret proven on
    // both, so argon2 does not space the racers out).
    issued(&redeem_web(&a, &code).await, RW, true);
    issued(&redeem_web(&b, &alice.code(&url, WEB_CB, "s").await).await, RW, true);
    for round in 0..ROUNDS {
        let code = alice.code(&url, WEB_CB, "s").await;
        let replies = race_n(&[&a, &b], RACERS, web_auth(), code_grant(&code)).await;
        issued(one_winner(&replies, &["The authorization code was already used"], round), RW, true);
    }
    a.stop().await;
    b.stop().await;
}

/// SECURITY #10 across replicas: a refresh token raced on A and B at once
/// rotates once; the others are reuses, which revoke the family, so the
/// winner's new access token is refused on both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_refreshes_across_replicas_have_one_winner_and_reuse_ends_the_family_on_both() {
    let mut upstream = Upstream::start().await;
    let Some((a, b)) = replicas(&upstream).await else { return };
    let (_, mut token) = web_tokens(&a, None).await;
    issued(&refresh(&b, Some(&web_auth()), &web_tokens(&b, None).await.1, &[]).await, RW, true);
    for round in 0..ROUNDS / 4 {
        let body = form(&[("grant_type", "refresh_token"), ("refresh_token", &token)]);
        let replies = race_n(&[&a, &b], RACERS, web_auth(), body).await;
        let (access, _) = issued(one_winner(&replies, &DEAD_REFRESH, round), RW, true);
        assert_revoked(&a, &mut upstream, &access).await;
        assert_revoked(&b, &mut upstream, &access).await;
        token = web_tokens(if round % 2 == 0 { &b } else { &a }, None).await.1;
    }
    a.stop().await;
    b.stop().await;
}

/// While the database is out of reach (the link to it cut): the sign-in
/// form still shows (it needs nothing stored), signing in answers a 503
/// page that says to try again, a code redemption a 503
/// `temporarily_unavailable`; both work again once it is back, with no
/// restart.
#[tokio::test]
async fn the_pages_and_the_token_endpoint_answer_503_while_the_database_is_out_of_reach() {
    let upstream = Upstream::start().await;
    let Some(url) = support::postgres::database().await else { return };
    let (user, rest) = url.split_once('@').expect("a user in the URL");
    let (authority, db) = rest.split_once('/').expect("a database in the URL");
    let link = support::link::Link::start(authority.parse().expect("an IP:port authority")).await;
    let through_link = format!("url = \"{user}@{}/{db}\"\nacquire_timeout = \"1s\"", link.addr);
    let gw = Gateway::start(&toml(&upstream).replace("url = \"sqlite::memory:\"", &through_link)).await;
    let url = web_url(None, "s");
    let mut alice = Browser::new(&gw);
    let page = alice.get(&url).await;
    assert!(page.text().contains("<h1>Sign in</h1>"), "{}", page.text());

    link.cut();
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_error_page(&reply, StatusCode::SERVICE_UNAVAILABLE, "The service is temporarily unavailable.");
    assert_oauth_error(&redeem_web(&gw, "a-code").await, StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable");

    link.restore();
    let started = std::time::Instant::now();
    loop {
        let page = alice.get(&url).await;
        let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
        if reply.status == StatusCode::SEE_OTHER {
            break;
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
        assert!(started.elapsed() < Duration::from_secs(10), "not back within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consent = alice.get(&url).await;
    let code = code_of(&alice.decide(&consent, "approve").await, WEB_CB, Some("s"));
    issued(&redeem_web(&gw, &code).await, RW, true);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 10. Public clients

#[tokio::test]
async fn public_client_uses_pkce_and_no_secret() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    // No redirect_uri (one is registered) and no state.
    let url = authorize_url(&[
        ("response_type", "code"),
        ("client_id", "spa"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let page = alice.get(&url).await;
    assert_page_headers(&page, " https://spa.example");
    let consent = alice.sign_in(&url, "alice", ALICE_PASSWORD).await;
    assert!(consent.text().contains("<h1>Allow Calendar SPA?</h1>"), "{}", consent.text());
    let reply = alice.decide(&consent, "approve").await;
    let code = code_of(&reply, SPA_CB, None);

    // A wrong verifier is refused; the right one with client_id alone works.
    let grant = |code: &str, verifier: &str| {
        form(&[("grant_type", "authorization_code"), ("code", code), ("client_id", "spa"), ("code_verifier", verifier)])
    };
    let token_url = gw.url("/oauth/token");
    let token = |body: String| send(Method::POST, &token_url, &[("content-type", FORM)], body);
    let reply = token(grant(&code, OTHER_VERIFIER)).await;
    assert_invalid_grant(&reply, "The code_verifier does not match the code_challenge");
    // Asked again, though allowed before: a public client's identity
    // cannot be assured, so a remembered consent is not enough (RFC 8252
    // §8.6); a confidential one goes straight through
    // (`consent_is_remembered_per_user_and_scope`).
    let again = alice.get(&url.replacen('&', "&state=again&", 1)).await;
    assert!(again.text().contains("<h1>Allow Calendar SPA?</h1>"), "{}", again.text());
    let code = code_of(&alice.decide(&again, "approve").await, SPA_CB, Some("again"));
    let (access, r1) = issued(&token(grant(&code, VERIFIER)).await, "calendar.read", true);
    assert_works(&gw, &mut upstream, &access, "alice").await;
    // A secret it does not have does not help.
    let reply = token(format!("{}&client_secret=guess", grant("x", VERIFIER))).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");

    // Refresh and revoke with client_id alone.
    let (_, r2) = issued(&refresh(&gw, None, &r1, &[("client_id", "spa")]).await, "calendar.read", true);
    let reply = post_form(&gw, "/oauth/revoke", None, &[("token", &r2), ("client_id", "spa")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_revoked(&gw, &mut upstream, &access).await;
    // Introspection needs a confidential client's credentials.
    let reply = post_form(&gw, "/oauth/introspect", None, &[("token", &access), ("client_id", "spa")]).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    gw.stop().await;
}

/// OAuth 2.1 §4.2 (SECURITY #11): client credentials only for confidential
/// clients, enforced when the configuration is read.
#[tokio::test]
async fn public_client_cannot_have_client_credentials() {
    let upstream = support::dead_addr().await;
    let client = |grants: &str, pkce: &str| {
        format!(
            "[[clients]]\nclient_id = \"pub\"\npublic = true\nredirect_uris = [\"https://pub.example/cb\"]\n\
             scopes = [\"calendar.read\"]\ngrant_types = [{grants}]\n{pkce}"
        )
    };
    let parse = |extra: &str| Config::parse(&config_toml(upstream, extra), "test.toml", &|_| None);

    let err = parse(&client("\"authorization_code\", \"client_credentials\"", "")).expect_err("refused");
    let fields: Vec<(&str, &str)> = err.errors.iter().map(|e| (e.field.as_str(), e.reason.as_str())).collect();
    assert_eq!(
        fields,
        [("clients[2].grant_types", "client_credentials is only for confidential clients (OAuth 2.1 §4.2)")],
        "{err}"
    );
    let err = parse(&client("\"authorization_code\"", "require_pkce = false")).expect_err("refused");
    assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["clients[2].require_pkce"]);
    // Allowed: a public client with the code flow.
    let config = parse(&client("\"authorization_code\", \"refresh_token\"", "")).unwrap_or_else(|e| panic!("{e}"));
    let public = config.client("pub").expect("registered");
    assert!(public.public && public.require_pkce);
}

// ---------------------------------------------------------------------------
// 11. CSRF and return_to

#[tokio::test]
async fn consent_answer_needs_the_sessions_csrf_token() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut alice = Browser::new(&gw);
    let mut bob = Browser::new(&gw);
    let url = web_url(None, "c");
    let consent = alice.sign_in(&url, "alice", ALICE_PASSWORD).await;
    let bobs = bob.sign_in(&url, "bob", BOB_PASSWORD).await;
    let fields = hidden_fields(&consent.text());
    let bob_csrf = field(&hidden_fields(&bobs.text()), "csrf").to_string();
    assert_ne!(field(&fields, "csrf"), bob_csrf, "every session has its own token");

    let with_csrf = |csrf: Option<&str>| {
        let mut f: Vec<(String, String)> = fields.iter().filter(|(k, _)| k != "csrf").cloned().collect();
        if let Some(c) = csrf {
            f.push(("csrf".into(), c.into()));
        }
        f.push(("decision".into(), "approve".into()));
        f
    };
    for csrf in [None, Some(""), Some("forged"), Some(bob_csrf.as_str())] {
        let reply = alice.post("/oauth/authorize", &with_csrf(csrf)).await;
        assert_error_page(&reply, StatusCode::FORBIDDEN, "The form has expired or was not sent by this site.");
    }
    // Without the session cookie (a cross-site POST without cookies).
    let mut fields_ok = fields.clone();
    fields_ok.push(("decision".into(), "approve".into()));
    let mut cookieless = Browser::new(&gw);
    let reply = cookieless.post("/oauth/authorize", &fields_ok).await;
    assert_error_page(&reply, StatusCode::BAD_REQUEST, "Please go back to the application and start again.");

    // None of that consented: still asked.
    let again = alice.get(&url).await;
    assert!(again.text().contains("<h1>Allow Calendar Web?</h1>"), "{}", again.text());
    // The real form works.
    code_of(&alice.decide(&consent, "approve").await, WEB_CB, Some("c"));
    gw.stop().await;
}

#[tokio::test]
async fn login_needs_the_csrf_token_the_server_bound_to_its_cookie() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let url = web_url(None, "l");
    let mut browser = Browser::new(&gw);
    let page = browser.get(&url).await;
    let html = page.text();
    let fields = hidden_fields(&html);
    let csrf = field(&fields, "csrf").to_string();
    let login = |csrf: Option<&str>| {
        let mut f = vec![("return_to".to_string(), url.clone())];
        if let Some(c) = csrf {
            f.push(("csrf".into(), c.into()));
        }
        f.push(("username".into(), "alice".into()));
        f.push(("password".into(), ALICE_PASSWORD.into()));
        f
    };
    let refused = "The form has expired or was not sent by this site.";

    // No cookie at all (a login CSRF from another site).
    let mut stranger = Browser::new(&gw);
    let reply = stranger.post("/oauth/login", &login(Some(&csrf))).await;
    assert_error_page(&reply, StatusCode::FORBIDDEN, refused);
    // Cookie, but the form's token missing or different.
    for bad in [None, Some("forged"), Some("")] {
        let reply = browser.post("/oauth/login", &login(bad)).await;
        assert_error_page(&reply, StatusCode::FORBIDDEN, refused);
    }
    // Another browser's cookie with this form's token.
    let mut other = Browser::new(&gw);
    other.get(&url).await;
    let reply = other.post("/oauth/login", &login(Some(&csrf))).await;
    assert_error_page(&reply, StatusCode::FORBIDDEN, refused);
    assert!(browser.cookie("portcullis_session").is_none() && other.cookie("portcullis_session").is_none());

    // SECURITY.md 47: a cookie and field an attacker chose alike (a page on
    // the same site can set the cookie) are no pair the server made.
    let mut planted = Browser::new(&gw);
    planted.jar.insert("portcullis_login".into(), "attacker-chosen".into());
    let reply = planted.post("/oauth/login", &login(Some("attacker-chosen"))).await;
    assert_error_page(&reply, StatusCode::FORBIDDEN, refused);
    // Nor is the page's cookie copied into the field.
    let nonce = browser.cookie("portcullis_login").expect("the login cookie").to_string();
    let reply = browser.post("/oauth/login", &login(Some(&nonce))).await;
    assert_error_page(&reply, StatusCode::FORBIDDEN, refused);

    // SECURITY.md 47: a page of another origin of the same site (another
    // port, a subdomain) posting a sign-in is refused whatever it carries;
    // the browser says where the form came from.
    let body = form(&login(Some(&csrf)).iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
    let cookie = browser.cookie_header();
    for headers in [
        &[("origin", "http://127.0.0.1:3000")][..],
        &[("origin", "https://web.example"), ("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "null"), ("sec-fetch-site", "same-site")],
    ] {
        let mut all = vec![("content-type", FORM), ("cookie", cookie.as_str())];
        all.extend_from_slice(headers);
        let reply = send(Method::POST, &gw.url("/oauth/login"), &all, body.clone()).await;
        assert_error_page(&reply, StatusCode::FORBIDDEN, "The form was not sent by this site.");
    }
    assert!(browser.cookie("portcullis_session").is_none());

    // Allowed: the pair the server made, from a page of this origin (a
    // `null` Origin is what the pages' no-referrer policy makes a browser
    // send; Sec-Fetch-Site speaks then).
    let here = format!("http://{}", gw.public);
    for origin in [here.as_str(), "null"] {
        let mut browser = Browser::new(&gw);
        let page = browser.get(&url).await;
        let csrf = field(&hidden_fields(&page.text()), "csrf").to_string();
        let body = form(&login(Some(&csrf)).iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
        let cookie = browser.cookie_header();
        let headers =
            [("content-type", FORM), ("cookie", &cookie), ("origin", origin), ("sec-fetch-site", "same-origin")];
        let reply = send(Method::POST, &gw.url("/oauth/login"), &headers, body).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{origin}: {}", reply.text());
    }
    // And without the headers a browser would add (not a browser): the token decides.
    let reply = browser.post("/oauth/login", &login(Some(&csrf))).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert!(browser.cookie("portcullis_session").is_some());
    gw.stop().await;
}

/// A reload keeps the key the sign-in form's CSRF token is signed with (it
/// comes from the store's signing key): a form already on someone's screen
/// still signs them in.
#[tokio::test]
async fn a_sign_in_form_on_screen_survives_a_reload() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.toml");
    let file = toml(&upstream)
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()));
    std::fs::write(&path, file).expect("write config");
    let gw = Gateway::start_file(&path).await;
    let mut alice = Browser::new(&gw);
    let page = alice.get(&web_url(None, "r")).await;
    let reloaded = send(Method::POST, &gw.admin_url("/reload"), &[], "").await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    gw.stop().await;
}

/// A user removed from the config by a reload is forgotten: their access
/// token (cached as valid) is refused, their refresh token and session end,
/// and they cannot sign in; another user's tokens go on working.
#[tokio::test]
async fn a_user_removed_by_a_reload_loses_their_tokens_and_session() {
    let mut upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.toml");
    let file = toml(&upstream)
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()));
    std::fs::write(&path, &file).expect("write config");
    let gw = Gateway::start_file(&path).await;
    let (alice_access, alice_refresh) = web_tokens(&gw, None).await;
    let mut bob = Browser::new(&gw);
    let consent = bob.sign_in(&web_url(None, "b"), "bob", BOB_PASSWORD).await;
    let code = code_of(&bob.decide(&consent, "approve").await, WEB_CB, Some("b"));
    let (bob_access, bob_refresh) = issued(&redeem_web(&gw, &code).await, RW, true);
    let mut alice = Browser::new(&gw);
    alice.sign_in(&web_url(None, "a"), "alice", ALICE_PASSWORD).await;
    assert_works(&gw, &mut upstream, &alice_access, "alice").await;

    let without_alice =
        file.replacen(&format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{ALICE_HASH}\"\n"), "", 1);
    assert_ne!(without_alice, file, "the user anchor moved");
    std::fs::write(&path, without_alice).expect("write config");
    let reloaded = send(Method::POST, &gw.admin_url("/reload"), &[], "").await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());

    assert_revoked(&gw, &mut upstream, &alice_access).await;
    assert_dead_refresh(&refresh(&gw, Some(&web_auth()), &alice_refresh, &[]).await);
    let page = alice.get(&web_url(None, "a")).await;
    assert!(page.text().contains("<h1>Sign in</h1>"), "signed out: {}", page.text());
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains("Wrong username or password."), "{}", reply.text());
    // Allowed: bob is untouched.
    assert_works(&gw, &mut upstream, &bob_access, "bob").await;
    issued(&refresh(&gw, Some(&web_auth()), &bob_refresh, &[]).await, RW, true);
    gw.stop().await;
}

/// SECURITY.md 47: every sign-in makes a new session and ends the one the
/// browser came with; a session cookie set twice (a same-site page can add
/// one for a longer path, sent first) is neither one's.
#[tokio::test]
async fn signing_in_ends_the_old_session_and_a_doubled_session_cookie_is_no_session() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let url = web_url(None, "s");
    let mut alice = Browser::new(&gw);
    alice.sign_in(&url, "alice", ALICE_PASSWORD).await;
    let old = alice.cookie("portcullis_session").expect("a session").to_string();

    // Signing in again with the old session cookie still on the request.
    let mut fresh = Browser::new(&gw);
    let page = fresh.get(&url).await;
    alice.jar.insert("portcullis_login".into(), fresh.cookie("portcullis_login").expect("login cookie").into());
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    let new = alice.cookie("portcullis_session").expect("a session").to_string();
    assert_ne!(new, old);
    let mut with_old = Browser::new(&gw);
    with_old.jar.insert("portcullis_session".into(), old);
    assert!(with_old.get(&url).await.text().contains("<h1>Sign in</h1>"), "the old session still works");
    assert!(alice.get(&url).await.text().contains("<h1>Allow Calendar Web?</h1>"));

    // Mallory's session planted beside Alice's: neither is believed.
    let mut mallory = Browser::new(&gw);
    mallory.sign_in(&url, "bob", BOB_PASSWORD).await;
    let planted = mallory.cookie("portcullis_session").expect("a session").to_string();
    let page =
        get(&gw.url(&url), &[("cookie", &format!("portcullis_session={planted}; portcullis_session={new}"))]).await;
    assert!(page.text().contains("<h1>Sign in</h1>"), "{}", page.text());
    gw.stop().await;
}

/// SECURITY.md 47: with `dedicated_host`, the sign-in and consent pages
/// answer on the issuer's host only, and no proxied route does, so no
/// upstream's scripts share the pages' origin (and set their cookies).
#[tokio::test]
async fn a_dedicated_host_keeps_the_pages_and_the_apis_apart() {
    let mut upstream = Upstream::start().await;
    let base = toml(&upstream);
    let hosts = base.lines().find(|l| l.starts_with("allowed_hosts")).expect("the fixture lists allowed_hosts");
    let dedicated = base
        .replace(hosts, "allowed_hosts = [\"api.example\"]\ntrusted_proxies = [\"127.0.0.1\"]")
        .replace("issuer = \"http://127.0.0.1:8080\"", "issuer = \"http://127.0.0.1:8080\"\ndedicated_host = true");
    let gw = Gateway::start(&dedicated).await;
    let url = web_url(None, "d");
    let page = |host: &'static str| {
        let target = gw.url(&url);
        async move { get(&target, &[("host", host)]).await }
    };
    let misdirected = serde_json::json!({
        "error": "misdirected_request",
        "error_description": "This gateway does not serve the host the request names",
    });
    // The pages: on the issuer's host only.
    let reply = page("127.0.0.1:8080").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains("<h1>Sign in</h1>"));
    let reply = page("api.example").await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{}", reply.text());
    assert_eq!(reply.json(), misdirected);
    // The APIs: never on the issuer's host, by any name a proxy forwards.
    let api = |headers: &'static [(&'static str, &'static str)]| {
        let target = gw.url("/public/x");
        async move { get(&target, headers).await }
    };
    let reply = api(&[("host", "api.example")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;
    for headers in [
        &[("host", "127.0.0.1:8080")][..],
        &[("host", "127.0.0.1.")],
        &[("host", "lb.internal"), ("x-forwarded-host", "api.example, 127.0.0.1")],
        &[("host", "127.0.0.1"), ("x-forwarded-host", "api.example")],
        &[("host", "api.example"), ("forwarded", "host=127.0.0.1")],
    ] {
        let reply = api(headers).await;
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{headers:?}: {}", reply.text());
        assert_eq!(reply.json(), misdirected);
    }
    assert!(upstream.saw_nothing());
    // Nor the pages on a name that is not the issuer's.
    let target = gw.url(&url);
    let reply = get(&target, &[("host", "127.0.0.1"), ("x-forwarded-host", "api.example, 127.0.0.1")]).await;
    assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST, "{}", reply.text());
    // The token endpoint takes no cookies and answers on any host.
    let reply = send(
        Method::POST,
        &gw.url("/oauth/token"),
        &[("host", "api.example"), ("content-type", FORM), ("authorization", &web_auth())],
        "grant_type=refresh_token&refresh_token=x",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.json()["error"], "invalid_grant");
    gw.stop().await;

    // Without API hosts of its own, the file is refused.
    let err =
        portcullis::config::Config::parse(&dedicated.replace("allowed_hosts = [\"api.example\"]\n", ""), "t", &|_| {
            None
        })
        .expect_err("refused");
    assert_eq!(err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["server.allowed_hosts"]);
}

/// SECURITY.md 47: under https the cookies carry the `__Host-` prefix (and
/// with it `Secure`, `Path=/`, no `Domain`), and an upstream sees them no
/// more than before.
#[tokio::test]
async fn under_https_the_cookies_are_host_prefixed_and_never_reach_an_upstream() {
    let mut upstream = Upstream::start().await;
    // TLS ends in front of the gateway: the issuer is https all the same.
    let toml = toml(&upstream).replace("issuer = \"http://127.0.0.1:8080\"", "issuer = \"https://gw.example\"");
    assert!(toml.contains("https://gw.example"), "the fixture's issuer changed");
    let gw = Gateway::start(&toml).await;
    let url = web_url(None, "h");
    let page = get(&gw.url(&url), &[]).await;
    let cookies = set_cookies(&page);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0].0, "__Host-portcullis_login");
    assert_eq!(cookies[0].2, attrs(&["Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=3600", "Secure"]));

    let mut fields = hidden_fields(&page.text());
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), ALICE_PASSWORD.into()));
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cookie = format!("__Host-portcullis_login={}", cookies[0].1);
    let reply =
        send(Method::POST, &gw.url("/oauth/login"), &[("content-type", FORM), ("cookie", &cookie)], form(&pairs)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    let session = set_cookies(&reply).into_iter().find(|c| c.0 == "__Host-portcullis_session").expect("a session");
    assert!(session.2.contains("Path=/") && session.2.contains("Secure"), "{session:?}");

    // Sent with every request to the host now (Path=/): an upstream never sees it.
    let reply =
        get(&gw.url("/public/x"), &[("cookie", &format!("app=1; __Host-portcullis_session={}; {cookie}", session.1))])
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.next().await.headers["cookie"], "app=1");
    gw.stop().await;
}

/// RFC 9700 §4.11 (SECURITY #14): after sign-in the browser goes back to
/// this server's authorization endpoint only, never to a URL the form names.
#[tokio::test]
async fn login_never_redirects_elsewhere() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let url = web_url(None, "r");
    let mut browser = Browser::new(&gw);
    let page = browser.get(&url).await;
    let csrf = field(&hidden_fields(&page.text()), "csrf").to_string();

    let query = url.split_once('?').expect("a query").1;
    for return_to in [
        "https://evil.example/".to_string(),
        "//evil.example/".to_string(),
        "/\\evil.example/".to_string(),
        format!("https://evil.example/oauth/authorize?{query}"),
        format!("//evil.example/oauth/authorize?{query}"),
        "/oauth/authorize".to_string(),
        format!("/oauth/authorizeX?{query}"),
        format!("/calendar/?{query}"),
        format!("/oauth/login?{query}"),
        String::new(),
    ] {
        let fields = vec![
            ("csrf".to_string(), csrf.clone()),
            ("return_to".to_string(), return_to.clone()),
            ("username".to_string(), "alice".to_string()),
            ("password".to_string(), ALICE_PASSWORD.to_string()),
        ];
        let reply = browser.post("/oauth/login", &fields).await;
        assert_error_page(&reply, StatusCode::BAD_REQUEST, "The sign-in form is incomplete.");
        assert!(browser.cookie("portcullis_session").is_none(), "{return_to}: no session either");
    }
    // A return_to on the endpoint but for a request that fails validation
    // is the error page of that request, not a redirect.
    let bad = url.replace(&encode(WEB_CB), &encode("https://evil.example/cb"));
    let fields = vec![
        ("csrf".to_string(), csrf.clone()),
        ("return_to".to_string(), bad),
        ("username".to_string(), "alice".to_string()),
        ("password".to_string(), ALICE_PASSWORD.to_string()),
    ];
    let reply = browser.post("/oauth/login", &fields).await;
    assert_error_page(&reply, StatusCode::BAD_REQUEST, "The redirect_uri is not registered for this client");
    assert!(browser.cookie("portcullis_session").is_none());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 12. Sign-in failures

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_page() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let url = web_url(None, "w");
    let mut browser = Browser::new(&gw);
    let mut page = browser.get(&url).await;

    let mut pages = Vec::new();
    for (user, password) in [("alice", "wrong"), ("mallory", ALICE_PASSWORD), ("alice", ""), ("ALICE", ALICE_PASSWORD)]
    {
        let reply = browser.submit_login(&page, user, password).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_page_headers(&reply, " https://web.example");
        let html = reply.text();
        assert!(html.contains("<p class=\"error\" role=\"alert\">Wrong username or password.</p>"), "{html}");
        // The username is kept, the password is not; a fresh CSRF pair.
        let inputs = tags(&html, "input");
        let username = inputs.iter().find(|a| a.get("name").map(String::as_str) == Some("username")).expect("input");
        assert_eq!(username["value"], user);
        assert!(!html.contains(ALICE_PASSWORD) && !html.contains("value=\"wrong\""), "{html}");
        let cookies = set_cookies(&reply);
        assert_eq!(cookies.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["portcullis_login"], "no session");
        assert_eq!(field(&hidden_fields(&html), "return_to"), url);
        let csrf = field(&hidden_fields(&html), "csrf").to_string();
        assert_ne!(csrf, cookies[0].1);
        assert_ne!(field(&hidden_fields(&page.text()), "csrf"), csrf);
        pages.push(html.replace(&csrf, "CSRF").replace(&format!("value=\"{user}\""), "value=\"USER\""));
        // The next attempt is made from this page, as a browser would.
        page = reply;
    }
    assert!(pages.windows(2).all(|w| w[0] == w[1]), "an unknown user looks like a wrong password: {pages:#?}");
    assert!(browser.cookie("portcullis_session").is_none());
    gw.stop().await;
}

/// SECURITY #39: repeated failures for one account are refused for a while,
/// even with the right password then; other accounts are not affected.
#[tokio::test]
async fn repeated_failures_throttle_the_account() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let url = web_url(None, "t");
    let mut browser = Browser::new(&gw);
    let mut page = browser.get(&url).await;
    assert_eq!(portcullis::web::MAX_LOGIN_FAILURES_PER_USER, 5);

    // Below the limit the right password still works (for bob).
    for _ in 0..4 {
        page = browser.submit_login(&page, "bob", "wrong").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    }
    for _ in 0..5 {
        page = browser.submit_login(&page, "alice", "wrong").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        assert!(page.text().contains("Wrong username or password."));
    }
    let reply = browser.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("300"));
    assert_page_headers(&reply, " https://web.example");
    assert!(reply.text().contains("Too many failed sign-in attempts. Wait a few minutes and try again."));
    assert!(browser.cookie("portcullis_session").is_none());

    let reply = browser.submit_login(&reply, "bob", BOB_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert!(browser.cookie("portcullis_session").is_some());
    gw.stop().await;
}

/// SECURITY.md 46: behind a trusted proxy, failures count against the
/// address the proxy vouches for, not the proxy's own: one client's guesses
/// do not lock out every user behind the proxy.
#[tokio::test]
async fn behind_a_trusted_proxy_the_sign_in_throttle_counts_each_clients_address() {
    let upstream = Upstream::start().await;
    let gw =
        Gateway::start(&toml(&upstream).replacen("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n", 1))
            .await;
    let url = web_url(None, "t");
    let mut guesser = Browser::behind_proxy(&gw, "203.0.113.66");
    let mut page = guesser.get(&url).await;
    assert_eq!(portcullis::web::MAX_LOGIN_FAILURES_PER_ADDRESS, 20);
    // A different user each time, so the per-account limit is not what stops it.
    for i in 0..20 {
        page = guesser.submit_login(&page, &format!("user{i}"), "wrong").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    }
    let reply = guesser.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());

    let mut alice = Browser::behind_proxy(&gw, "198.51.100.7");
    let page = alice.get(&url).await;
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    gw.stop().await;
}

/// Guesses sent at once get no more tries than guesses sent one by one:
/// each counts before its password is checked.
#[tokio::test]
async fn a_burst_of_guesses_gets_no_more_tries_than_a_sequence() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let mut browser = Browser::new(&gw);
    let page = browser.get(&web_url(None, "t")).await;
    let html = page.text();
    let mut fields = hidden_fields(&html);
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), "wrong".into()));
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (body, cookie, url) = (form(&pairs), browser.cookie_header(), gw.url(&form_action(&html)));
    let guesses: Vec<_> = (0..20)
        .map(|_| {
            let (body, cookie, url) = (body.clone(), cookie.clone(), url.clone());
            tokio::spawn(async move {
                send(Method::POST, &url, &[("content-type", FORM), ("cookie", &cookie)], body).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.expect("guess"));
    }
    let tried = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let throttled = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((tried, throttled), (5, 15), "{statuses:?}");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 13. Introspection

#[tokio::test]
async fn introspection_tells_a_client_about_its_own_tokens_only() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let auth = web_auth();
    let (access, refresh_token) = web_tokens(&gw, None).await;
    let inactive = json!({"active": false});

    let reply = introspect(&gw, Some(&auth), &access).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    let c = claims(&gw, &access).await;
    assert_eq!(
        body,
        json!({
            "active": true,
            "token_type": "Bearer",
            "client_id": "web",
            "sub": "alice",
            "username": "alice",
            "scope": RW,
            "exp": c["exp"],
            "jti": c["jti"],
            "iss": ISSUER,
            "aud": ISSUER,
        })
    );

    let body = introspect(&gw, Some(&auth), &refresh_token).await.json();
    let keys: BTreeSet<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["active", "client_id", "exp", "iat", "iss", "scope", "sub", "token_type", "username"]),
        "{body}"
    );
    assert_eq!(
        (&body["active"], &body["token_type"], &body["client_id"], &body["sub"], &body["scope"]),
        (&json!(true), &json!("refresh_token"), &json!("web"), &json!("alice"), &json!(RW))
    );
    assert_eq!(body["exp"].as_i64().expect("exp") - body["iat"].as_i64().expect("iat"), 30 * 24 * 3600);

    // Another client learns nothing; unknown tokens are inactive.
    let legacy = basic("legacy", "other-secret");
    for (auth, token) in [(&legacy, &access), (&legacy, &refresh_token), (&auth, &"pcr_unknown".to_string())] {
        assert_eq!(introspect(&gw, Some(auth), token).await.json(), inactive);
    }
    for token in ["garbage", "pca_unknown", "a.b.c"] {
        assert_eq!(introspect(&gw, Some(&auth), token).await.json(), inactive);
    }
    // Client authentication is required.
    let reply = introspect(&gw, None, &access).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = introspect(&gw, Some(&basic("web", "wrong")), &access).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");

    // After revocation: inactive, exactly.
    let reply = post_form(&gw, "/oauth/revoke", Some(&auth), &[("token", &refresh_token)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(introspect(&gw, Some(&auth), &access).await.json(), inactive);
    assert_eq!(introspect(&gw, Some(&auth), &refresh_token).await.json(), inactive);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 14. Revocation (RFC 7009)

/// RFC 7009 §2.1 (SECURITY #17): revoking a refresh token also invalidates
/// the access tokens of its grant; another client cannot revoke it.
#[tokio::test]
async fn revoking_a_refresh_token_ends_its_grant() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let auth = web_auth();
    let (a1, r1) = web_tokens(&gw, None).await;
    let (a2, r2) = issued(&refresh(&gw, Some(&auth), &r1, &[]).await, RW, true);
    assert_works(&gw, &mut upstream, &a1, "alice").await;
    assert_works(&gw, &mut upstream, &a2, "alice").await;

    // Another client: 200, and nothing happens.
    let reply = post_form(&gw, "/oauth/revoke", Some(&basic("legacy", "other-secret")), &[("token", &r2)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_works(&gw, &mut upstream, &a2, "alice").await;

    let reply =
        post_form(&gw, "/oauth/revoke", Some(&auth), &[("token", &r2), ("token_type_hint", "refresh_token")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(reply.body.is_empty());
    assert_revoked(&gw, &mut upstream, &a1).await;
    assert_revoked(&gw, &mut upstream, &a2).await;
    assert_oauth_error(&refresh(&gw, Some(&auth), &r2, &[]).await, StatusCode::BAD_REQUEST, "invalid_grant");
    // Idempotent, and unknown tokens are fine too.
    for token in [r2.as_str(), "pcr_unknown"] {
        let reply = post_form(&gw, "/oauth/revoke", Some(&auth), &[("token", token)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 15. A refresh token is not an access token

#[tokio::test]
async fn refresh_token_is_refused_as_an_access_token() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let (access, refresh_token) = web_tokens(&gw, None).await;

    for _ in 0..2 {
        let reply = call_calendar(&gw, &refresh_token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token is invalid\""
            )
        );
    }
    let reply = get(&gw.url(&format!("/calendar/events?access_token={}", encode(&refresh_token))), &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(upstream.saw_nothing());
    // The access token of the same grant is.
    assert_works(&gw, &mut upstream, &access, "alice").await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 16. Code lifetime

#[tokio::test]
async fn expired_code_is_refused() {
    let upstream = Upstream::start().await;
    let toml = toml(&upstream).replace(TTL_LINE, &format!("{TTL_LINE}\nauthorization_code_ttl = \"2s\""));
    let clock = Arc::new(ManualClock::starting_now());
    let gw = Gateway::start_with_clock(&toml, clock.clone()).await;
    let mut alice = Browser::new(&gw);
    let url = web_url(None, "e");
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, WEB_CB, "e").await;
    // Allowed: redeemed in the last second of its lifetime.
    clock.advance(Duration::from_secs(1));
    issued(&redeem_web(&gw, &code).await, RW, true);

    // Refused: redeemed when its lifetime is over, on the gateway's clock.
    let code = alice.code(&url, WEB_CB, "e").await;
    clock.advance(Duration::from_secs(2));
    assert_invalid_grant(&redeem_web(&gw, &code).await, "The authorization code expired");

    // The limit itself: at most 10 minutes (OAuth 2.1 §4.1.2).
    let too_long = toml.replace("authorization_code_ttl = \"2s\"", "authorization_code_ttl = \"11m\"");
    let err = Config::parse(&too_long, "test.toml", &|_| None).expect_err("refused");
    assert_eq!(
        err.errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
        ["authorization_server.authorization_code_ttl"]
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 17. Metrics

#[tokio::test]
async fn flow_metrics() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&toml(&upstream)).await;
    let url = web_url(None, "m");

    let mut alice = Browser::new(&gw);
    let page = alice.get(&url).await;
    let page = alice.submit_login(&page, "alice", "wrong").await;
    assert_eq!(page.status, StatusCode::OK);
    let reply = alice.submit_login(&page, "alice", ALICE_PASSWORD).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let consent = alice.get(&url).await;
    let code = code_of(&alice.decide(&consent, "approve").await, WEB_CB, Some("m"));
    let (_, r1) = issued(&redeem_web(&gw, &code).await, RW, true);
    issued(&refresh(&gw, Some(&web_auth()), &r1, &[]).await, RW, true);
    let code = alice.code(&url, WEB_CB, "m").await;
    assert_invalid_grant(
        &post_form(&gw, "/oauth/token", Some(&web_auth()), &[("grant_type", "authorization_code"), ("code", &code)])
            .await,
        "The redirect_uri does not match the authorization request",
    );

    let mut bob = Browser::new(&gw);
    let consent = bob.sign_in(&url, "bob", BOB_PASSWORD).await;
    assert_error_redirect(&bob.decide(&consent, "deny").await, WEB_CB, "access_denied", Some("m"));

    let lines = metrics(&gw).await;
    for want in [
        "portcullis_authorization_flow_total{outcome=\"login_failed\"} 1",
        "portcullis_authorization_flow_total{outcome=\"login_succeeded\"} 2",
        "portcullis_authorization_flow_total{outcome=\"consent_granted\"} 1",
        "portcullis_authorization_flow_total{outcome=\"consent_remembered\"} 1",
        "portcullis_authorization_flow_total{outcome=\"consent_denied\"} 1",
        "portcullis_tokens_issued_total{grant_type=\"authorization_code\"} 1",
        "portcullis_tokens_issued_total{grant_type=\"refresh_token\"} 1",
        "portcullis_token_requests_total{result=\"issued\"} 2",
        "portcullis_token_requests_total{result=\"invalid_grant\"} 1",
    ] {
        assert!(lines.contains(want), "{want} missing from:\n{}", lines.iter().cloned().collect::<Vec<_>>().join("\n"));
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("portcullis_authorization_flow_total{outcome=\"login_throttled\"}")),
        "nothing was throttled"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 18. Durability across a restart

#[tokio::test]
async fn grants_codes_and_sessions_survive_a_restart() {
    let mut upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = toml(&upstream)
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()));
    let auth = web_auth();
    let url = web_url(None, "d");

    let gw = Gateway::start(&toml).await;
    let mut alice = Browser::new(&gw);
    let code = alice.first_code(&url, "alice", ALICE_PASSWORD, WEB_CB, "d").await;
    let (access, r1) = issued(&redeem_web(&gw, &code).await, RW, true);
    let session = alice.jar.clone();
    gw.stop().await;

    let gw = Gateway::start(&toml).await;
    // The same browser, against the new process.
    let mut alice = Browser { jar: session, ..Browser::new(&gw) };
    assert_works(&gw, &mut upstream, &access, "alice").await;
    let (a2, r2) = issued(&refresh(&gw, Some(&auth), &r1, &[]).await, RW, true);
    assert_works(&gw, &mut upstream, &a2, "alice").await;
    // The session and the consent are still there: straight to a code.
    let fresh = alice.code(&url, WEB_CB, "d").await;
    // The redeemed code stays redeemed; replaying it still revokes its grant.
    assert_invalid_grant(&redeem_web(&gw, &code).await, "The authorization code was already used");
    assert_revoked(&gw, &mut upstream, &a2).await;
    assert_oauth_error(&refresh(&gw, Some(&auth), &r2, &[]).await, StatusCode::BAD_REQUEST, "invalid_grant");
    gw.stop().await;

    // And that revocation is durable too; the fresh code is not affected.
    let gw = Gateway::start(&toml).await;
    assert_revoked(&gw, &mut upstream, &a2).await;
    assert_revoked(&gw, &mut upstream, &access).await;
    issued(&redeem_web(&gw, &fresh).await, RW, true);
    gw.stop().await;
}

//! Interoperability with a real third-party OAuth 2.0 client library: the
//! `oauth2` crate (v5) drives Portcullis's token, introspection and
//! revocation endpoints through its own request builders and response
//! parsers, over the hyper-util client the other tests use (plugged in
//! through the crate's `AsyncHttpClient` hook). The browser part of the
//! authorization code flow (login page, consent page) is driven by hand:
//! forms parsed, redirects followed, cookies kept.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicTokenType};
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, ConfigurationError,
    CsrfToken, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IntrospectionUrl, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, RevocationErrorResponseType, RevocationUrl, Scope,
    StandardErrorResponse, StandardRevocableToken, TokenIntrospectionResponse as _, TokenResponse as _, TokenUrl,
};
use support::{APP_SECRET_HASH, Gateway, Reply, Upstream, config_toml, get, send};

/// `alice`'s password is "wonderland" (`portcullis hash-password`).
const ALICE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$/O3xOwRZr6+dF2KZOFnuVQ$0/1lMnpAAtwdr6dLIbPvAxXWwUpZHOb61WOG3zwTwS0";
/// The issuer `support::config_toml` configures (not the listener's address).
const ISSUER: &str = "http://127.0.0.1:8080";
const REDIRECT: &str = "https://web.example/cb";

/// The standard configuration plus a user `alice`, a confidential client
/// `web` (secret "app-secret") allowed the code, refresh and client
/// credentials grants, and descriptions for the consent page.
fn config(upstream: &Upstream) -> String {
    let extra = format!(
        r#"
[[users]]
username = "alice"
password_hash = "{ALICE_HASH}"

[[clients]]
client_id = "web"
name = "Web Calendar"
client_secret_hash = "{APP_SECRET_HASH}"
redirect_uris = ["{REDIRECT}"]
scopes = ["calendar.read", "calendar.write"]
grant_types = ["authorization_code", "refresh_token", "client_credentials"]

[scopes."calendar.read"]
description = "See your calendar"
[scopes."calendar.write"]
description = "Change your calendar"
"#
    );
    config_toml(upstream.addr, &extra)
}

// ---------------------------------------------------------------------------
// The library's HTTP hook, on hyper-util.

/// What one request the library sent looked like.
#[derive(Debug, Clone)]
struct Sent {
    path: String,
    /// Whether it carried `Authorization: Basic`.
    basic: bool,
    /// The form body, decoded.
    form: BTreeMap<String, String>,
}

/// `oauth2::AsyncHttpClient` over the hyper-util legacy client, recording
/// each request the library makes so tests can see how it authenticated.
///
/// The library insists on an `https` revocation URL (RFC 7009 §2: "Clients
/// MUST verify that the URL is an HTTPS URL"), and the test gateway has no
/// TLS; so this transport plays the TLS terminator in front of it and sends
/// `https://` requests to the same authority over plain HTTP.
struct HyperHttp {
    client: Client<HttpConnector, Full<Bytes>>,
    sent: Mutex<Vec<Sent>>,
}

impl HyperHttp {
    fn new() -> HyperHttp {
        HyperHttp { client: Client::builder(TokioExecutor::new()).build_http(), sent: Mutex::new(Vec::new()) }
    }

    /// The last request the library sent.
    fn last(&self) -> Sent {
        self.sent.lock().expect("lock").last().cloned().expect("the library sent a request")
    }
}

impl<'c> AsyncHttpClient<'c> for HyperHttp {
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            if parts.uri.scheme_str() == Some("https") {
                let mut uri = parts.uri.into_parts();
                uri.scheme = Some(http::uri::Scheme::HTTP);
                parts.uri = http::Uri::from_parts(uri).map_err(std::io::Error::other)?;
            }
            let basic = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("Basic "));
            let form = form_urlencoded::parse(&body).into_owned().collect();
            self.sent.lock().expect("lock").push(Sent { path: parts.uri.path().to_string(), basic, form });
            let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        })
    }
}

// ---------------------------------------------------------------------------
// The library's client.

type WebClient = BasicClient<EndpointSet, EndpointNotSet, EndpointSet, EndpointSet, EndpointSet>;

fn client(gw: &Gateway, id: &str, secret: &str, auth_type: AuthType) -> WebClient {
    BasicClient::new(ClientId::new(id.to_string()))
        .set_client_secret(ClientSecret::new(secret.to_string()))
        .set_auth_type(auth_type)
        .set_auth_uri(AuthUrl::new(gw.url("/oauth/authorize")).expect("auth url"))
        .set_token_uri(TokenUrl::new(gw.url("/oauth/token")).expect("token url"))
        .set_introspection_url(IntrospectionUrl::new(gw.url("/oauth/introspect")).expect("introspection url"))
        .set_revocation_url(RevocationUrl::new(format!("https://{}/oauth/revoke", gw.public)).expect("revocation url"))
        .set_redirect_uri(RedirectUrl::new(REDIRECT.to_string()).expect("redirect url"))
}

fn scopes(list: &[&str]) -> Vec<Scope> {
    list.iter().map(|s| Scope::new(s.to_string())).collect()
}

/// The RFC 6749 §5.2 error code of a failed token request, which must be
/// a parsed server response.
fn server_error<RE: std::error::Error>(
    e: RequestTokenError<RE, StandardErrorResponse<BasicErrorResponseType>>,
) -> BasicErrorResponseType {
    match e {
        RequestTokenError::ServerResponse(r) => r.error().clone(),
        other => panic!("expected an error response from the server, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The browser's part, by hand.

/// Cookies by name, as a browser keeps them for the gateway's origin.
#[derive(Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, reply: &Reply) {
        for v in reply.headers.get_all(http::header::SET_COOKIE) {
            let v = v.to_str().expect("ASCII cookie");
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            let expired = attrs.split(';').any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if expired {
                self.0.remove(name.trim());
            } else {
                self.0.insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    fn header(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }
}

fn html_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let entity_end = rest[i..].find(';').expect("entity ends") + i;
        let entity = &rest[i + 1..entity_end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => {
                char::from_u32(u32::from_str_radix(&e[2..], 16).expect("hex entity")).expect("char")
            }
            e if e.starts_with('#') => char::from_u32(e[1..].parse().expect("decimal entity")).expect("char"),
            e => panic!("unknown entity &{e};"),
        };
        out.push(c);
        rest = &rest[entity_end + 1..];
    }
    out.push_str(rest);
    out
}

/// The attributes of an HTML tag's text (`<input a="b" ...>`), unescaped.
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut attrs = HashMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(|c: char| c.is_whitespace()).next().expect("attribute name");
        let value_end = rest[eq + 2..].find('"').expect("closing quote") + eq + 2;
        attrs.insert(name.to_string(), html_unescape(&rest[eq + 2..value_end]));
        rest = &rest[value_end + 1..];
    }
    attrs
}

/// The page's one POST form: its action and its hidden fields, in order.
fn form(html: &str) -> (String, Vec<(String, String)>) {
    let start = html.find("<form").unwrap_or_else(|| panic!("no form in {html}"));
    let end = html[start..].find("</form>").expect("form ends") + start;
    let form_tag = &html[start..start + html[start..].find('>').expect("tag ends")];
    let form_attrs = attributes(form_tag);
    assert_eq!(form_attrs.get("method").map(String::as_str), Some("post"), "{form_tag}");
    let mut fields = Vec::new();
    let mut rest = &html[start..end];
    while let Some(i) = rest.find("<input") {
        let tag_end = rest[i..].find('>').expect("tag ends") + i;
        let attrs = attributes(&rest[i..tag_end]);
        if attrs.get("type").map(String::as_str) == Some("hidden") {
            fields.push((attrs["name"].clone(), attrs["value"].clone()));
        }
        rest = &rest[tag_end..];
    }
    (form_attrs["action"].clone(), fields)
}

fn encode(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// What the consent step should look like.
#[derive(Clone, Copy)]
enum Consent<'a> {
    /// A consent page listing these scope descriptions, to approve.
    Asked(&'a [&'a str]),
    /// None: alice already approved these scopes for `web`.
    Remembered,
}

/// Plays the browser from the authorization URL the library built to the
/// redirect back to the client: signs in as alice, approves on the consent
/// page if there is one. Returns the callback's query parameters.
async fn browse(gw: &Gateway, auth_url: &str, consent: Consent<'_>) -> BTreeMap<String, String> {
    let mut jar = Jar::default();

    // 1. The authorization URL: not signed in, so the login page.
    let login = get(auth_url, &[]).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    jar.take(&login);
    assert!(login.text().contains("<strong>Web Calendar</strong> wants to use your account"), "{}", login.text());
    let (action, mut fields) = form(&login.text());
    assert_eq!(action, "/oauth/login");
    assert_eq!(fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["csrf", "return_to"]);
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), "wonderland".into()));

    // 2. Sign in: 303 back to the authorization request, with a session.
    let signed_in = send(
        Method::POST,
        &gw.url(&action),
        &[("content-type", "application/x-www-form-urlencoded"), ("cookie", &jar.header())],
        encode(&fields),
    )
    .await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.text());
    jar.take(&signed_in);
    assert_eq!(jar.0.keys().collect::<Vec<_>>(), ["portcullis_session"]);
    let back = signed_in.header("location").expect("location").to_string();
    let auth_path = auth_url.strip_prefix(&gw.url("")).expect("the URL is the gateway's");
    assert_eq!(back, auth_path);

    // 3. The authorization request again: the consent page, or (consent
    // already given for these scopes) straight back to the client.
    let again = get(&gw.url(&back), &[("cookie", &jar.header())]).await;
    let approved = match consent {
        Consent::Remembered => again,
        Consent::Asked(descriptions) => {
            assert_eq!(again.status, StatusCode::OK, "{}", again.text());
            let html = again.text();
            assert!(html.contains("<h1>Allow Web Calendar?</h1>"), "{html}");
            assert!(html.contains("Signed in as <strong>alice</strong>"), "{html}");
            for description in descriptions {
                assert!(html.contains(description), "{description} not in {html}");
            }
            let (action, mut fields) = form(&html);
            assert_eq!(action, "/oauth/authorize");
            fields.push(("decision".into(), "approve".into()));
            // 4. Approve.
            send(
                Method::POST,
                &gw.url(&action),
                &[("content-type", "application/x-www-form-urlencoded"), ("cookie", &jar.header())],
                encode(&fields),
            )
            .await
        }
    };

    // A 303 to the client's redirect URI with the code.
    assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.text());
    let location = approved.header("location").expect("location");
    let query =
        location.strip_prefix(&format!("{REDIRECT}?")).unwrap_or_else(|| panic!("not the callback: {location}"));
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    assert_eq!(params.keys().collect::<Vec<_>>(), ["code", "iss", "state"], "{location}");
    // RFC 9207: the issuer the client configured, not just any server.
    assert_eq!(params["iss"], ISSUER);
    params
}

/// The library's authorization request (PKCE S256, random state, the
/// scopes), played through the browser; returns the code and verifier
/// after checking the state came back unchanged.
async fn authorize(gw: &Gateway, client: &WebClient, want: &[&str], consent: Consent<'_>) -> (String, String) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) =
        client.authorize_url(CsrfToken::new_random).add_scopes(scopes(want)).set_pkce_challenge(challenge).url();
    let sent: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(
        sent.keys().collect::<Vec<_>>(),
        ["client_id", "code_challenge", "code_challenge_method", "redirect_uri", "response_type", "scope", "state"]
    );
    assert_eq!(sent["code_challenge_method"], "S256");
    let callback = browse(gw, url.as_str(), consent).await;
    assert_eq!(&callback["state"], state.secret(), "the state came back unchanged");
    (callback["code"].clone(), verifier.secret().clone())
}

/// `GET /calendar/events` with `token` as a bearer header.
async fn calendar(gw: &Gateway, token: &AccessToken) -> Reply {
    get(&gw.url("/calendar/events"), &[("authorization", &format!("Bearer {}", token.secret()))]).await
}

/// `POST /calendar/events` (needs `calendar.write`) with `token`.
async fn write(gw: &Gateway, token: &AccessToken) -> Reply {
    send(
        Method::POST,
        &gw.url("/calendar/events"),
        &[("authorization", &format!("Bearer {}", token.secret()))],
        "event",
    )
    .await
}

fn scope_strings(v: Option<&Vec<Scope>>) -> Vec<String> {
    v.expect("scope present").iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------
// The tests.

/// Authorization code with PKCE, client_secret_basic (the library's
/// default): code exchange, a protected route, introspection, refresh with
/// rotation, revocation of the access token and then of the grant.
#[tokio::test]
async fn authorization_code_flow_with_client_secret_basic() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let http = HyperHttp::new();
    let web = client(&gw, "web", "app-secret", AuthType::BasicAuth);

    let (code, verifier) = authorize(
        &gw,
        &web,
        &["calendar.read", "calendar.write"],
        Consent::Asked(&["See your calendar", "Change your calendar"]),
    )
    .await;
    let token = web
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.clone()))
        .request_async(&http)
        .await
        .expect("the library accepts the token response");
    let sent = http.last();
    assert_eq!(sent.path, "/oauth/token");
    assert!(sent.basic, "client_secret_basic");
    assert_eq!(sent.form.keys().collect::<Vec<_>>(), ["code", "code_verifier", "grant_type", "redirect_uri"]);
    assert_eq!(sent.form["code_verifier"], verifier);
    assert_eq!(*token.token_type(), BasicTokenType::Bearer);
    assert_eq!(token.expires_in(), Some(Duration::from_secs(900)));
    assert_eq!(scope_strings(token.scopes()), ["calendar.read", "calendar.write"]);
    let first_refresh = token.refresh_token().expect("a refresh token").clone();
    let first_access = token.access_token().clone();

    // The access token opens the protected route, as alice via web.
    let reply = calendar(&gw, &first_access).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.uri, "/calendar/events");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-client-id"], "web");
    assert_eq!(seen.headers["x-auth-scope"], "calendar.read calendar.write");

    // RFC 7662 through the library.
    let info = web.introspect(&first_access).request_async(&http).await.expect("introspection");
    assert!(http.last().basic);
    assert!(info.active());
    assert_eq!(info.client_id().map(|c| c.as_str()), Some("web"));
    assert_eq!(info.sub(), Some("alice"));
    assert_eq!(info.username(), Some("alice"));
    assert_eq!(info.token_type(), Some(&BasicTokenType::Bearer));
    assert_eq!(scope_strings(info.scopes()), ["calendar.read", "calendar.write"]);
    assert_eq!(info.iss(), Some(ISSUER));
    assert_eq!(info.aud(), Some(&vec![ISSUER.to_string()]));
    assert!(info.jti().is_some_and(|j| !j.is_empty()));
    let exp = info.exp().expect("exp").timestamp();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now + 890..=now + 901).contains(&exp), "exp {exp} is not about 15 minutes from {now}");
    let rt_info = web
        .introspect(&AccessToken::new(first_refresh.secret().clone()))
        .set_token_type_hint("refresh_token")
        .request_async(&http)
        .await
        .expect("introspection of the refresh token");
    assert!(rt_info.active());
    assert_eq!(rt_info.token_type(), Some(&BasicTokenType::Extension("refresh_token".into())));

    // Refresh: a new pair; the used refresh token is spent.
    let refreshed = web.exchange_refresh_token(&first_refresh).request_async(&http).await.expect("refresh");
    assert_eq!(http.last().form.keys().collect::<Vec<_>>(), ["grant_type", "refresh_token"]);
    assert_eq!(*refreshed.token_type(), BasicTokenType::Bearer);
    assert_eq!(scope_strings(refreshed.scopes()), ["calendar.read", "calendar.write"]);
    let second_refresh = refreshed.refresh_token().expect("a rotated refresh token").clone();
    assert_ne!(second_refresh.secret(), first_refresh.secret(), "the refresh token rotated");
    assert_ne!(refreshed.access_token().secret(), first_access.secret());
    let old = web
        .introspect(&AccessToken::new(first_refresh.secret().clone()))
        .request_async(&http)
        .await
        .expect("introspection");
    assert!(!old.active(), "a used refresh token is inactive");
    assert!(old.scopes().is_none() && old.sub().is_none(), "{old:?}");
    let second_access = refreshed.access_token().clone();
    assert_eq!(calendar(&gw, &second_access).await.status, StatusCode::OK);
    upstream.next().await;

    // RFC 7009 through the library: the access token is refused at once.
    web.revoke_token(StandardRevocableToken::AccessToken(second_access.clone()))
        .expect("revocation URL set")
        .request_async(&http)
        .await
        .expect("revocation");
    let sent = http.last();
    assert_eq!(sent.path, "/oauth/revoke");
    assert_eq!(sent.form["token_type_hint"], "access_token");
    let refused = calendar(&gw, &second_access).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.header("www-authenticate").is_some_and(|c| c.contains("error=\"invalid_token\"")), "{refused:?}");
    assert!(!web.introspect(&second_access).request_async(&http).await.expect("introspection").active());
    // The grant itself lives on: the first access token still works.
    assert_eq!(calendar(&gw, &first_access).await.status, StatusCode::OK);
    upstream.next().await;

    // Revoking the refresh token ends the grant, access tokens included.
    web.revoke_token(StandardRevocableToken::RefreshToken(second_refresh.clone()))
        .expect("revocation URL set")
        .request_async(&http)
        .await
        .expect("revocation");
    assert_eq!(http.last().form["token_type_hint"], "refresh_token");
    assert_eq!(calendar(&gw, &first_access).await.status, StatusCode::UNAUTHORIZED);
    let e = web.exchange_refresh_token(&second_refresh).request_async(&http).await.expect_err("revoked");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// The same flow with client_secret_post; a refresh that narrows the
/// scope; consent remembered on a second authorization; and the replay
/// rules: a reused code or refresh token is `invalid_grant` and ends the
/// grant.
#[tokio::test]
async fn authorization_code_flow_with_client_secret_post_and_replay() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let http = HyperHttp::new();
    let web = client(&gw, "web", "app-secret", AuthType::RequestBody);

    let (code, verifier) = authorize(
        &gw,
        &web,
        &["calendar.read", "calendar.write"],
        Consent::Asked(&["See your calendar", "Change your calendar"]),
    )
    .await;
    let token = web
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.clone()))
        .request_async(&http)
        .await
        .expect("token");
    let sent = http.last();
    assert!(!sent.basic, "client_secret_post");
    assert_eq!(
        sent.form.keys().collect::<Vec<_>>(),
        ["client_id", "client_secret", "code", "code_verifier", "grant_type", "redirect_uri"]
    );
    assert_eq!(sent.form["client_id"], "web");
    assert_eq!(sent.form["client_secret"], "app-secret");
    assert_eq!(scope_strings(token.scopes()), ["calendar.read", "calendar.write"]);
    let access = token.access_token().clone();
    assert_eq!(write(&gw, &access).await.status, StatusCode::OK);

    // A refresh may narrow the scope: the new access token reads only.
    let refreshed = web
        .exchange_refresh_token(token.refresh_token().expect("refresh token"))
        .add_scope(Scope::new("calendar.read".into()))
        .request_async(&http)
        .await
        .expect("refresh");
    let sent = http.last();
    assert!(!sent.basic);
    assert_eq!(sent.form["scope"], "calendar.read");
    assert_eq!(scope_strings(refreshed.scopes()), ["calendar.read"]);
    let narrow = refreshed.access_token().clone();
    assert_eq!(calendar(&gw, &narrow).await.status, StatusCode::OK);
    let refused = write(&gw, &narrow).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.header("www-authenticate").is_some_and(|c| c.contains("scope=\"calendar.write\"")), "{refused:?}");

    // The code again: invalid_grant, and the grant it started is revoked.
    let e = web
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&http)
        .await
        .expect_err("a code is good once");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    assert_eq!(calendar(&gw, &access).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(calendar(&gw, &narrow).await.status, StatusCode::UNAUTHORIZED);
    let e = web
        .exchange_refresh_token(refreshed.refresh_token().expect("rotated"))
        .request_async(&http)
        .await
        .expect_err("grant revoked");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);

    // A second authorization for scopes alice approved already: no consent
    // page. Reusing a rotated refresh token revokes its family.
    let (code, verifier) = authorize(&gw, &web, &["calendar.read"], Consent::Remembered).await;
    let token = web
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&http)
        .await
        .expect("token");
    assert_eq!(scope_strings(token.scopes()), ["calendar.read"]);
    let first = token.refresh_token().expect("refresh token").clone();
    let rotated = web.exchange_refresh_token(&first).request_async(&http).await.expect("refresh");
    assert_eq!(calendar(&gw, rotated.access_token()).await.status, StatusCode::OK);
    let e = web.exchange_refresh_token(&first).request_async(&http).await.expect_err("reuse");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    assert_eq!(calendar(&gw, rotated.access_token()).await.status, StatusCode::UNAUTHORIZED);
    let e = web
        .exchange_refresh_token(rotated.refresh_token().expect("rotated"))
        .request_async(&http)
        .await
        .expect_err("family revoked");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    gw.stop().await;
}

/// A refresh request the server refuses (RFC 6749 §5.2) changes nothing:
/// the client may retry with the same refresh token. Asking for a scope
/// beyond the grant is `invalid_scope`; the same token without it works.
#[tokio::test]
async fn a_refused_refresh_leaves_the_refresh_token_usable() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let http = HyperHttp::new();
    let web = client(&gw, "web", "app-secret", AuthType::BasicAuth);

    let (code, verifier) = authorize(&gw, &web, &["calendar.read"], Consent::Asked(&["See your calendar"])).await;
    let token = web
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&http)
        .await
        .expect("token");
    let refresh = token.refresh_token().expect("refresh token");
    let e = web
        .exchange_refresh_token(refresh)
        .add_scope(Scope::new("calendar.write".into()))
        .request_async(&http)
        .await
        .expect_err("wider than the grant");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidScope);
    let retried = web.exchange_refresh_token(refresh).request_async(&http).await;
    let retried = retried.expect("the refused request did not spend the refresh token");
    assert_eq!(scope_strings(retried.scopes()), ["calendar.read"]);
    assert_eq!(calendar(&gw, token.access_token()).await.status, StatusCode::OK, "the grant lives");
    gw.stop().await;
}

/// RFC 6749 §6: a refresh may narrow the new access token's scope, but "if
/// a new refresh token is issued, the refresh token scope MUST be identical
/// to that of the refresh token included by the client in the request".
#[tokio::test]
async fn a_narrowed_refresh_keeps_the_refresh_tokens_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let http = HyperHttp::new();
    let web = client(&gw, "web", "app-secret", AuthType::BasicAuth);

    let (code, verifier) = authorize(
        &gw,
        &web,
        &["calendar.read", "calendar.write"],
        Consent::Asked(&["See your calendar", "Change your calendar"]),
    )
    .await;
    let token = web
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&http)
        .await
        .expect("token");
    let narrowed = web
        .exchange_refresh_token(token.refresh_token().expect("refresh token"))
        .add_scope(Scope::new("calendar.read".into()))
        .request_async(&http)
        .await
        .expect("narrowing refresh");
    assert_eq!(scope_strings(narrowed.scopes()), ["calendar.read"]);
    let rotated = narrowed.refresh_token().expect("rotated refresh token");
    let info = web
        .introspect(&AccessToken::new(rotated.secret().clone()))
        .set_token_type_hint("refresh_token")
        .request_async(&http)
        .await
        .expect("introspection");
    assert!(info.active());
    assert_eq!(scope_strings(info.scopes()), ["calendar.read", "calendar.write"], "the refresh token's scope");
    // With no scope asked, a refresh grants the whole scope again.
    let full = web.exchange_refresh_token(rotated).request_async(&http).await.expect("refresh");
    assert_eq!(scope_strings(full.scopes()), ["calendar.read", "calendar.write"]);
    gw.stop().await;
}

/// The client credentials grant through the library, with both client
/// authentication methods.
#[tokio::test]
async fn client_credentials_grant() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let http = HyperHttp::new();

    for auth_type in [AuthType::BasicAuth, AuthType::RequestBody] {
        let basic = matches!(auth_type, AuthType::BasicAuth);
        let web = client(&gw, "web", "app-secret", auth_type);
        let token = web
            .exchange_client_credentials()
            .add_scope(Scope::new("calendar.read".into()))
            .request_async(&http)
            .await
            .expect("client credentials token");
        let sent = http.last();
        assert_eq!(sent.basic, basic);
        assert_eq!(sent.form["grant_type"], "client_credentials");
        assert_eq!(sent.form["scope"], "calendar.read");
        assert_eq!(*token.token_type(), BasicTokenType::Bearer);
        assert_eq!(token.expires_in(), Some(Duration::from_secs(900)));
        assert_eq!(scope_strings(token.scopes()), ["calendar.read"]);
        assert!(token.refresh_token().is_none(), "no refresh token without a user (RFC 6749 §4.4.3)");

        let reply = calendar(&gw, token.access_token()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = upstream.next().await;
        assert_eq!(seen.headers["x-auth-subject"], "web", "the client is its own subject");
        assert_eq!(seen.headers["x-auth-client-id"], "web");
        let info = web.introspect(token.access_token()).request_async(&http).await.expect("introspection");
        assert!(info.active());
        assert_eq!(info.sub(), Some("web"));
        assert_eq!(scope_strings(info.scopes()), ["calendar.read"]);
    }

    // No scope asked: all of the client's.
    let web = client(&gw, "web", "app-secret", AuthType::BasicAuth);
    let token = web.exchange_client_credentials().request_async(&http).await.expect("token");
    assert!(!http.last().form.contains_key("scope"));
    assert_eq!(scope_strings(token.scopes()), ["calendar.read", "calendar.write"]);
    // A scope the client is not allowed: invalid_scope.
    let e = web
        .exchange_client_credentials()
        .add_scope(Scope::new("admin".into()))
        .request_async(&http)
        .await
        .expect_err("not web's scope");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidScope);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// Error responses parse as the library's RFC 6749 §5.2 errors.
#[tokio::test]
async fn errors_map_to_the_librarys_error_responses() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(&upstream)).await;
    let http = HyperHttp::new();

    // A wrong secret, each way: invalid_client (a 401 with a JSON body).
    for auth_type in [AuthType::BasicAuth, AuthType::RequestBody] {
        let wrong = client(&gw, "web", "not-the-secret", auth_type);
        let e = wrong.exchange_client_credentials().request_async(&http).await.expect_err("wrong secret");
        match e {
            RequestTokenError::ServerResponse(r) => {
                assert_eq!(*r.error(), BasicErrorResponseType::InvalidClient);
                assert_eq!(r.error_description().map(String::as_str), Some("Client authentication failed"));
            }
            other => panic!("expected invalid_client, got {other:?}"),
        }
        let e = wrong
            .exchange_code(AuthorizationCode::new("whatever".into()))
            .request_async(&http)
            .await
            .expect_err("wrong secret");
        assert_eq!(server_error(e), BasicErrorResponseType::InvalidClient);
        // Revocation and introspection authenticate the same way.
        let e = wrong
            .revoke_token(StandardRevocableToken::AccessToken(AccessToken::new("x".into())))
            .expect("revocation URL set")
            .request_async(&http)
            .await
            .expect_err("wrong secret");
        match e {
            RequestTokenError::ServerResponse(r) => {
                assert_eq!(*r.error(), RevocationErrorResponseType::Basic(BasicErrorResponseType::InvalidClient))
            }
            other => panic!("expected invalid_client, got {other:?}"),
        }
        let e = wrong.introspect(&AccessToken::new("x".into())).request_async(&http).await.expect_err("wrong secret");
        assert_eq!(server_error(e), BasicErrorResponseType::InvalidClient);
    }
    // The library itself refuses a revocation endpoint without TLS.
    let plain = client(&gw, "web", "app-secret", AuthType::BasicAuth)
        .set_revocation_url(RevocationUrl::new(gw.url("/oauth/revoke")).expect("revocation url"));
    let refused = plain.revoke_token(StandardRevocableToken::AccessToken(AccessToken::new("x".into())));
    assert!(matches!(refused, Err(ConfigurationError::InsecureUrl("revocation"))), "{refused:?}");
    // An unknown client is no different.
    let stranger = client(&gw, "nobody", "app-secret", AuthType::BasicAuth);
    let e = stranger.exchange_client_credentials().request_async(&http).await.expect_err("unknown client");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidClient);

    let web = client(&gw, "web", "app-secret", AuthType::BasicAuth);
    // A code that was never issued: invalid_grant.
    let e = web
        .exchange_code(AuthorizationCode::new("no-such-code".into()))
        .set_pkce_verifier(PkceCodeVerifier::new("v".repeat(43)))
        .request_async(&http)
        .await
        .expect_err("bad code");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    // A real code with the wrong verifier: invalid_grant too.
    let (code, _) = authorize(&gw, &web, &["calendar.read"], Consent::Asked(&["See your calendar"])).await;
    let (_, wrong_verifier) = PkceCodeChallenge::new_random_sha256();
    let e = web
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(wrong_verifier)
        .request_async(&http)
        .await
        .expect_err("wrong verifier");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    // A bad refresh token: invalid_grant.
    let e = web
        .exchange_refresh_token(&RefreshToken::new("pcr_nonsense".into()))
        .request_async(&http)
        .await
        .expect_err("bad refresh token");
    assert_eq!(server_error(e), BasicErrorResponseType::InvalidGrant);
    // A client not registered for the grant: unauthorized_client.
    let other = client(&gw, "other", "other-secret", AuthType::BasicAuth);
    let e = other
        .exchange_refresh_token(&RefreshToken::new("pcr_nonsense".into()))
        .request_async(&http)
        .await
        .expect_err("other may not refresh");
    assert_eq!(server_error(e), BasicErrorResponseType::UnauthorizedClient);
    gw.stop().await;
}

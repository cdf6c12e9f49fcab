//! The embedded authorization server over real sockets: the token endpoint
//! (RFC 6749 §2.3.1 client authentication, §3.1/§3.2 request rules, §4.4
//! client credentials grant, §5.1 success and §5.2 error responses), the
//! access tokens it mints (RFC 9068 JWTs, verified here with the published
//! RFC 7517 key; opaque handles), revocation (RFC 7009), metadata
//! (RFC 8414), key and token persistence across restarts, and the token
//! endpoint's metrics.

mod support;

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use portcullis::config::Config;
use serde_json::Value;
use support::{APP_SECRET_HASH, Gateway, Reply, Upstream, config_toml, get, issuing_jwts, send, with_server_line};

const FORM: &str = "application/x-www-form-urlencoded";
const ISSUER: &str = "http://127.0.0.1:8080";
const APP_SCOPES: &str = "admin calendar.read calendar.write";
const TTL_LINE: &str = "access_token_ttl = \"15m\"";

// ---------------------------------------------------------------------------
// Helpers

/// `Authorization: Basic` for a client (RFC 6749 §2.3.1: id and secret are
/// form-urlencoded before they are joined and base64-encoded).
fn basic(client_id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(client_id), enc(secret))))
}

/// A form body from pairs, properly encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// POSTs `body` as a form to `path`, with extra `headers`.
async fn post_form(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![("content-type", FORM)];
    all.extend_from_slice(headers);
    send(Method::POST, &gw.url(path), &all, body.to_string()).await
}

async fn token_request(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Reply {
    post_form(gw, "/oauth/token", headers, body).await
}

/// A `client_credentials` request authenticated with `client_secret_post`.
async fn post_auth(gw: &Gateway, client: &str, secret: &str, scope: Option<&str>) -> Reply {
    let mut pairs = vec![("grant_type", "client_credentials"), ("client_id", client), ("client_secret", secret)];
    if let Some(s) = scope {
        pairs.push(("scope", s));
    }
    token_request(gw, &[], &form(&pairs)).await
}

/// Asserts a successful RFC 6749 §5.1 response and returns its body.
fn assert_token_response(reply: &Reply, scope: &str) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    let body = reply.json();
    let keys: BTreeSet<&str> = body.as_object().expect("a JSON object").keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["access_token", "expires_in", "scope", "token_type"]), "{body}");
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() >= 22 && t.is_ascii()), "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["scope"], scope);
    body
}

fn access_token(reply: &Reply) -> String {
    reply.json()["access_token"].as_str().expect("access_token").to_string()
}

/// Asserts an RFC 6749 §5.2 error response.
fn assert_oauth_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    let body = reply.json();
    assert_eq!(body["error"], code, "{body}");
    // §5.2: error_description is %x20-21 / %x23-5B / %x5D-7E.
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        !description.is_empty() && description.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'),
        "{body}"
    );
    if code == "invalid_client" {
        assert_eq!(reply.header("www-authenticate"), Some("Basic realm=\"portcullis\""));
    } else {
        assert_eq!(reply.header("www-authenticate"), None);
    }
}

/// The decoded JOSE header and claims of a JWT, and its three raw parts.
fn decode_jwt(token: &str) -> (Value, Value, [String; 3]) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact serialization: {token}");
    let json =
        |s: &str| -> Value { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).expect("base64url")).expect("JSON") };
    (json(parts[0]), json(parts[1]), [parts[0].into(), parts[1].into(), parts[2].into()])
}

async fn jwks(gw: &Gateway, path: &str) -> Value {
    let reply = get(&gw.url(path), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// Verifies the Ed25519 signature of `token` with the `x` of `jwk`.
fn signature_verifies(token: &str, jwk: &Value) -> bool {
    use ed25519_dalek::Verifier as _;
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().expect("x")).expect("x is base64url");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x.try_into().expect("32 bytes")).expect("an Ed25519 point");
    let (signing_input, signature) = token.rsplit_once('.').expect("a JWS");
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&signature) else {
        return false;
    };
    key.verify(signing_input.as_bytes(), &signature).is_ok()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

/// GET /calendar/x with a bearer header.
async fn call_calendar(gw: &Gateway, token: &str) -> Reply {
    get(&gw.url("/calendar/x"), &[("authorization", &format!("Bearer {token}"))]).await
}

/// A third client that may only use the authorization code grant.
const WEB_CLIENT: &str = r#"
[[clients]]
client_id = "web"
client_secret_hash = "HASH"
scopes = ["calendar.read"]
grant_types = ["authorization_code"]
redirect_uris = ["https://app.example/cb"]
"#;

// ---------------------------------------------------------------------------
// 1. client_credentials with both client authentication methods

#[tokio::test]
async fn client_secret_basic_issues_a_bearer_token() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let reply =
        token_request(&gw, &[("authorization", &basic("app", "app-secret"))], "grant_type=client_credentials").await;
    assert_token_response(&reply, APP_SCOPES);

    // The token is accepted where the gateway enforces it.
    let call = call_calendar(&gw, &access_token(&reply)).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    assert_eq!(upstream.next().await.headers["x-auth-client-id"], "app");

    // The scheme name is case-insensitive (RFC 9110 §11.1), and a charset
    // parameter on the media type is allowed.
    let reply = send(
        Method::POST,
        &gw.url("/oauth/token"),
        &[
            ("content-type", "application/x-www-form-urlencoded; charset=UTF-8"),
            ("authorization", &basic("other", "other-secret").replacen("Basic", "basic", 1)),
        ],
        "grant_type=client_credentials",
    )
    .await;
    assert_token_response(&reply, "calendar.read");
    gw.stop().await;
}

#[tokio::test]
async fn client_secret_post_issues_a_bearer_token() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let reply = post_auth(&gw, "app", "app-secret", None).await;
    assert_token_response(&reply, APP_SCOPES);
    let reply = post_auth(&gw, "other", "other-secret", Some("calendar.read")).await;
    assert_token_response(&reply, "calendar.read");
    let call = call_calendar(&gw, &access_token(&reply)).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 2. The access token is an RFC 9068 JWT signed with the published key

#[tokio::test]
async fn access_token_is_an_rfc9068_jwt_signed_with_the_published_key() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&issuing_jwts(&config_toml(upstream.addr, ""))).await;
    let keys = jwks(&gw, "/oauth/jwks").await;
    let jwk = &keys["keys"][0];

    let before = now_unix();
    let first = access_token(&post_auth(&gw, "app", "app-secret", Some("calendar.read")).await);
    let after = now_unix();
    let (header, claims, _) = decode_jwt(&first);

    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    assert_eq!(header["kid"], jwk["kid"], "{header} vs {keys}");
    for forbidden in ["jku", "x5u", "jwk"] {
        assert!(header.get(forbidden).is_none(), "{header}");
    }
    assert!(signature_verifies(&first, jwk), "signature checks out");

    assert_eq!(claims["iss"], ISSUER, "{claims}");
    assert_eq!(claims["sub"], "app");
    assert_eq!(claims["client_id"], "app");
    assert_eq!(claims["aud"], ISSUER, "the default audience is the issuer");
    assert_eq!(claims["scope"], "calendar.read");
    let iat = claims["iat"].as_i64().expect("iat is a number");
    let exp = claims["exp"].as_i64().expect("exp is a number");
    assert!((before..=after).contains(&iat), "{iat} not in {before}..={after}");
    assert_eq!(exp - iat, 900);
    let jti = claims["jti"].as_str().expect("jti is a string");
    assert!(jti.len() >= 22, "{jti}");

    let second = access_token(&post_auth(&gw, "app", "app-secret", Some("calendar.read")).await);
    let (_, claims2, _) = decode_jwt(&second);
    assert_ne!(claims2["jti"], claims["jti"], "every token has its own jti");
    assert_ne!(first, second);

    // A tampered token fails the signature check a resource server does, and
    // the gateway refuses it too.
    let tampered = {
        let mut c = claims.clone();
        c["scope"] = "admin calendar.read".into();
        let (_, _, parts) = decode_jwt(&first);
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(c.to_string()), parts[2])
    };
    assert!(!signature_verifies(&tampered, jwk));
    let refused = get(&gw.url("/admin/x"), &[("authorization", &format!("Bearer {tampered}"))]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text());
    gw.stop().await;
}

#[tokio::test]
async fn configured_audience_is_the_aud_claim_and_tokens_still_work() {
    let mut upstream = Upstream::start().await;
    let toml =
        config_toml(upstream.addr, "").replace(TTL_LINE, &format!("{TTL_LINE}\naudience = \"https://api.example\""));
    let gw = Gateway::start(&issuing_jwts(&toml)).await;

    let token = access_token(&post_auth(&gw, "other", "other-secret", None).await);
    let (_, claims, _) = decode_jwt(&token);
    assert_eq!(claims["aud"], "https://api.example", "{claims}");
    assert_eq!(claims["iss"], ISSUER, "{claims}");

    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    assert_eq!(upstream.next().await.headers["x-auth-subject"], "other");

    // A token minted for the default audience (the issuer) by another
    // gateway sharing nothing is not accepted here: refused case.
    let plain = Gateway::start(&issuing_jwts(&config_toml(upstream.addr, ""))).await;
    let foreign = access_token(&post_auth(&plain, "other", "other-secret", None).await);
    let call = call_calendar(&gw, &foreign).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    assert!(upstream.saw_nothing());
    plain.stop().await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Scope (RFC 6749 §3.3)

#[tokio::test]
async fn scope_omitted_or_empty_grants_all_the_clients_scopes() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&issuing_jwts(&config_toml(upstream.addr, ""))).await;

    let omitted = post_auth(&gw, "app", "app-secret", None).await;
    assert_token_response(&omitted, APP_SCOPES);
    let (_, claims, _) = decode_jwt(&access_token(&omitted));
    assert_eq!(claims["scope"], APP_SCOPES);

    // A parameter sent without a value is treated as omitted (RFC 6749 §3.1).
    let empty =
        token_request(&gw, &[], "grant_type=client_credentials&client_id=app&client_secret=app-secret&scope=").await;
    assert_token_response(&empty, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn scope_subset_is_granted_exactly() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&issuing_jwts(&config_toml(upstream.addr, ""))).await;

    let reply = post_auth(&gw, "app", "app-secret", Some("calendar.read")).await;
    assert_token_response(&reply, "calendar.read");
    let token = access_token(&reply);
    let (_, claims, _) = decode_jwt(&token);
    assert_eq!(claims["scope"], "calendar.read");
    // The narrower token really is narrower on a route.
    let read = call_calendar(&gw, &token).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    upstream.next().await;
    let admin = get(&gw.url("/admin/x"), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(admin.status, StatusCode::FORBIDDEN, "{}", admin.text());

    // Order, duplicates and runs of spaces do not matter; the answer is the
    // canonical set.
    let reply = post_auth(&gw, "app", "app-secret", Some("calendar.write  admin calendar.write")).await;
    assert_token_response(&reply, "admin calendar.write");
    let reply = post_auth(&gw, "app", "app-secret", Some(APP_SCOPES)).await;
    assert_token_response(&reply, APP_SCOPES);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn scope_outside_the_clients_set_is_invalid_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    for scope in ["calendar.delete", "calendar.read calendar.delete", "admin"] {
        let reply = post_auth(&gw, "other", "other-secret", Some(scope)).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    }
    // Allowed case for the same client.
    let reply = post_auth(&gw, "other", "other-secret", Some("calendar.read")).await;
    assert_token_response(&reply, "calendar.read");
    gw.stop().await;
}

#[tokio::test]
async fn malformed_scope_is_invalid_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    // `"`, `\`, a tab, a control character, non-ASCII: none is a scope-token.
    for encoded in ["%22admin%22", "calendar.read%20a%5Cb", "admin%09calendar.read", "admin%00", "caf%C3%A9"] {
        let reply = token_request(
            &gw,
            &[],
            &format!("grant_type=client_credentials&client_id=app&client_secret=app-secret&scope={encoded}"),
        )
        .await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    }
    gw.stop().await;
}

/// RFC 6749 §3.3: `scope = scope-token *( SP scope-token )`, so a value of
/// only spaces is not a scope list. It must not mint a token with an empty
/// scope (and `"scope": ""` in the response).
#[tokio::test]
async fn whitespace_only_scope_is_invalid_scope() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    for encoded in ["+", "%20%20"] {
        let reply = token_request(
            &gw,
            &[],
            &format!("grant_type=client_credentials&client_id=app&client_secret=app-secret&scope={encoded}"),
        )
        .await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 4. Client authentication failures (RFC 6749 §2.3.1, §5.2)

#[tokio::test]
async fn wrong_or_unknown_credentials_are_invalid_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let grant = "grant_type=client_credentials";

    // Wrong secret, Basic and post.
    let reply = token_request(&gw, &[("authorization", &basic("app", "wrong"))], grant).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = post_auth(&gw, "app", "wrong", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // Another client's secret.
    let reply = post_auth(&gw, "app", "other-secret", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // Empty secret in Basic.
    let reply = token_request(&gw, &[("authorization", &basic("app", ""))], grant).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // Unknown client, Basic and post.
    let reply = token_request(&gw, &[("authorization", &basic("nobody", "app-secret"))], grant).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = post_auth(&gw, "nobody", "app-secret", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");

    // Allowed case on the same gateway.
    assert_token_response(&post_auth(&gw, "app", "app-secret", None).await, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_incomplete_credentials_are_invalid_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let reply = token_request(&gw, &[], "grant_type=client_credentials").await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = token_request(&gw, &[], "grant_type=client_credentials&client_id=app").await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = token_request(&gw, &[], "grant_type=client_credentials&client_secret=app-secret").await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = token_request(&gw, &[], "grant_type=client_credentials&client_id=app&client_secret=").await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    gw.stop().await;
}

#[tokio::test]
async fn malformed_basic_header_is_invalid_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let grant = "grant_type=client_credentials";

    let no_colon = format!("Basic {}", STANDARD.encode("app"));
    let empty_id = format!("Basic {}", STANDARD.encode(":app-secret"));
    let bad_escape = format!("Basic {}", STANDARD.encode("app:%ZZ"));
    for header in ["Basic !!!not-base64!!!", "Basic", no_colon.as_str(), empty_id.as_str(), bad_escape.as_str()] {
        let reply = token_request(&gw, &[("authorization", header)], grant).await;
        assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    }

    // Two Authorization headers: ambiguous, refused even if one is right.
    let good = basic("app", "app-secret");
    let reply = send(
        Method::POST,
        &gw.url("/oauth/token"),
        &[("content-type", FORM), ("authorization", &good), ("authorization", &good)],
        grant,
    )
    .await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");

    // Allowed case: the same header once.
    let reply = token_request(&gw, &[("authorization", &good)], grant).await;
    assert_token_response(&reply, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn two_authentication_methods_are_invalid_request() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let good = basic("app", "app-secret");

    for body in [
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
        "grant_type=client_credentials&client_secret=app-secret",
    ] {
        let reply = token_request(&gw, &[("authorization", &good)], body).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }
    gw.stop().await;
}

/// RFC 6749 §3.2.1: "A client MAY use the client_id request parameter to
/// identify itself when sending requests to the token endpoint." A
/// `client_id` alone is identification, not a second authentication method
/// (§2.3.1 forbids only the latter), so Basic plus the same `client_id` in
/// the body must be served. A `client_id` naming another client contradicts
/// the header and is refused.
#[tokio::test]
async fn basic_auth_with_the_same_client_id_in_the_body_is_served() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let good = basic("app", "app-secret");

    let reply = token_request(&gw, &[("authorization", &good)], "grant_type=client_credentials&client_id=other").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    let reply = token_request(&gw, &[("authorization", &good)], "grant_type=client_credentials&client_id=app").await;
    assert_token_response(&reply, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn a_proven_secret_does_not_make_a_wrong_one_pass() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    assert_token_response(&post_auth(&gw, "app", "app-secret", None).await, APP_SCOPES);
    // After the secret was proven once, a wrong secret still fails ...
    let reply = post_auth(&gw, "app", "app-secret-", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // ... another client's proven secret does not carry over ...
    assert_token_response(&post_auth(&gw, "other", "other-secret", None).await, "calendar.read");
    let reply = post_auth(&gw, "other", "app-secret", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // ... and the right secret keeps working.
    let reply =
        token_request(&gw, &[("authorization", &basic("app", "app-secret"))], "grant_type=client_credentials").await;
    assert_token_response(&reply, APP_SCOPES);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Request errors (RFC 6749 §3.1, §3.2, §5.2)

#[tokio::test]
async fn grant_type_is_required_and_must_be_supported() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");

    let reply = token_request(&gw, &[("authorization", &auth)], "scope=admin").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let reply = token_request(&gw, &[("authorization", &auth)], "grant_type=").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    for grant in ["password", "implicit", "urn:ietf:params:oauth:grant-type:jwt-bearer", "Client_Credentials"] {
        let body = form(&[("grant_type", grant), ("username", "u"), ("password", "p")]);
        let reply = token_request(&gw, &[("authorization", &auth)], &body).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // Supported grants that this client is not registered for.
    for grant in ["authorization_code", "refresh_token"] {
        let body = form(&[("grant_type", grant), ("code", "c"), ("refresh_token", "r")]);
        let reply = token_request(&gw, &[("authorization", &auth)], &body).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unauthorized_client");
    }

    let reply = token_request(&gw, &[("authorization", &auth)], "grant_type=client_credentials").await;
    assert_token_response(&reply, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn repeated_parameters_are_invalid_request() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");

    for body in [
        "grant_type=client_credentials&scope=admin&scope=admin",
        "grant_type=client_credentials&scope=admin&scope=calendar.read",
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=&scope=admin",
    ] {
        let reply = token_request(&gw, &[("authorization", &auth)], body).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let reply =
        token_request(&gw, &[], "grant_type=client_credentials&client_id=app&client_id=app&client_secret=app-secret")
            .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    // Unrecognised parameters are ignored (RFC 6749 §3.2).
    let reply = token_request(
        &gw,
        &[("authorization", &auth)],
        "grant_type=client_credentials&scope=admin&resource_hint=x&x=1",
    )
    .await;
    assert_token_response(&reply, "admin");
    gw.stop().await;
}

#[tokio::test]
async fn token_endpoint_accepts_only_post() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");

    // The code answers a non-POST with 400 invalid_request (RFC 6749 §3.2:
    // the client MUST use POST), not 405.
    let reply = get(&gw.url("/oauth/token?grant_type=client_credentials"), &[("authorization", &auth)]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let reply = send(
        Method::PUT,
        &gw.url("/oauth/token"),
        &[("content-type", FORM), ("authorization", &auth)],
        "grant_type=client_credentials",
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    gw.stop().await;
}

#[tokio::test]
async fn body_must_be_form_urlencoded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");

    for content_type in [Some("application/json"), Some("text/plain"), Some("multipart/form-data; boundary=x"), None] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        let body = if content_type == Some("application/json") {
            r#"{"grant_type":"client_credentials"}"#
        } else {
            "grant_type=client_credentials"
        };
        let reply = send(Method::POST, &gw.url("/oauth/token"), &headers, body.to_string()).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }

    // Media type names are case-insensitive.
    let reply = send(
        Method::POST,
        &gw.url("/oauth/token"),
        &[("authorization", auth.as_str()), ("content-type", "Application/X-WWW-Form-URLEncoded")],
        "grant_type=client_credentials",
    )
    .await;
    assert_token_response(&reply, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn client_secret_in_the_url_is_invalid_request() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let reply =
        post_form(&gw, "/oauth/token?client_secret=app-secret", &[], "grant_type=client_credentials&client_id=app")
            .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    // Even when the body authenticates correctly: the secret has leaked.
    let reply = post_form(
        &gw,
        "/oauth/token?client_id=app&client_secret=app-secret",
        &[],
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    // A query without credentials does not stop a good request.
    let reply = post_form(
        &gw,
        "/oauth/token?trace=1",
        &[],
        "grant_type=client_credentials&client_id=app&client_secret=app-secret",
    )
    .await;
    assert_token_response(&reply, APP_SCOPES);
    gw.stop().await;
}

#[tokio::test]
async fn body_over_max_form_body_bytes_is_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");
    let base = "grant_type=client_credentials&pad=";
    let padded = |len: usize| format!("{base}{}", "x".repeat(len - base.len()));

    // Exactly max_form_body_bytes (4096) is accepted ...
    let body = padded(4096);
    assert_eq!(body.len(), 4096);
    let reply = token_request(&gw, &[("authorization", &auth)], &body).await;
    assert_token_response(&reply, APP_SCOPES);

    // ... one byte more is not. The token endpoint answers 400
    // invalid_request (unlike the proxy's form-body limit, which is a 413).
    for len in [4097, 64 * 1024] {
        let reply = token_request(&gw, &[("authorization", &auth)], &padded(len)).await;
        assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 6. unauthorized_client

#[tokio::test]
async fn client_without_the_grant_is_unauthorized_client() {
    let upstream = Upstream::start().await;
    let extra = WEB_CLIENT.replace("HASH", APP_SECRET_HASH);
    let gw = Gateway::start(&config_toml(upstream.addr, &extra)).await;

    let reply = post_auth(&gw, "web", "app-secret", None).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unauthorized_client");
    let reply = token_request(
        &gw,
        &[("authorization", &basic("web", "app-secret"))],
        "grant_type=client_credentials&scope=calendar.read",
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "unauthorized_client");
    // Authentication comes first: a wrong secret is still invalid_client,
    // so the grant check reveals nothing to an unauthenticated caller.
    let reply = post_auth(&gw, "web", "wrong", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");

    // Allowed case: a client that has the grant, same secret hash.
    assert_token_response(&post_auth(&gw, "app", "app-secret", None).await, APP_SCOPES);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 7. client_secret_env

#[tokio::test]
async fn client_secret_env_authenticates() {
    let mut upstream = Upstream::start().await;
    let special = "p@ss:w%rd+ &=é";
    let extra = r#"
[[clients]]
client_id = "envy"
client_secret_env = "X_SECRET"
scopes = ["calendar.read"]
grant_types = ["client_credentials"]

[[clients]]
client_id = "odd"
client_secret_env = "Y_SECRET"
scopes = ["calendar.read"]
grant_types = ["client_credentials"]
"#;
    let toml = config_toml(upstream.addr, extra);
    let config = Config::parse(&toml, "t", &|v| match v {
        "X_SECRET" => Some("from-env".to_string()),
        "Y_SECRET" => Some(special.to_string()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start_config(config).await;

    let reply = post_auth(&gw, "envy", "from-env", None).await;
    assert_token_response(&reply, "calendar.read");
    let call = call_calendar(&gw, &access_token(&reply)).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    assert_eq!(upstream.next().await.headers["x-auth-client-id"], "envy");
    let reply =
        token_request(&gw, &[("authorization", &basic("envy", "from-env"))], "grant_type=client_credentials").await;
    assert_token_response(&reply, "calendar.read");

    // Refused: wrong secret, and the variable's name is not the secret.
    for secret in ["from-env-", "X_SECRET", ""] {
        let reply =
            token_request(&gw, &[("authorization", &basic("envy", secret))], "grant_type=client_credentials").await;
        assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    }

    // A secret with ':', '%', '+', spaces and non-ASCII survives both
    // encodings: form-urlencoded inside Basic (RFC 6749 §2.3.1) and in a body.
    let reply = token_request(&gw, &[("authorization", &basic("odd", special))], "grant_type=client_credentials").await;
    assert_token_response(&reply, "calendar.read");
    let reply = post_auth(&gw, "odd", special, None).await;
    assert_token_response(&reply, "calendar.read");
    // Sent raw (not form-encoded) in Basic, it is a different secret.
    let raw = format!("Basic {}", STANDARD.encode(format!("odd:{special}")));
    let reply = token_request(&gw, &[("authorization", &raw)], "grant_type=client_credentials").await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Authorization server metadata (RFC 8414)

#[tokio::test]
async fn metadata_describes_the_endpoints() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let reply = get(&gw.url("/.well-known/oauth-authorization-server"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let meta = reply.json();
    assert_eq!(meta["issuer"], ISSUER, "{meta}");
    assert_eq!(meta["token_endpoint"], format!("{ISSUER}/oauth/token"));
    assert_eq!(meta["jwks_uri"], format!("{ISSUER}/oauth/jwks"));
    assert_eq!(meta["revocation_endpoint"], format!("{ISSUER}/oauth/revoke"));
    assert_eq!(
        meta["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token", "client_credentials"])
    );
    assert_eq!(meta["authorization_endpoint"], format!("{ISSUER}/oauth/authorize"));
    assert_eq!(meta["introspection_endpoint"], format!("{ISSUER}/oauth/introspect"));
    assert_eq!(meta["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(meta["authorization_response_iss_parameter_supported"], true);
    // "none": public clients identify themselves with client_id alone.
    for field in ["token_endpoint_auth_methods_supported", "revocation_endpoint_auth_methods_supported"] {
        let methods: BTreeSet<&str> = meta[field]
            .as_array()
            .unwrap_or_else(|| panic!("{field} in {meta}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(methods, BTreeSet::from(["client_secret_basic", "client_secret_post", "none"]), "{field}");
    }
    assert_eq!(meta["scopes_supported"], serde_json::json!(["admin", "calendar.read", "calendar.write"]));
    assert!(meta["response_types_supported"].is_array(), "required by RFC 8414 §2");

    // The advertised endpoints are the ones served.
    let path = |field: &str| {
        meta[field]
            .as_str()
            .and_then(|u| u.strip_prefix(ISSUER))
            .unwrap_or_else(|| panic!("{field} under the issuer"))
            .to_string()
    };
    let reply =
        token_request(&gw, &[("authorization", &basic("app", "app-secret"))], "grant_type=client_credentials").await;
    assert_eq!(path("token_endpoint"), "/oauth/token");
    assert_token_response(&reply, APP_SCOPES);
    let keys = jwks(&gw, &path("jwks_uri")).await;
    assert!(keys["keys"].is_array(), "{keys}");
    let reply = post_form(
        &gw,
        &path("revocation_endpoint"),
        &[("authorization", &basic("app", "app-secret"))],
        "token=unknown",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // Only GET and HEAD.
    for method in [Method::POST, Method::DELETE] {
        let reply =
            send(method, &gw.url("/.well-known/oauth-authorization-server"), &[("content-type", FORM)], "x=1").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    }
    let head = send(Method::HEAD, &gw.url("/.well-known/oauth-authorization-server"), &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn issuer_with_a_path_moves_every_endpoint_under_it() {
    let mut upstream = Upstream::start().await;
    let issuer = format!("{ISSUER}/auth");
    let toml =
        config_toml(upstream.addr, "").replace(&format!("issuer = \"{ISSUER}\""), &format!("issuer = \"{issuer}\""));
    let gw = Gateway::start(&issuing_jwts(&toml)).await;

    // RFC 8414 §3.1: the well-known segment goes between host and path.
    let reply = get(&gw.url("/.well-known/oauth-authorization-server/auth"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let meta = reply.json();
    assert_eq!(meta["issuer"], issuer.as_str());
    assert_eq!(meta["token_endpoint"], format!("{issuer}/oauth/token"));
    assert_eq!(meta["jwks_uri"], format!("{issuer}/oauth/jwks"));
    assert_eq!(meta["revocation_endpoint"], format!("{issuer}/oauth/revoke"));
    for wrong in [
        "/.well-known/oauth-authorization-server",
        "/auth/.well-known/oauth-authorization-server",
        "/oauth/token",
        "/oauth/jwks",
    ] {
        let reply = get(&gw.url(wrong), &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{wrong}: {}", reply.text());
    }
    let reply = post_form(
        &gw,
        "/oauth/token",
        &[("authorization", &basic("app", "app-secret"))],
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    let reply = post_form(
        &gw,
        "/auth/oauth/token",
        &[("authorization", &basic("app", "app-secret"))],
        "grant_type=client_credentials",
    )
    .await;
    assert_token_response(&reply, APP_SCOPES);
    let token = access_token(&reply);
    let (header, claims, _) = decode_jwt(&token);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], issuer.as_str());
    let keys = jwks(&gw, "/auth/oauth/jwks").await;
    assert_eq!(header["kid"], keys["keys"][0]["kid"]);
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 9. JWKS (RFC 7517, RFC 8037)

#[tokio::test]
async fn jwks_publishes_the_public_key_only() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let reply = get(&gw.url("/oauth/jwks"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("cache-control"), Some("public, max-age=300"));
    let set = reply.json();
    let keys = set["keys"].as_array().expect("keys array");
    assert_eq!(keys.len(), 1, "{set}");
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()), "{key}");
    let x = key["x"].as_str().expect("x");
    assert_eq!(x.len(), 43, "{x}");
    assert_eq!(URL_SAFE_NO_PAD.decode(x).expect("base64url").len(), 32);
    let members: BTreeSet<&str> = key.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(
        members,
        BTreeSet::from(["alg", "crv", "kid", "kty", "use", "x"]),
        "no private member (d) or anything else: {key}"
    );
    // Stable across requests.
    assert_eq!(jwks(&gw, "/oauth/jwks").await, set);

    let reply = send(Method::POST, &gw.url("/oauth/jwks"), &[], "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 10. Revocation (RFC 7009)

#[tokio::test]
async fn revoked_token_is_refused_on_routes() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");

    let token = access_token(&post_auth(&gw, "app", "app-secret", None).await);
    let keep = access_token(&post_auth(&gw, "app", "app-secret", None).await);
    // Used (and so cached) before it is revoked.
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;

    let reply = post_form(
        &gw,
        "/oauth/revoke",
        &[("authorization", &auth)],
        &form(&[("token", &token), ("token_type_hint", "access_token")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    assert_eq!(
        call.header("www-authenticate"),
        Some(
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token was revoked\""
        )
    );
    assert!(upstream.saw_nothing());

    // Revoking again is fine (idempotent), and other tokens are untouched.
    let reply = post_form(&gw, "/oauth/revoke", &[("authorization", &auth)], &form(&[("token", &token)])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let call = call_calendar(&gw, &keep).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;
    gw.stop().await;
}

#[tokio::test]
async fn revocation_with_client_secret_post() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let token = access_token(&post_auth(&gw, "other", "other-secret", None).await);
    let reply = post_form(
        &gw,
        "/oauth/revoke",
        &[],
        &form(&[("token", &token), ("client_id", "other"), ("client_secret", "other-secret")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn revocation_of_unknown_tokens_succeeds() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");

    let long = "a".repeat(3000);
    for token in ["garbage", "a.b.c", "pca_unknown", long.as_str()] {
        let reply = post_form(&gw, "/oauth/revoke", &[("authorization", &auth)], &form(&[("token", token)])).await;
        assert_eq!(reply.status, StatusCode::OK, "{token}: {}", reply.text());
    }
    gw.stop().await;
}

#[tokio::test]
async fn revocation_errors() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let auth = basic("app", "app-secret");
    let token = access_token(&post_auth(&gw, "app", "app-secret", None).await);
    let body = form(&[("token", &token)]);

    // Missing token parameter.
    let reply = post_form(&gw, "/oauth/revoke", &[("authorization", &auth)], "").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let reply = post_form(&gw, "/oauth/revoke", &[("authorization", &auth)], "token=").await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    // No client authentication, wrong secret, unknown client.
    let reply = post_form(&gw, "/oauth/revoke", &[], &body).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = post_form(&gw, "/oauth/revoke", &[("authorization", &basic("app", "wrong"))], &body).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = post_form(&gw, "/oauth/revoke", &[("authorization", &basic("nobody", "app-secret"))], &body).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    // Not POST, not a form.
    let reply = get(&gw.url("/oauth/revoke"), &[("authorization", &auth)]).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");
    let reply = send(
        Method::POST,
        &gw.url("/oauth/revoke"),
        &[("authorization", &auth), ("content-type", "application/json")],
        format!(r#"{{"token":"{token}"}}"#),
    )
    .await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_request");

    // None of that revoked anything.
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;
    gw.stop().await;
}

/// RFC 7009 §2.1: only the client a token was issued to may revoke it. This
/// gateway answers another client's attempt like an unknown token (200,
/// documented in `AuthorizationServer::revoke`) and leaves the token alone.
#[tokio::test]
async fn another_clients_token_is_not_revoked() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let token = access_token(&post_auth(&gw, "app", "app-secret", Some("calendar.read")).await);
    let reply = post_form(
        &gw,
        "/oauth/revoke",
        &[("authorization", &basic("other", "other-secret"))],
        &form(&[("token", &token)]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;

    // The owner can.
    let reply =
        post_form(&gw, "/oauth/revoke", &[("authorization", &basic("app", "app-secret"))], &form(&[("token", &token)]))
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    gw.stop().await;
}

#[tokio::test]
async fn opaque_tokens_are_issued_and_revoked() {
    let mut upstream = Upstream::start().await;
    let toml = config_toml(upstream.addr, "").replace(TTL_LINE, &format!("{TTL_LINE}\ntoken_format = \"opaque\""));
    let gw = Gateway::start(&toml).await;

    let reply = post_auth(&gw, "app", "app-secret", Some("calendar.read")).await;
    assert_token_response(&reply, "calendar.read");
    let token = access_token(&reply);
    assert!(!token.contains('.'), "not a JWT: {token}");
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    assert_eq!(upstream.next().await.headers["x-auth-scope"], "calendar.read");

    let reply =
        post_form(&gw, "/oauth/revoke", &[("authorization", &basic("app", "app-secret"))], &form(&[("token", &token)]))
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 11. Persistence across restarts

#[tokio::test]
async fn signing_key_and_tokens_survive_a_restart() {
    let mut upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = upstream.addr;
    let db = |name: &str| {
        config_toml(addr, "")
            .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/{name}\"", dir.path().display()))
    };
    let toml = db("p.db");

    let gw = Gateway::start(&toml).await;
    let kid = jwks(&gw, "/oauth/jwks").await["keys"][0]["kid"].clone();
    let token = access_token(&post_auth(&gw, "app", "app-secret", None).await);
    gw.stop().await;

    let gw = Gateway::start(&toml).await;
    assert_eq!(jwks(&gw, "/oauth/jwks").await["keys"][0]["kid"], kid);
    let call = call_calendar(&gw, &token).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;
    gw.stop().await;

    // Refused case: a gateway with another store has another key.
    let fresh = Gateway::start(&db("other.db")).await;
    assert_ne!(jwks(&fresh, "/oauth/jwks").await["keys"][0]["kid"], kid);
    let call = call_calendar(&fresh, &token).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    assert!(upstream.saw_nothing());
    fresh.stop().await;
}

#[tokio::test]
async fn opaque_tokens_and_revocations_survive_a_restart() {
    let mut upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(upstream.addr, "")
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()))
        .replace(TTL_LINE, &format!("{TTL_LINE}\ntoken_format = \"opaque\""));

    let gw = Gateway::start(&toml).await;
    let kept = access_token(&post_auth(&gw, "app", "app-secret", None).await);
    let revoked = access_token(&post_auth(&gw, "app", "app-secret", None).await);
    let reply = post_form(
        &gw,
        "/oauth/revoke",
        &[("authorization", &basic("app", "app-secret"))],
        &form(&[("token", &revoked)]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    gw.stop().await;

    let gw = Gateway::start(&toml).await;
    let call = call_calendar(&gw, &kept).await;
    assert_eq!(call.status, StatusCode::OK, "{}", call.text());
    upstream.next().await;
    let call = call_calendar(&gw, &revoked).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    assert!(upstream.saw_nothing());
    gw.stop().await;

    // Refused case: an in-memory store has never heard of the token.
    let fresh = Gateway::start(
        &toml.replace(&format!("url = \"sqlite://{}/p.db\"", dir.path().display()), "url = \"sqlite::memory:\""),
    )
    .await;
    let call = call_calendar(&fresh, &kept).await;
    assert_eq!(call.status, StatusCode::UNAUTHORIZED, "{}", call.text());
    fresh.stop().await;
}

// ---------------------------------------------------------------------------
// 13. Metrics

#[tokio::test]
async fn token_endpoint_metrics() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    assert_token_response(&post_auth(&gw, "app", "app-secret", None).await, APP_SCOPES);
    assert_token_response(&post_auth(&gw, "other", "other-secret", None).await, "calendar.read");
    let reply = post_auth(&gw, "app", "wrong", None).await;
    assert_oauth_error(&reply, StatusCode::UNAUTHORIZED, "invalid_client");
    let reply = post_auth(&gw, "other", "other-secret", Some("admin")).await;
    assert_oauth_error(&reply, StatusCode::BAD_REQUEST, "invalid_scope");

    let reply = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    let lines: BTreeSet<&str> = text.lines().collect();
    for want in [
        "portcullis_tokens_issued_total{grant_type=\"client_credentials\"} 2",
        "portcullis_token_requests_total{result=\"issued\"} 2",
        "portcullis_token_requests_total{result=\"invalid_client\"} 1",
        "portcullis_token_requests_total{result=\"invalid_scope\"} 1",
    ] {
        assert!(lines.contains(want), "{want} missing from:\n{text}");
    }
    // Metrics stay on the admin listener.
    let public = get(&gw.url("/metrics"), &[]).await;
    assert_eq!(public.status, StatusCode::NOT_FOUND);
    gw.stop().await;
}

/// RFC 6749 §10.10 / SECURITY #12: guessing a client's secret is slowed
/// down. After `MAX_FAILURES` wrong secrets in a minute the client id is
/// refused unverified with 429, but the real client, whose secret was
/// proven before, is still served.
#[tokio::test]
async fn repeated_wrong_secrets_are_throttled_without_locking_out_the_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    assert_eq!(post_auth(&gw, "app", "app-secret", None).await.status, StatusCode::OK);

    for _ in 0..portcullis::oauth::clients::MAX_FAILURES {
        assert_oauth_error(&post_auth(&gw, "app", "guess", None).await, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let throttled = post_auth(&gw, "app", "guess", None).await;
    assert_oauth_error(&throttled, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    assert_eq!(throttled.header("retry-after"), Some("60"));

    assert_token_response(&post_auth(&gw, "app", "app-secret", None).await, APP_SCOPES);
    // Another client is not affected.
    assert_eq!(post_auth(&gw, "other", "other-secret", None).await.status, StatusCode::OK);
}

/// SECURITY.md 46: failures count per client id *and* address, so one who
/// knows only a client's id cannot lock the real client out of the token
/// endpoint from elsewhere; behind a trusted proxy, the address is the
/// client's from `X-Forwarded-For`, not the proxy's. The secret here was
/// never proven before, so no cached digest lets the client through.
#[tokio::test]
async fn guessing_a_clients_secret_throttles_the_guesser_not_the_client() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_server_line(upstream.addr, "trusted_proxies = [\"127.0.0.1\"]", "")).await;
    let from = |address: &'static str, secret: &'static str| {
        let gw = &gw;
        async move {
            let body = form(&[("grant_type", "client_credentials"), ("client_id", "app"), ("client_secret", secret)]);
            token_request(gw, &[("x-forwarded-for", address)], &body).await
        }
    };
    for _ in 0..portcullis::oauth::clients::MAX_FAILURES {
        assert_oauth_error(&from("203.0.113.66", "guess").await, StatusCode::UNAUTHORIZED, "invalid_client");
    }
    assert_oauth_error(&from("203.0.113.66", "guess").await, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    assert_oauth_error(&from("203.0.113.66", "app-secret").await, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    // The real client, elsewhere, is served.
    assert_token_response(&from("198.51.100.7", "app-secret").await, APP_SCOPES);
    // A made-up address to the left of the one the proxy vouches for
    // changes nothing: the guesser is still who the proxy saw.
    assert_oauth_error(&from("198.51.100.7, 203.0.113.66", "guess").await, StatusCode::TOO_MANY_REQUESTS, "slow_down");
}

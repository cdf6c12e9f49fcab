//! Bearer-token enforcement end to end (RFC 6750 and SECURITY checklist
//! items 19-27), over real sockets against a real gateway and upstream:
//! where a token may travel (header, query, form body) and what is taken out
//! before forwarding; one method only; the exact `WWW-Authenticate`
//! challenges for missing, malformed, invalid, expired, foreign and revoked
//! tokens; per-method scopes and 405s; per-route switches
//! (`allow_query_token`, `forward_bearer`); opaque tokens; and the
//! validation cache (identities, not decisions, are cached; floods and
//! concurrent misses cost one validation).

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{Method, StatusCode};
use support::{Gateway, Reply, Upstream, config_toml, get, issuing_jwts, send};

const REALM_ONLY: &str = "Bearer realm=\"portcullis\"";
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// The full challenge of a refusal with an error code (no `scope`).
fn challenge(code: &str, description: &str) -> String {
    format!("Bearer realm=\"portcullis\", error=\"{code}\", error_description=\"{description}\"")
}

fn invalid_request(description: &str) -> String {
    challenge("invalid_request", description)
}

fn invalid_token(description: &str) -> String {
    challenge("invalid_token", description)
}

fn insufficient_scope(scope: &str) -> String {
    format!(
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"The access token does not grant the scope this request needs\", scope=\"{scope}\""
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn start() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    (upstream, gw)
}

/// `start`, issuing JWTs whatever the token-format matrix says.
async fn start_jwt() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&issuing_jwts(&config_toml(upstream.addr, ""))).await;
    (upstream, gw)
}

/// Asserts a 400 `invalid_request` bearer refusal with `description`.
fn assert_invalid_request(reply: &Reply, description: &str) {
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some(invalid_request(description).as_str()));
    let body = reply.json();
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["error_description"], description);
}

/// Asserts a 401 `invalid_token` refusal with `description`.
fn assert_invalid_token(reply: &Reply, description: &str) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some(invalid_token(description).as_str()));
    let body = reply.json();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["error_description"], description);
}

/// Asserts a 401 with the bare challenge (no error code, RFC 6750 §3.1).
fn assert_missing_token(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some(REALM_ONLY));
    assert!(reply.json().get("error").is_none(), "{}", reply.text());
}

/// The value of one series in the admin `/metrics` text.
async fn metric(gw: &Gateway, series: &str) -> u64 {
    let reply = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("series {series} is not an integer: {e}"))
}

async fn validations(gw: &Gateway) -> u64 {
    metric(gw, "portcullis_token_validations_total").await
}

/// Revokes `token` at `/oauth/revoke`, authenticating as `client` with its
/// secret in the form body.
async fn revoke(gw: &Gateway, client: &str, token: &str) -> Reply {
    send(
        Method::POST,
        &gw.url("/oauth/revoke"),
        &[FORM],
        format!("client_id={client}&client_secret={client}-secret&token={token}"),
    )
    .await
}

/// `token` with its JOSE header rewritten by `edit`, and `signature` in
/// place of its own.
fn with_header(token: &str, edit: impl FnOnce(&mut serde_json::Value), signature: Option<&str>) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS compact token");
    let mut header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).expect("base64url header")).expect("JSON header");
    edit(&mut header);
    format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), parts[1], signature.unwrap_or(parts[2]))
}

/// The gateway's Ed25519 signing key, read from the store at `url`.
async fn signing_key(url: &str) -> ed25519_dalek::SigningKey {
    let store = portcullis::store::open(url).await.expect("store opens");
    let keys = store.signing_keys().await.expect("signing keys");
    let der = &keys.first().expect("a signing key").private_der;
    // PKCS#8 v1 Ed25519: a 16-byte prefix, then the 32-byte seed
    let seed: [u8; 32] = der[16..].try_into().expect("a 32-byte seed");
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// A gateway on a store file, a token of its, and its signing key (read
/// from the file), for tests that sign tokens of their own.
struct Signed {
    _dir: tempfile::TempDir,
    upstream: Upstream,
    gw: Gateway,
    /// `other`'s, with `calendar.read`.
    token: String,
    key: ed25519_dalek::SigningKey,
}

impl Signed {
    async fn start() -> Signed {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let upstream = Upstream::start().await;
        let toml = config_toml(upstream.addr, "").replace("url = \"sqlite::memory:\"", &format!("url = \"{url}\""));
        let gw = Gateway::start(&issuing_jwts(&toml)).await;
        let token = gw.token("other", "calendar.read").await;
        let key = signing_key(&url).await;
        Signed { _dir: dir, upstream, gw, token, key }
    }
}

/// `token` with its JOSE header rewritten by `edit`, then signed with `key`.
fn resign(token: &str, edit: impl FnOnce(&mut serde_json::Value), key: &ed25519_dalek::SigningKey) -> String {
    resign_claims(token, edit, |_| {}, key)
}

/// `token` with its JOSE header rewritten by `edit_header` and its claims by
/// `edit_claims`, then signed with `key`.
fn resign_claims(
    token: &str,
    edit_header: impl FnOnce(&mut serde_json::Value),
    edit_claims: impl FnOnce(&mut serde_json::Value),
    key: &ed25519_dalek::SigningKey,
) -> String {
    use ed25519_dalek::Signer as _;
    let unsigned = with_header(token, edit_header, Some(""));
    let (header, claims) = unsigned.trim_end_matches('.').split_once('.').expect("header.claims");
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("base64url claims")).expect("JSON claims");
    edit_claims(&mut claims);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

// ---------------------------------------------------------------------------
// 1. The Authorization header (RFC 6750 §2.1)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn header_token_is_accepted_with_any_scheme_case_and_replaced_by_identity_headers() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("other", "calendar.read").await;

    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {token}");
        let reply = get(
            &gw.url("/calendar/events"),
            &[
                ("authorization", &auth),
                // a client may not assert identity itself
                ("x-auth-subject", "admin"),
            ],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}: {}", reply.text());
        // the header token's response is the upstream's, cache policy included
        assert_eq!(reply.header("cache-control"), Some("public, max-age=60"));
        let seen = upstream.next().await;
        assert_eq!(seen.uri, "/calendar/events");
        assert_eq!(seen.headers["x-auth-subject"], "other");
        assert_eq!(seen.headers["x-auth-client-id"], "other");
        assert_eq!(seen.headers["x-auth-scope"], "calendar.read");
        assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1);
        assert!(seen.headers.get("authorization").is_none(), "{scheme}: the token must not reach the upstream");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 2. The URI query parameter (RFC 6750 §2.3)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn query_token_is_removed_from_the_upstream_uri_keeping_other_parameters_in_order() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("other", "calendar.read").await;

    let reply = get(&gw.url(&format!("/calendar/x?a=1&access_token={token}&b=2")), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.uri, "/calendar/x?a=1&b=2");
    assert_eq!(seen.headers["x-auth-subject"], "other");
    assert_eq!(seen.headers["x-auth-client-id"], "other");
    assert_eq!(seen.headers["x-auth-scope"], "calendar.read");
    assert!(seen.headers.get("authorization").is_none());

    // the token alone: no empty `?` left behind
    let reply = get(&gw.url(&format!("/calendar/y?access_token={token}")), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.next().await.uri, "/calendar/y");

    // a query without a token is forwarded as it was
    let auth = bearer(&token);
    let reply = get(&gw.url("/calendar/z?b=2&a=1"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.next().await.uri, "/calendar/z?b=2&a=1");
    gw.stop().await;
}

#[tokio::test]
async fn query_token_success_is_marked_private_but_header_token_keeps_upstream_cache_control() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("other", "calendar.read").await;

    let query = get(&gw.url(&format!("/calendar/x?access_token={token}")), &[]).await;
    assert_eq!(query.status, StatusCode::OK, "{}", query.text());
    assert_eq!(
        query.headers.get_all("cache-control").iter().count(),
        1,
        "the upstream's public cache-control is replaced, not added to"
    );
    assert_eq!(query.header("cache-control"), Some("private"));
    upstream.next().await;

    let auth = bearer(&token);
    let header = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(header.status, StatusCode::OK, "{}", header.text());
    assert_eq!(header.header("cache-control"), Some("public, max-age=60"));
    upstream.next().await;
    gw.stop().await;
}

/// RFC 6750 §2.3: "Server responses to requests containing an access token
/// in the URI SHOULD include a Cache-Control header field with the
/// "private" option" — any response, not only a 2xx. A 404 (heuristically
/// cacheable, here even `public, max-age=60`) would otherwise be stored by
/// a shared cache under a URI that holds the token.
#[tokio::test]
async fn query_token_non_2xx_upstream_response_is_marked_private_too() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("other", "calendar.read").await;

    let reply = get(&gw.url(&format!("/calendar/missing?access_token={token}")), &[("x-test-status", "404")]).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    assert_eq!(upstream.next().await.uri, "/calendar/missing");
    assert_eq!(
        reply.header("cache-control"),
        Some("private"),
        "a response to a request with the token in its URI must not be publicly cacheable"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 3. The form-encoded body (RFC 6750 §2.2)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn form_body_token_is_taken_out_of_the_body_with_a_correct_content_length() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.write").await;

    let reply = send(
        Method::POST,
        &gw.url("/calendar/events"),
        &[FORM],
        format!("title=Lunch+break&access_token={token}&when=noon"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/calendar/events");
    assert_eq!(&seen.body[..], b"title=Lunch+break&when=noon");
    assert_eq!(seen.headers["content-length"], seen.body.len().to_string().as_str());
    assert!(seen.headers.get("transfer-encoding").is_none());
    assert_eq!(seen.headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(seen.headers["x-auth-client-id"], "app");
    assert_eq!(seen.headers["x-auth-scope"], "calendar.write");
    assert!(seen.headers.get("authorization").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn form_body_without_token_is_forwarded_unchanged() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.write").await;
    let auth = bearer(&token);

    let body = "title=Lunch&when=noon";
    let reply = send(Method::POST, &gw.url("/calendar/events"), &[FORM, ("authorization", &auth)], body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(&seen.body[..], body.as_bytes());
    assert_eq!(seen.headers["content-length"], body.len().to_string().as_str());
    gw.stop().await;
}

#[tokio::test]
async fn get_with_a_form_body_token_is_not_a_body_token() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;

    let reply = send(Method::GET, &gw.url("/calendar/events"), &[FORM], format!("access_token={token}")).await;
    assert_missing_token(&reply);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn multipart_body_is_not_a_token_source() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.write").await;

    let multipart = ("content-type", "multipart/form-data; boundary=x");
    let body = format!("access_token={token}");
    let reply = send(Method::POST, &gw.url("/calendar/events"), &[multipart], body.clone()).await;
    assert_missing_token(&reply);
    assert!(upstream.saw_nothing());

    // the same body as a form is a token
    let reply = send(Method::POST, &gw.url("/calendar/events"), &[FORM], body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 4. One method, one token, well formed: 400 invalid_request otherwise
// ---------------------------------------------------------------------------

const MULTIPLE: &str = "The request carries an access token by more than one method";
const REPEATED: &str = "The access_token parameter is repeated";
const MALFORMED: &str = "The Authorization header is not a well-formed Bearer credential";

#[tokio::test]
async fn header_and_query_token_together_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;
    let auth = bearer(&token);

    let reply = get(&gw.url(&format!("/calendar/x?access_token={token}")), &[("authorization", &auth)]).await;
    assert_invalid_request(&reply, MULTIPLE);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn header_and_body_token_together_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.write").await;
    let auth = bearer(&token);

    let reply =
        send(Method::POST, &gw.url("/calendar/x"), &[FORM, ("authorization", &auth)], format!("access_token={token}"))
            .await;
    assert_invalid_request(&reply, MULTIPLE);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn query_and_body_token_together_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.write").await;

    let reply = send(
        Method::POST,
        &gw.url(&format!("/calendar/x?access_token={token}")),
        &[FORM],
        format!("access_token={token}"),
    )
    .await;
    assert_invalid_request(&reply, MULTIPLE);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn repeated_access_token_parameter_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.write").await;

    let reply = get(&gw.url(&format!("/calendar/x?access_token={token}&access_token={token}")), &[]).await;
    assert_invalid_request(&reply, REPEATED);

    // an encoded parameter name is still the parameter
    let reply = get(&gw.url(&format!("/calendar/x?access_token={token}&access%5Ftoken={token}")), &[]).await;
    assert_invalid_request(&reply, REPEATED);

    let reply =
        send(Method::POST, &gw.url("/calendar/x"), &[FORM], format!("access_token={token}&a=1&access_token={token}"))
            .await;
    assert_invalid_request(&reply, REPEATED);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn two_authorization_headers_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;
    let auth = bearer(&token);

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth), ("authorization", &auth)]).await;
    assert_invalid_request(&reply, "The request has more than one Authorization header");
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn bearer_without_a_token68_credential_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;

    let spaced = format!("Bearer {} {}", &token[..10], &token[10..]);
    let comma = format!("Bearer {token},x");
    for auth in ["Bearer", "Bearer ", "Bearer =", spaced.as_str(), comma.as_str()] {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", auth)]).await;
        assert_invalid_request(&reply, MALFORMED);
        assert!(upstream.saw_nothing(), "{auth:?} reached the upstream");
    }

    // the same token, well formed (padding spaces allowed), is accepted
    let padded = format!("Bearer   {token}");
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &padded)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 5. No credentials: 401 with no error code (RFC 6750 §3.1)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn no_credentials_get_a_bare_challenge() {
    let (mut upstream, gw) = start().await;

    let reply = get(&gw.url("/calendar/x?a=1"), &[]).await;
    assert_missing_token(&reply);
    assert_eq!(reply.json()["error_description"], "This route requires a bearer access token");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert!(upstream.saw_nothing());

    // a public route needs none
    let reply = get(&gw.url("/public/x"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;
    gw.stop().await;
}

#[tokio::test]
async fn basic_credentials_on_a_protected_route_get_a_bare_challenge() {
    let (mut upstream, gw) = start().await;

    let basic = format!("Basic {}", STANDARD.encode("app:app-secret"));
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &basic)]).await;
    assert_missing_token(&reply);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Invalid tokens: 401 invalid_token
// ---------------------------------------------------------------------------

const INVALID: &str = "The access token is invalid";

#[tokio::test]
async fn garbage_tokens_are_invalid_token() {
    let (mut upstream, gw) = start().await;

    for token in ["not-a-token", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.AAAA"] {
        let auth = bearer(token);
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_invalid_token(&reply, INVALID);
    }
    // non-UTF-8 and control bytes, percent-encoded in the query
    let reply = get(&gw.url("/calendar/x?access_token=%00%FF%FE%0A"), &[]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn token_with_tampered_payload_is_invalid_token() {
    let (mut upstream, gw) = start_jwt().await;
    let token = gw.token("other", "calendar.read").await;

    // the genuine token works
    let auth = bearer(&token);
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    // the same token with more scope written into its payload does not
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = "calendar.read calendar.write admin".into();
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]);
    let auth = bearer(&forged);
    let reply = get(&gw.url("/admin/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn jwt_with_alg_none_is_invalid_token() {
    let (mut upstream, gw) = start_jwt().await;
    let token = gw.token("other", "calendar.read").await;

    let none = with_header(&token, |h| h["alg"] = "none".into(), Some(""));
    let auth = bearer(&none);
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, INVALID);
    // also through the query, where a trailing "." survives as is
    let reply = get(&gw.url(&format!("/calendar/x?access_token={none}")), &[]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// Signed with the gateway's real key (read from its store file), so the
/// only thing wrong with these tokens is their `typ` (RFC 9068 §4).
#[tokio::test]
async fn correctly_signed_jwt_not_typed_at_jwt_is_invalid_token() {
    let Signed { _dir, mut upstream, gw, token, key } = Signed::start().await;

    // re-signed as it was: accepted (so the re-signing itself is sound)
    let same = resign(&token, |_| {}, &key);
    let auth = bearer(&same);
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    for (label, typ) in [("typ JWT", Some("JWT")), ("typ id_token+jwt", Some("id_token+jwt")), ("no typ", None)] {
        let forged = resign(
            &token,
            |h| match typ {
                Some(t) => h["typ"] = t.into(),
                None => {
                    h.as_object_mut().unwrap().remove("typ");
                }
            },
            &key,
        );
        let auth = bearer(&forged);
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{label}");
        assert_invalid_token(&reply, INVALID);
    }
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// SECURITY.md 49, with the gateway's real key: a `crit` header it does not
/// understand (RFC 7515 §4.1.11) and an `iss` that is not a string (RFC
/// 9068 §2.2) are refused; an `exp` as far off as JSON can write is no
/// reason to panic (it once dropped the connection, in the cache's deadline
/// arithmetic).
#[tokio::test]
async fn correctly_signed_jwts_with_crit_or_an_iss_array_are_refused_and_a_far_exp_is_no_panic() {
    let Signed { _dir, mut upstream, gw, token, key } = Signed::start().await;

    let crit = resign(&token, |h| h["crit"] = serde_json::json!(["exp"]), &key);
    let crit_extension = resign(
        &token,
        |h| {
            h["crit"] = serde_json::json!(["x-ext"]);
            h["x-ext"] = serde_json::json!(true);
        },
        &key,
    );
    let iss_array = resign_claims(&token, |_| {}, |c| c["iss"] = serde_json::json!([c["iss"].clone()]), &key);
    for (label, forged) in [("crit exp", crit), ("crit extension", crit_extension), ("iss array", iss_array)] {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &bearer(&forged))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{label}: {}", reply.text());
        assert_invalid_token(&reply, INVALID);
    }
    assert!(upstream.saw_nothing());

    // As valid as it says: let through, and asked again from the cache.
    let far = resign_claims(&token, |_| {}, |c| c["exp"] = serde_json::json!(u64::MAX), &key);
    for _ in 0..2 {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &bearer(&far))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(upstream.next().await.headers["x-auth-subject"], "other");
    }
    gw.stop().await;
}

#[tokio::test]
async fn unknown_opaque_token_is_invalid_token() {
    let (mut upstream, gw) = start().await;

    for token in ["pca_xxx", "pca_"] {
        let auth = bearer(token);
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_invalid_token(&reply, INVALID);
    }
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn oversized_token_is_invalid_token() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("other", "calendar.read").await;

    // a real token padded past the limit is refused before any parsing
    let huge = format!("{token}{}", "A".repeat(10 * 1024));
    let auth = bearer(&huge);
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// `portcullis_denials_total` of the calendar route for `reason`.
async fn denials(gw: &Gateway, reason: &str) -> u64 {
    gw.counter(&format!("portcullis_denials_total{{reason=\"{reason}\",route=\"calendar\"}}")).await
}

// ---------------------------------------------------------------------------
// 7. Expiry
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expired_token_is_refused_with_the_expired_description() {
    let mut upstream = Upstream::start().await;
    let toml = config_toml(upstream.addr, "")
        .replace("access_token_ttl = \"15m\"", "access_token_ttl = \"1s\"\nleeway = \"1s\"");
    let gw = Gateway::start(&toml).await;
    let token = gw.token("other", "calendar.read").await;
    let auth = bearer(&token);

    // valid (and cached as valid) while fresh
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    // expiry is wall-clock time: poll, bounded
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        upstream.next().await;
        assert!(tokio::time::Instant::now() < deadline, "a 1 s token with 1 s leeway still works after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_invalid_token(&refused, "The access token expired");
    assert!(upstream.saw_nothing());
    assert_eq!(denials(&gw, "expired").await, 1);
    assert_eq!(denials(&gw, "invalid_token").await, 0, "counted under its own reason");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 8. Other issuers and audiences
// ---------------------------------------------------------------------------

#[tokio::test]
async fn token_of_another_gateway_is_invalid_token() {
    let (mut upstream_a, gw_a) = start().await;
    let mut upstream_b = Upstream::start().await;
    let toml_b = config_toml(upstream_b.addr, "")
        .replace("issuer = \"http://127.0.0.1:8080\"", "issuer = \"http://localhost:9090\"");
    let gw_b = Gateway::start(&toml_b).await;

    let token = gw_a.token("other", "calendar.read").await;
    let auth = bearer(&token);
    let reply = get(&gw_a.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream_a.next().await;

    let reply = get(&gw_b.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream_b.saw_nothing());
    gw_a.stop().await;
    gw_b.stop().await;
}

/// Gateways sharing one store (so one signing key): only the issuer, or
/// only the audience, differs, so the refusal can only come from `iss` /
/// `aud` checking, not from an unknown key.
#[tokio::test]
async fn token_for_another_issuer_or_audience_on_a_shared_key_is_invalid_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = Upstream::start().await;
    let base = issuing_jwts(&config_toml(upstream.addr, ""));
    // Each gateway has a store of its own (a serving gateway holds its
    // SQLite file alone), all holding the first one's signing key.
    let store = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let on_store =
        |toml: &str, name: &str| toml.replace("url = \"sqlite::memory:\"", &format!("url = \"{}\"", store(name)));
    let issuing = Gateway::start(&on_store(&base, "issuing.db")).await;
    let key = portcullis::store::open(&store("issuing.db")).await.expect("open").signing_keys().await.expect("keys");
    let shared_key = |name: &str| {
        let (url, key) = (store(name), key[0].clone());
        async move {
            let store = portcullis::store::open(&url).await.expect("open");
            store.add_signing_key(&key, Some(i64::MIN)).await.expect("insert the key");
        }
    };
    for name in ["twin.db", "other-issuer.db", "other-audience.db"] {
        shared_key(name).await;
    }
    let twin = Gateway::start(&on_store(&base, "twin.db")).await;
    // the audience defaults to the issuer: keep it, so only `iss` differs
    let other_issuer = Gateway::start(&on_store(
        &base.replace(
            "issuer = \"http://127.0.0.1:8080\"",
            "issuer = \"http://localhost:9090\"\naudience = \"http://127.0.0.1:8080\"",
        ),
        "other-issuer.db",
    ))
    .await;
    let other_audience = Gateway::start(&on_store(
        &base.replace(
            "issuer = \"http://127.0.0.1:8080\"",
            "issuer = \"http://127.0.0.1:8080\"\naudience = \"https://calendar.example\"",
        ),
        "other-audience.db",
    ))
    .await;

    let token = issuing.token("other", "calendar.read").await;
    let auth = bearer(&token);
    // same key, issuer and audience: accepted
    let reply = get(&twin.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    for (label, gw) in [("issuer", &other_issuer), ("audience", &other_audience)] {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "other {label}");
        assert_invalid_token(&reply, INVALID);
    }
    assert!(upstream.saw_nothing());
    for gw in [issuing, twin, other_issuer, other_audience] {
        gw.stop().await;
    }
}

// ---------------------------------------------------------------------------
// 9. Revocation (RFC 7009)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoked_token_is_refused_at_once_though_it_was_cached_valid() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;
    let auth = bearer(&token);

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    let revoked = revoke(&gw, "app", &token).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, "The access token was revoked");
    assert!(upstream.saw_nothing());
    assert_eq!(denials(&gw, "revoked").await, 1);
    assert_eq!(denials(&gw, "invalid_token").await, 0, "counted under its own reason");
    gw.stop().await;
}

#[tokio::test]
async fn a_revocation_reaches_the_cache_of_every_worker() {
    // Four workers, and a connection per request, which the kernel spreads
    // over the workers' sockets: each worker caches the identity itself.
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "").replace("[server]", "[server]\nworkers = 4")).await;
    let token = gw.token("app", "calendar.read").await;
    let auth = bearer(&token);
    for i in 0..16 {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.text());
        upstream.next().await;
    }
    assert_eq!(validations(&gw).await, 1, "validated once, then cached");
    let hits = r#"portcullis_validation_cache_requests_total{result="hit"}"#;
    assert_eq!(metric(&gw, hits).await, 15, "every worker's hits are counted");

    let revoked = revoke(&gw, "app", &token).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    for _ in 0..16 {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_invalid_token(&reply, "The access token was revoked");
    }
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn revocation_with_basic_client_authentication_works() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;
    let auth = bearer(&token);

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    let basic = format!("Basic {}", STANDARD.encode("app:app-secret"));
    let revoked =
        send(Method::POST, &gw.url("/oauth/revoke"), &[FORM, ("authorization", &basic)], format!("token={token}"))
            .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, "The access token was revoked");
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

#[tokio::test]
async fn revocation_by_another_client_is_acknowledged_but_ignored() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "calendar.read").await;
    let auth = bearer(&token);

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    // RFC 7009 §2.2: answered like success, so nothing is learnt
    let revoked = revoke(&gw, "other", &token).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 10. Scopes per method, 405s
// ---------------------------------------------------------------------------

#[tokio::test]
async fn calendar_reads_need_read_scope_and_other_methods_need_write_scope() {
    let (mut upstream, gw) = start().await;
    let read = bearer(&gw.token("app", "calendar.read").await);
    let write = bearer(&gw.token("app", "calendar.write").await);

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &read)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    // a write token cannot read, a read token cannot write
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &write)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some(insufficient_scope("calendar.read").as_str()));
    assert_eq!(reply.json()["error"], "insufficient_scope");

    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let reply = send(method.clone(), &gw.url("/calendar/x"), &[("authorization", &read)], "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some(insufficient_scope("calendar.write").as_str()), "{method}");
        assert!(upstream.saw_nothing(), "{method} reached the upstream");

        let reply = send(method.clone(), &gw.url("/calendar/x"), &[("authorization", &write)], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        assert_eq!(upstream.next().await.method, method.as_str());
    }
    gw.stop().await;
}

#[tokio::test]
async fn admin_allows_get_and_delete_with_admin_scope_only() {
    let (mut upstream, gw) = start().await;
    let admin = bearer(&gw.token("app", "admin").await);
    let read = bearer(&gw.token("app", "calendar.read").await);

    for method in [Method::GET, Method::DELETE] {
        let reply = send(method.clone(), &gw.url("/admin/x"), &[("authorization", &admin)], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        assert_eq!(upstream.next().await.method, method.as_str());

        let reply = send(method.clone(), &gw.url("/admin/x"), &[("authorization", &read)], "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method}: {}", reply.text());
        assert_eq!(reply.header("www-authenticate"), Some(insufficient_scope("admin").as_str()));
        assert!(upstream.saw_nothing());
    }
    gw.stop().await;
}

#[tokio::test]
async fn method_a_route_does_not_list_is_405_with_allow_even_with_a_valid_token() {
    let (mut upstream, gw) = start().await;
    let admin = bearer(&gw.token("app", "calendar.read+calendar.write+admin").await);

    for method in [Method::PUT, Method::POST, Method::PATCH] {
        let reply = send(method.clone(), &gw.url("/admin/x"), &[("authorization", &admin)], "").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}: {}", reply.text());
        assert_eq!(reply.header("allow"), Some("DELETE, GET, HEAD"));
        assert!(reply.header("www-authenticate").is_none());
        assert_eq!(reply.json()["error"], "method_not_allowed");
        assert!(upstream.saw_nothing(), "{method} reached the upstream");
    }
    gw.stop().await;
}

#[tokio::test]
async fn route_with_empty_scope_rule_accepts_any_valid_token_and_only_valid_tokens() {
    let (mut upstream, gw) = start().await;
    let token = bearer(&gw.token("other", "calendar.read").await);

    for method in [Method::GET, Method::POST, Method::DELETE] {
        let reply = send(method.clone(), &gw.url("/forward/x"), &[("authorization", &token)], "").await;
        assert_eq!(reply.status, StatusCode::OK, "{method}: {}", reply.text());
        assert_eq!(upstream.next().await.method, method.as_str());
    }
    let reply = get(&gw.url("/forward/x"), &[]).await;
    assert_missing_token(&reply);
    let reply = get(&gw.url("/forward/x"), &[("authorization", "Bearer nope")]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 11. CVE-2021-32701: the cache holds identities, not decisions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cached_token_is_checked_against_each_requests_scope() {
    let (mut upstream, gw) = start().await;
    let auth = bearer(&gw.token("other", "calendar.read").await);

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    let reply = send(Method::POST, &gw.url("/calendar/x"), &[("authorization", &auth)], "{}").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some(insufficient_scope("calendar.write").as_str()));
    assert!(upstream.saw_nothing());

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    // and all three were answered from one validation
    assert_eq!(validations(&gw).await, 1);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 12. allow_query_token = false
// ---------------------------------------------------------------------------

#[tokio::test]
async fn query_token_on_a_route_that_turned_them_off_is_invalid_request() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("app", "admin").await;

    for query in [format!("?access_token={token}"), format!("?a=1&access%5Ftoken={token}")] {
        let reply = get(&gw.url(&format!("/admin/x{query}")), &[]).await;
        assert_invalid_request(&reply, "This route does not accept an access_token query parameter");
        assert!(upstream.saw_nothing(), "{query} reached the upstream");
    }

    let auth = bearer(&token);
    let reply = get(&gw.url("/admin/x?a=1"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.next().await.uri, "/admin/x?a=1");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 13. forward_bearer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bearer_header_is_forwarded_only_on_routes_that_ask_for_it() {
    let (mut upstream, gw) = start().await;
    let token = gw.token("other", "calendar.read").await;
    let auth = bearer(&token);

    let reply = get(&gw.url("/forward/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.headers["authorization"], auth.as_str());
    assert_eq!(seen.headers["x-auth-client-id"], "other");

    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(upstream.next().await.headers.get("authorization").is_none());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 14. Opaque tokens
// ---------------------------------------------------------------------------

#[tokio::test]
async fn opaque_tokens_work_on_routes_and_can_be_revoked() {
    let mut upstream = Upstream::start().await;
    let toml = config_toml(upstream.addr, "")
        .replace("access_token_ttl = \"15m\"", "access_token_ttl = \"15m\"\ntoken_format = \"opaque\"");
    let gw = Gateway::start(&toml).await;
    let token = gw.token("other", "calendar.read").await;
    assert!(token.starts_with("pca_"), "{token}");
    assert!(!token.contains('.'), "not a JWT: {token}");

    let auth = bearer(&token);
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = upstream.next().await;
    assert_eq!(seen.headers["x-auth-subject"], "other");
    assert_eq!(seen.headers["x-auth-client-id"], "other");
    assert_eq!(seen.headers["x-auth-scope"], "calendar.read");

    // scope still enforced
    let reply = send(Method::POST, &gw.url("/calendar/x"), &[("authorization", &auth)], "").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());

    let revoked = revoke(&gw, "other", &token).await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_invalid_token(&reply, "The access token was revoked");

    let reply = get(&gw.url("/calendar/x"), &[("authorization", "Bearer pca_xxx")]).await;
    assert_invalid_token(&reply, INVALID);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 15. The validation cache
// ---------------------------------------------------------------------------

#[tokio::test]
async fn repeated_valid_token_is_validated_once_then_served_from_cache() {
    let (mut upstream, gw) = start().await;
    let auth = bearer(&gw.token("other", "calendar.read").await);
    assert_eq!(validations(&gw).await, 0);

    const N: u64 = 10;
    for _ in 0..N {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        upstream.next().await;
    }
    assert_eq!(validations(&gw).await, 1);
    let hits = metric(&gw, "portcullis_validation_cache_requests_total{result=\"hit\"}").await;
    assert!(hits >= N - 1, "{hits} cache hits for {N} requests");
    gw.stop().await;
}

#[tokio::test]
async fn flood_of_one_bad_token_costs_one_validation() {
    let mut upstream = Upstream::start().await;
    // a negative TTL far longer than the flood, so timing cannot matter
    let toml =
        config_toml(upstream.addr, "").replace("max_entries = 1000", "max_entries = 1000\nnegative_ttl = \"60s\"");
    let gw = Gateway::start(&issuing_jwts(&toml)).await;
    let good = gw.token("other", "calendar.read").await;
    let bad = with_header(&good, |h| h["kid"] = "someone-else".into(), None);
    let auth = bearer(&bad);

    let before = validations(&gw).await;
    for _ in 0..20 {
        let reply = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
        assert_invalid_token(&reply, INVALID);
    }
    assert_eq!(validations(&gw).await - before, 1);

    // a different bad token is a different entry
    let reply = get(&gw.url("/calendar/x"), &[("authorization", "Bearer other-bad")]).await;
    assert_invalid_token(&reply, INVALID);
    assert_eq!(validations(&gw).await - before, 2);
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

/// 20 connections are opened first and the 20 requests written only once
/// all are open, so they reach the gateway together and miss the cache
/// together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_for_one_token_collapse_into_one_validation() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (mut upstream, gw) = start().await;
    let auth = bearer(&gw.token("other", "calendar.read").await);
    let request =
        format!("GET /calendar/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n");

    let before = validations(&gw).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(tokio::net::TcpStream::connect(gw.public).await.expect("connect"));
    }
    for stream in &mut streams {
        stream.write_all(request.as_bytes()).await.expect("write");
    }
    let replies: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut out))
                    .await
                    .expect("the gateway answers in time")
                    .expect("read");
                String::from_utf8_lossy(&out).into_owned()
            })
        })
        .collect();
    for reply in replies {
        let reply = reply.await.expect("reader task");
        assert_eq!(support::raw_status(&reply), 200, "{reply}");
        upstream.next().await;
    }
    assert_eq!(validations(&gw).await - before, 1);
    gw.stop().await;
}

/// A gRPC call through `gw` over HTTP/2 (h2c): `POST path` with
/// `content-type: application/grpc` and one empty message; the status,
/// headers and body that came back.
async fn grpc_call(gw: &Gateway, path: &str, token: Option<&str>) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http();
    let mut request =
        http::Request::post(gw.url(path)).header("content-type", "application/grpc").header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request =
        request.body(http_body_util::Full::new(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))).expect("request");
    let response = client.request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.expect("body").to_bytes())
}

/// A gRPC client is refused in terms it reads: HTTP 200 with no body (the
/// Trailers-Only form), `grpc-status` 16 (UNAUTHENTICATED) without a token
/// or with a bad one, 7 (PERMISSION_DENIED) with too little scope, 12
/// (UNIMPLEMENTED) where no route is, a `grpc-message`, and the RFC 6750
/// challenge as for any client. Nothing reaches the upstream; a call with
/// the scope it needs does, and an HTTP client is still refused in JSON.
#[tokio::test]
async fn grpc_calls_are_refused_in_grpc_terms() {
    let (mut upstream, gw) = start().await;
    let (reader, writer) = (gw.token("other", "calendar.read").await, gw.token("app", "calendar.write").await);
    let method = "/calendar/calendar.Events/Create";
    for (token, status, message, challenge) in [
        (None, "16", "This route requires a bearer access token", "Bearer realm=\"portcullis\""),
        (
            Some("not-a-token"),
            "16",
            "The access token is invalid",
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token is invalid\"",
        ),
        (
            Some(reader.as_str()),
            "7",
            "The access token does not grant the scope this request needs",
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"The access token does not grant the scope this request needs\", scope=\"calendar.write\"",
        ),
    ] {
        let (status_code, headers, body) = grpc_call(&gw, method, token).await;
        assert_eq!(status_code, StatusCode::OK, "{token:?}");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(
            (headers["grpc-status"].to_str().unwrap(), headers["grpc-message"].to_str().unwrap()),
            (status, message)
        );
        assert_eq!(headers["www-authenticate"], challenge);
        assert!(body.is_empty(), "Trailers-Only: {body:?}");
    }
    let (_, headers, _) = grpc_call(&gw, "/nowhere.Service/Call", Some(&writer)).await;
    assert_eq!(headers["grpc-status"], "12");
    assert!(upstream.saw_nothing());

    // Allowed: the scope the method needs.
    let (status, _, _) = grpc_call(&gw, method, Some(&writer)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = upstream.next().await;
    assert_eq!(seen.uri, method);
    assert_eq!(seen.headers["content-type"], "application/grpc");
    // An HTTP client on the same route: the JSON refusal.
    let reply = send(Method::POST, &gw.url(method), &[], "").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("grpc-status"), None);
    gw.stop().await;
}

//! The README's demo, side by side with other tests: its configuration
//! (`tests/fixtures/demo.toml`) with port-0 listeners and a store of the
//! test's own, and its browser steps (sign in as alice, approve, trade the
//! code) driven by hand over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::{Method, StatusCode};

use super::{Reply, get, send, try_send};

/// The tests' copy of the README's demo configuration (see its header).
pub fn demo_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/demo.toml")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// The README's demo configuration, made runnable side by side with other
/// tests: both listeners on port 0 and the store in `dir`. Everything else
/// (clients, users, routes, token settings) is the fixture's.
pub fn demo_config_for_test(dir: &Path, token_format: Option<&str>) -> String {
    let text = std::fs::read_to_string(demo_config_path()).expect("read the demo config");
    let mut table: toml::Table = text.parse().expect("the demo config is TOML");
    let section = |t: &toml::Table, name: &str| -> toml::Table {
        t.get(name)
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| panic!("the demo config has a [{name}] table"))
            .clone()
    };
    for name in ["server", "admin"] {
        let mut s = section(&table, name);
        assert!(s.contains_key("listen"), "[{name}] listen is in the demo config");
        s.insert("listen".into(), "127.0.0.1:0".into());
        table.insert(name.into(), s.into());
    }
    let mut storage = section(&table, "storage");
    storage.insert("url".into(), format!("sqlite://{}/p.db", dir.display()).into());
    table.insert("storage".into(), storage.into());
    if let Some(format) = token_format {
        let mut authz = section(&table, "authorization_server");
        authz.insert("token_format".into(), format.into());
        table.insert("authorization_server".into(), authz.into());
    }
    toml::to_string(&table).expect("serialise the config")
}

/// The value of the hidden input `name` in `html`, unescaped.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no input {name:?} in:\n{html}")) + marker.len();
    let raw = &html[start..start + html[start..].find('"').expect("closing quote")];
    raw.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// `name=value` of the `Set-Cookie` header that sets `name`.
pub fn set_cookie(reply: &Reply, name: &str) -> String {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", reply.headers))
        .to_string()
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `Authorization: Basic` of the demo's client, `calendar-app` with secret
/// `calendar-secret`.
pub const CLIENT_BASIC: &str = "Basic Y2FsZW5kYXItYXBwOmNhbGVuZGFyLXNlY3JldA==";
pub const FORM: &str = "application/x-www-form-urlencoded";

pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// The demo client's authorization request, as a query.
pub fn authorization_query() -> String {
    form(&[
        ("response_type", "code"),
        ("client_id", "calendar-app"),
        ("redirect_uri", "http://127.0.0.1:3000/callback"),
        ("scope", "calendar.read"),
        ("state", "s1"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ])
}

/// `POST /oauth/login` as alice, from the login page `page` (its form and
/// its cookie), whatever the answer.
pub async fn post_login(gw: SocketAddr, page: &Reply) -> Reply {
    let html = page.text();
    let body = form(&[
        ("csrf", &hidden(&html, "csrf")),
        ("return_to", &hidden(&html, "return_to")),
        ("username", "alice"),
        ("password", "wonderland"),
    ]);
    let cookie = set_cookie(page, "portcullis_login");
    send(Method::POST, &format!("http://{gw}/oauth/login"), &[("content-type", FORM), ("cookie", &cookie)], body).await
}

/// Signs alice in through the login page the authorization request
/// shows: her session cookie, and where the page sends her back to.
pub async fn sign_in_as_alice(gw: SocketAddr) -> (String, String) {
    let login = get(&format!("http://{gw}/oauth/authorize?{}", authorization_query()), &[]).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    let signed_in = post_login(gw, &login).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.text());
    let session = set_cookie(&signed_in, "portcullis_session");
    (session, signed_in.header("location").expect("location").to_string())
}

/// The code in a redirect back to the client.
pub fn code_in(redirect: &Reply) -> String {
    code_in_location(redirect.header("location").expect("location"))
}

/// The code in a `Location` back to the client.
pub fn code_in_location(location: &str) -> String {
    location.split(['?', '&']).find_map(|p| p.strip_prefix("code=")).expect("a code").to_string()
}

/// Drives the README's browser steps by hand against `gw`: sign in as
/// alice, approve, and return the authorization code.
pub async fn approve_as_alice(gw: SocketAddr) -> String {
    let (session, back) = sign_in_as_alice(gw).await;
    let consent = get(&format!("http://{gw}{back}"), &[("cookie", &session)]).await;
    if consent.status == StatusCode::SEE_OTHER {
        // Consent given before (and remembered): straight back with a code.
        return code_in(&consent);
    }
    assert_eq!(consent.status, StatusCode::OK, "{}", consent.text());
    let approve = format!(
        "{}&{}",
        authorization_query(),
        form(&[("csrf", &hidden(&consent.text(), "csrf")), ("decision", "approve")])
    );
    let redirect = send(
        Method::POST,
        &format!("http://{gw}/oauth/authorize"),
        &[("content-type", FORM), ("cookie", &session)],
        approve,
    )
    .await;
    assert_eq!(redirect.status, StatusCode::SEE_OTHER, "{}", redirect.text());
    code_in(&redirect)
}

/// The token request that trades `code` (from `approve_as_alice`).
pub fn redemption(code: &str) -> [(&'static str, &str); 4] {
    [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", "http://127.0.0.1:3000/callback"),
        ("code_verifier", VERIFIER),
    ]
}

pub async fn token_request(gw: SocketAddr, pairs: &[(&str, &str)]) -> Reply {
    try_token_request(gw, pairs).await.unwrap_or_else(|e| panic!("the token endpoint: {e}"))
}

/// [`token_request`], for a test in which the gateway may be gone.
pub async fn try_token_request(gw: SocketAddr, pairs: &[(&str, &str)]) -> Result<Reply, String> {
    try_send(
        Method::POST,
        &format!("http://{gw}/oauth/token"),
        &[("content-type", FORM), ("authorization", CLIENT_BASIC)],
        form(pairs),
    )
    .await
}

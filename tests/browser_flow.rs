//! The three-party story (README) in a real browser: headless Chromium,
//! driven over WebDriver (tests/support/browser.rs) with a phone's viewport,
//! opens the authorization URL of a calendar app, signs in on Portcullis's
//! own pages, allows or denies, and lands back on the app's redirect URI (a
//! dead loopback port: the browser shows its error page, but the URL it
//! tried carries the `code`, `state` and `iss`). The test then plays the
//! app: it trades the code for tokens and calls the API through the gateway.
//!
//! Covered: the sign-in page (labelled fields, the client's name, a wrong
//! password), the consent page (the client, each scope in plain words,
//! Allow and Deny), remembered consent, an unregistered redirect URI (an
//! error page, never a redirect), and that every page fits a 412 px phone.
//! These are what only a browser can check: the CSP lets the forms submit
//! and follow their redirects, cookies carry the session, and the pages lay
//! out. Screenshots land in `target/browser-screenshots/browser_flow-*.png`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::browser::Browser;
use support::{APP_SECRET_HASH, Gateway, Reply, Upstream, config_toml, dead_addr, get, send};

/// `echo -n wonderland | portcullis hash-password`.
const ALICE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$KoFdJpggoVd7Qo+iflYKvA$M7RaK2QM3/Zyoaj7B6XxW5W2r4tT3HEZcN8pw6Ddy1E";
const ALICE_PASSWORD: &str = "wonderland";
const ISSUER: &str = "http://127.0.0.1:8080";
/// `ISSUER` as it appears in the redirect's query.
const ISS_ENCODED: &str = "http%3A%2F%2F127.0.0.1%3A8080";
const READ_DESCRIPTION: &str = "See your calendar events";
const WRITE_DESCRIPTION: &str = "Add, change and delete your calendar events";
/// RFC 7636 Appendix B.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// A state with characters that must survive encoding both ways.
const STATE: &str = "st-1 a/b+c";
/// How long a page or a redirect may take to show.
const WAIT: Duration = Duration::from_secs(10);

/// A gateway with alice, scope descriptions and the confidential client
/// `web` ("Calendar Web", secret `app-secret`) whose one redirect URI is
/// `callback`, on a loopback port nothing listens on.
struct Setup {
    upstream: Upstream,
    gateway: Gateway,
    callback: String,
}

impl Setup {
    async fn start() -> Setup {
        let callback = format!("http://{}/cb", dead_addr().await);
        let extra = format!(
            r#"
[[users]]
username = "alice"
password_hash = "{ALICE_HASH}"

[scopes]
"calendar.read" = {{ description = "{READ_DESCRIPTION}" }}
"calendar.write" = {{ description = "{WRITE_DESCRIPTION}" }}

[[clients]]
client_id = "web"
name = "Calendar Web"
client_secret_hash = "{APP_SECRET_HASH}"
redirect_uris = ["{callback}"]
scopes = ["calendar.read", "calendar.write"]
grant_types = ["authorization_code", "refresh_token"]
"#
        );
        let upstream = Upstream::start().await;
        let gateway = Gateway::start(&config_toml(upstream.addr, &extra)).await;
        Setup { upstream, gateway, callback }
    }

    /// The app's authorization URL for `scope`, with `STATE` and PKCE.
    fn authorize_url(&self, scope: &str) -> String {
        self.authorize_url_to(&self.callback, scope)
    }

    fn authorize_url_to(&self, redirect_uri: &str, scope: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", "web"),
                ("redirect_uri", redirect_uri),
                ("scope", scope),
                ("state", STATE),
                ("code_challenge", CHALLENGE),
                ("code_challenge_method", "S256"),
            ])
            .finish();
        self.gateway.url(&format!("/oauth/authorize?{query}"))
    }

    /// The app trades `code` at the token endpoint (`client_secret_basic`).
    async fn exchange(&self, code: &str) -> Reply {
        let basic = format!("Basic {}", STANDARD.encode("web:app-secret"));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.callback),
                ("code_verifier", VERIFIER),
            ])
            .finish();
        send(
            Method::POST,
            &self.gateway.url("/oauth/token"),
            &[("content-type", "application/x-www-form-urlencoded"), ("authorization", &basic)],
            body,
        )
        .await
    }

    /// Waits until the browser is on the redirect URI; its query, decoded.
    async fn landed(&self, browser: &Browser) -> (String, BTreeMap<String, String>) {
        let prefix = format!("{}?", self.callback);
        let url = browser
            .wait_for_url(|u| u.starts_with(&prefix), WAIT)
            .await
            .unwrap_or_else(|e| panic!("never sent back to {}: {e}", self.callback));
        let params = query(&url);
        (url, params)
    }
}

/// The decoded query of `url`; a parameter given twice fails the test.
fn query(url: &str) -> BTreeMap<String, String> {
    let raw = url.split_once('?').map_or("", |(_, q)| q);
    let raw = raw.split_once('#').map_or(raw, |(q, _)| q);
    let mut params = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()).into_owned() {
        assert!(params.insert(k.clone(), v).is_none(), "{k} twice in {url}");
    }
    params
}

/// Opens `url`; a navigation that ends on a refused connection (a redirect
/// to the dead callback) is no failure here.
async fn open(browser: &Browser, url: &str) {
    if let Err(e) = browser.goto(url).await {
        assert!(e.is_net_error(), "opening {url}: {e}");
    }
}

/// The visible text of the page's `<main>`.
async fn main_text(browser: &Browser) -> String {
    browser.wait_for_css("main", WAIT).await.expect("a page with <main>").text().await.expect("text")
}

/// Signs in on the sign-in page the browser shows.
async fn sign_in(browser: &Browser, username: &str, password: &str) {
    let user = browser.wait_for_css("input#username", WAIT).await.expect("the sign-in form");
    user.clear().await.unwrap();
    user.send_keys(username).await.unwrap();
    browser.find_css("input#password").await.unwrap().send_keys(password).await.unwrap();
    browser.find_css("form button[type=submit]").await.unwrap().click().await.unwrap();
}

/// Waits for the consent page and clicks `decision` (approve or deny).
async fn decide(browser: &Browser, decision: &str) {
    let button = browser
        .wait_for_css(&format!("button[name=decision][value={decision}]"), WAIT)
        .await
        .expect("the consent page");
    button.click().await.unwrap();
}

/// The HTTP status of the page's own response, as Chromium received it.
async fn page_status(browser: &Browser) -> Value {
    browser.execute("return performance.getEntriesByType('navigation')[0].responseStatus", vec![]).await.unwrap()
}

/// The page lays out within the phone's width: no sideways scrolling.
async fn assert_fits_phone(browser: &Browser, page: &str) {
    let v = browser.execute("return [document.documentElement.scrollWidth, window.innerWidth]", vec![]).await.unwrap();
    let (scroll, inner) = (v[0].as_u64().expect("scrollWidth"), v[1].as_u64().expect("innerWidth"));
    assert_eq!(inner, u64::from(support::browser::VIEWPORT.0), "{page}: not laid out at the phone's width");
    assert!(scroll <= inner, "{page}: {scroll} px wide on a {inner} px screen");
}

/// The browser signs in and allows `scope`; the code it brings back.
async fn approve(setup: &Setup, browser: &Browser, scope: &str) -> String {
    open(browser, &setup.authorize_url(scope)).await;
    sign_in(browser, "alice", ALICE_PASSWORD).await;
    decide(browser, "approve").await;
    let (url, params) = setup.landed(browser).await;
    params.get("code").cloned().unwrap_or_else(|| panic!("no code in {url}"))
}

#[tokio::test]
async fn the_user_signs_in_and_allows_and_the_app_calls_the_api() {
    let Some(browser) = Browser::start().await else { return };
    let mut setup = Setup::start().await;

    // The app sends the user to Portcullis: a sign-in page naming the app.
    let authorize = setup.authorize_url("calendar.read calendar.write");
    browser.goto(&authorize).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap(), authorize);
    assert_eq!(page_status(&browser).await, json!(200));
    assert_eq!(browser.title().await.unwrap(), "Sign in · Portcullis");
    let text = main_text(&browser).await;
    assert!(text.contains("Calendar Web"), "the client's name is shown: {text}");
    assert!(browser.find_css("[role=alert]").await.is_err(), "no error before any attempt");

    // Each field has its label, tied by `for` (what a screen reader reads).
    for (id, label) in [("username", "Username"), ("password", "Password")] {
        let tag = browser.find_css(&format!("label[for={id}]")).await.unwrap();
        assert_eq!(tag.text().await.unwrap(), label);
        let input = browser.find_css(&format!("input#{id}")).await.unwrap();
        assert_eq!(input.attribute("name").await.unwrap().as_deref(), Some(id));
        assert!(input.is_displayed().await.unwrap(), "{id} field visible");
        let labels = browser
            .execute(
                "return Array.from(document.getElementById(arguments[0]).labels, l => l.textContent)",
                vec![json!(id)],
            )
            .await
            .unwrap();
        assert_eq!(labels, json!([label]), "the browser ties {label:?} to #{id}");
    }
    assert_eq!(
        browser.find_css("input#password").await.unwrap().attribute("type").await.unwrap().as_deref(),
        Some("password")
    );
    let shot = browser.save_screenshot("browser_flow-login").await.unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Sign in: the consent page names the app and what it asks, in words.
    sign_in(&browser, "alice", ALICE_PASSWORD).await;
    browser.wait_for_css("button[name=decision][value=approve]", WAIT).await.expect("the consent page");
    assert_eq!(browser.title().await.unwrap(), "Allow access · Portcullis");
    let text = main_text(&browser).await;
    assert!(text.contains("Allow Calendar Web?"), "{text}");
    assert!(text.contains("Signed in as alice"), "{text}");
    let items = browser.find_all_css("ul.scopes li").await.unwrap();
    let mut listed = Vec::new();
    for item in &items {
        listed.push(item.text().await.unwrap());
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|l| l.starts_with(READ_DESCRIPTION)), "{listed:?}");
    assert!(listed.iter().any(|l| l.starts_with(WRITE_DESCRIPTION)), "{listed:?}");
    let allow = browser.find_css("button[name=decision][value=approve]").await.unwrap();
    assert_eq!(allow.text().await.unwrap(), "Allow");
    let deny = browser.find_css("button[name=decision][value=deny]").await.unwrap();
    assert_eq!(deny.text().await.unwrap(), "Deny");
    let shot = browser.save_screenshot("browser_flow-consent").await.unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Allow: back at the app with a code, the state and the issuer.
    allow.click().await.unwrap();
    let (url, params) = setup.landed(&browser).await;
    assert_eq!(params.get("state").map(String::as_str), Some(STATE), "{url}");
    assert_eq!(params.get("iss").map(String::as_str), Some(ISSUER), "{url}");
    assert!(url.contains(&format!("iss={ISS_ENCODED}")), "{url}");
    assert!(!params.contains_key("error"), "{url}");
    let code = params.get("code").unwrap_or_else(|| panic!("no code in {url}"));

    // The app trades the code, with its secret and the PKCE verifier.
    let reply = setup.exchange(code).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let tokens = reply.json();
    assert_eq!(tokens["token_type"], "Bearer", "{tokens}");
    assert_eq!(tokens["scope"], "calendar.read calendar.write", "{tokens}");
    let access = tokens["access_token"].as_str().expect("access_token");
    assert!(tokens["refresh_token"].as_str().is_some_and(|r| !r.is_empty()), "{tokens}");

    // And calls the API as alice.
    let reply = get(&setup.gateway.url("/calendar/events"), &[("authorization", &format!("Bearer {access}"))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = setup.upstream.next().await;
    assert_eq!(seen.uri, "/calendar/events");
    assert_eq!(seen.headers.get("x-auth-subject").and_then(|v| v.to_str().ok()), Some("alice"));
    assert_eq!(seen.headers.get("x-auth-client-id").and_then(|v| v.to_str().ok()), Some("web"));
}

#[tokio::test]
async fn a_remembered_consent_goes_straight_back_to_the_app() {
    let Some(browser) = Browser::start().await else { return };
    let setup = Setup::start().await;
    let first = approve(&setup, &browser, "calendar.read calendar.write").await;

    // Same browser, same session cookie: fewer scopes need no second "Allow".
    // Portcullis answers with a redirect, so the navigation itself ends on
    // the dead callback: `goto` reports the refused connection (a consent
    // page would have loaded fine).
    let went = browser.goto(&setup.authorize_url("calendar.read")).await;
    let refused = went.expect_err("no page loads on the way to the app");
    assert!(refused.is_net_error(), "{refused}");
    let (url, params) = setup.landed(&browser).await;
    assert_eq!(params.get("state").map(String::as_str), Some(STATE), "{url}");
    assert_eq!(params.get("iss").map(String::as_str), Some(ISSUER), "{url}");
    let second = params.get("code").unwrap_or_else(|| panic!("no code in {url}"));
    assert_ne!(second, &first, "a new code");
    // It is on Chromium's own error page for the callback.
    assert!(browser.find_css("button[name=decision]").await.is_err(), "no consent page");
    assert!(browser.find_css("input#password").await.is_err(), "no sign-in page");

    let reply = setup.exchange(second).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["scope"], "calendar.read", "the code carries only what was asked");
}

#[tokio::test]
async fn denying_sends_the_browser_back_with_access_denied() {
    let Some(browser) = Browser::start().await else { return };
    let setup = Setup::start().await;
    open(&browser, &setup.authorize_url("calendar.read calendar.write")).await;
    sign_in(&browser, "alice", ALICE_PASSWORD).await;
    decide(&browser, "deny").await;

    let (url, params) = setup.landed(&browser).await;
    assert_eq!(params.get("error").map(String::as_str), Some("access_denied"), "{url}");
    assert_eq!(params.get("state").map(String::as_str), Some(STATE), "{url}");
    assert_eq!(params.get("iss").map(String::as_str), Some(ISSUER), "{url}");
    assert!(!params.contains_key("code"), "no code after Deny: {url}");

    // Nothing was remembered: asking again shows the consent page again.
    open(&browser, &setup.authorize_url("calendar.read")).await;
    browser.wait_for_css("button[name=decision][value=approve]", WAIT).await.expect("asked again");
}

#[tokio::test]
async fn a_wrong_password_says_so_and_the_right_one_then_works() {
    let Some(browser) = Browser::start().await else { return };
    let setup = Setup::start().await;
    open(&browser, &setup.authorize_url("calendar.read")).await;
    sign_in(&browser, "alice", "looking-glass").await;

    let alert = browser.wait_for_css("[role=alert]", WAIT).await.expect("an error message");
    assert_eq!(alert.text().await.unwrap(), "Wrong username or password.");
    assert!(alert.is_displayed().await.unwrap());
    assert_eq!(page_status(&browser).await, json!(200));
    // Still the sign-in form, the name kept, the password not.
    let user = browser.find_css("input#username").await.unwrap();
    assert_eq!(user.property("value").await.unwrap(), "alice");
    assert_eq!(browser.find_css("input#password").await.unwrap().property("value").await.unwrap(), "");
    assert!(main_text(&browser).await.contains("Calendar Web"));
    assert_fits_phone(&browser, "sign-in page with an error").await;
    let shot = browser.save_screenshot("browser_flow-wrong-password").await.unwrap();
    eprintln!("screenshot: {}", shot.display());

    sign_in(&browser, "alice", ALICE_PASSWORD).await;
    decide(&browser, "approve").await;
    let (url, params) = setup.landed(&browser).await;
    assert_eq!(params.get("state").map(String::as_str), Some(STATE), "{url}");
    let code = params.get("code").unwrap_or_else(|| panic!("no code in {url}"));
    let reply = setup.exchange(code).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn an_unregistered_redirect_uri_gets_an_error_page_not_a_redirect() {
    let Some(browser) = Browser::start().await else { return };
    let setup = Setup::start().await;
    // Somewhere the attacker listens (nothing does here: a redirect would
    // show as a refused connection and that URL). Not `/cb`: a loopback
    // redirect URI may take any port (RFC 8252 §7.3), but not another path.
    let evil = format!("http://{}/evil", dead_addr().await);
    let authorize = setup.authorize_url_to(&evil, "calendar.read");
    browser.goto(&authorize).await.expect("the error page loads");

    assert_eq!(browser.current_url().await.unwrap(), authorize, "the browser stays on Portcullis");
    assert_eq!(page_status(&browser).await, json!(400));
    let h1 = browser.find_css("h1").await.unwrap().text().await.unwrap();
    assert_eq!(h1, "This request cannot be served");
    let alert = browser.find_css("[role=alert]").await.unwrap().text().await.unwrap();
    assert!(alert.to_lowercase().contains("redirect"), "the page says what is wrong: {alert}");
    assert!(browser.find_css("form").await.is_err(), "no form to sign in on");
    assert_fits_phone(&browser, "error page").await;
    let shot = browser.save_screenshot("browser_flow-bad-redirect").await.unwrap();
    eprintln!("screenshot: {}", shot.display());

    // Give a stray redirect time to happen: it must not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let url = browser.current_url().await.unwrap();
    assert!(!url.starts_with(&evil), "sent to the unregistered URI: {url}");
}

#[tokio::test]
async fn the_pages_fit_a_phone() {
    let Some(browser) = Browser::start().await else { return };
    let setup = Setup::start().await;
    open(&browser, &setup.authorize_url("calendar.read calendar.write")).await;
    browser.wait_for_css("input#username", WAIT).await.expect("the sign-in page");
    assert_fits_phone(&browser, "sign-in page").await;
    for selector in ["input#username", "input#password", "form button[type=submit]"] {
        assert!(browser.find_css(selector).await.unwrap().is_displayed().await.unwrap(), "{selector} shown");
    }

    sign_in(&browser, "alice", ALICE_PASSWORD).await;
    browser.wait_for_css("button[name=decision]", WAIT).await.expect("the consent page");
    assert_fits_phone(&browser, "consent page").await;
    let viewport_height = u64::from(support::browser::VIEWPORT.1);
    for value in ["approve", "deny"] {
        let button = browser.find_css(&format!("button[name=decision][value={value}]")).await.unwrap();
        assert!(button.is_displayed().await.unwrap(), "{value} shown");
        // On screen without scrolling, and big enough to tap (WCAG 2.2
        // 2.5.8's 24 px minimum; they are about 43.6 px, just short of 44).
        let rect = browser
            .execute(
                "const r = document.querySelector(`button[name=decision][value=${arguments[0]}]`).getBoundingClientRect(); \
                 return [r.left, r.right, r.bottom, r.height]",
                vec![json!(value)],
            )
            .await
            .unwrap();
        let [left, right, bottom, height] = [0, 1, 2, 3].map(|i| rect[i].as_f64().expect("a number"));
        assert!(left >= 0.0 && right <= f64::from(support::browser::VIEWPORT.0), "{value}: {rect}");
        assert!(bottom <= viewport_height as f64, "{value} below the fold: {rect}");
        assert!(height >= 24.0, "{value} too small to tap: {rect}");
    }
}

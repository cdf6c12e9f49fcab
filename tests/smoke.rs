//! The README's curl story, end to end over real sockets: a token from the
//! token endpoint, a call with it, 401 without it, 403 with too little scope.

mod support;

use http::{Method, StatusCode};
use support::{Gateway, Upstream, config_toml, get, send};

#[tokio::test]
async fn token_call_401_403() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let token = gw.token("other", "calendar.read").await;
    let auth = format!("Bearer {token}");

    let ok = get(&gw.url("/calendar/events"), &[("authorization", &auth)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let seen = upstream.next().await;
    assert_eq!(seen.uri, "/calendar/events");
    assert_eq!(seen.headers["x-auth-subject"], "other");
    assert_eq!(seen.headers["x-auth-client-id"], "other");
    assert_eq!(seen.headers["x-auth-scope"], "calendar.read");
    assert!(seen.headers.get("authorization").is_none());

    let none = get(&gw.url("/calendar/events"), &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"portcullis\""));

    let write = send(Method::POST, &gw.url("/calendar/events"), &[("authorization", &auth)], "{}").await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(
        write.header("www-authenticate"),
        Some(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"The access token does not grant the scope this request needs\", scope=\"calendar.write\""
        )
    );
    assert!(upstream.saw_nothing());
    gw.stop().await;
}

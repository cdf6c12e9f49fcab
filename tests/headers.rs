//! Header confusion (SECURITY.md 41–43, issue 12): headers and methods that
//! upstream frameworks read as something else than the gateway did. Each
//! rule from both sides, with the echo upstream: what is let through (and
//! exactly how), and what is dropped or refused. `tests/differential.rs`
//! shows the same against a real WSGI server.

mod support;

use support::{Gateway, Upstream, config_toml, raw_get, raw_request, with_server_line};

/// Every value of header `name` the upstream saw.
fn all(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(|v| v.to_str().expect("ASCII header").to_string()).collect()
}

fn bad_request(says: &str) -> serde_json::Value {
    serde_json::json!({ "error": "invalid_request", "error_description": says })
}

// ---------------------------------------------------------------------------
// Names with underscores (SECURITY.md 41)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn headers_with_underscores_are_dropped_by_default() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let token = gw.token("other", "calendar.read").await;
    let spoofs = "X_Auth_Subject: admin\r\nX_Forwarded_For: 6.6.6.6\r\nX-Custom_Thing: 1\r\nX-Kept: 1\r\n";

    for (path, auth) in [("/public/x", String::new()), ("/calendar/x", format!("Authorization: Bearer {token}\r\n"))] {
        let reply = raw_get(&gw, path, &format!("{spoofs}{auth}")).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        let seen = upstream.next().await;
        let underscored: Vec<&str> = seen.headers.keys().map(|k| k.as_str()).filter(|k| k.contains('_')).collect();
        assert_eq!(underscored, Vec::<&str>::new(), "{path}");
        assert_eq!(all(&seen.headers, "x-kept"), ["1"], "{path}");
        assert_eq!(all(&seen.headers, "x-forwarded-for"), ["127.0.0.1"], "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn headers_with_underscores_can_be_refused_or_kept() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&with_server_line(upstream.addr, "headers_with_underscores = \"refuse\"", "")).await;
    let reply = raw_get(&gw, "/public/x", "X_Auth_Subject: admin\r\n").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(
        reply.json(),
        bad_request("The request has a header whose name holds '_', which upstreams may read as '-'")
    );
    assert!(upstream.saw_nothing());
    // Without one, the request goes.
    assert_eq!(raw_get(&gw, "/public/x", "X-Auth-Subject: admin\r\n").await.status, 200);
    upstream.next().await;
    gw.stop().await;

    let gw = Gateway::start(&with_server_line(upstream.addr, "headers_with_underscores = \"keep\"", "")).await;
    let spoofs = "X_Auth_Subject: admin\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\
                  X_Original_URL: /admin\r\nX_HTTP_Method_Override: DELETE\r\n";
    let reply = raw_get(&gw, "/public/x", &format!("X_Custom: 1\r\n{spoofs}")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    // Kept, but for names that read as ones the gateway owns.
    let seen = upstream.next().await;
    let underscored: Vec<&str> = seen.headers.keys().map(|k| k.as_str()).filter(|k| k.contains('_')).collect();
    assert_eq!(underscored, ["x_custom"]);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Routing and identity overrides (SECURITY.md 42)
// ---------------------------------------------------------------------------

/// What upstream frameworks take for the client's address or the path.
const OVERRIDES: &str = "X-Original-URL: /admin/x\r\nX-Rewrite-URL: /admin/x\r\nX-Real-IP: 6.6.6.6\r\n\
    True-Client-IP: 6.6.6.6\r\nClient-IP: 6.6.6.6\r\nX-Client-IP: 6.6.6.6\r\nX-Forwarded-Port: 1\r\n\
    X-Forwarded-Prefix: /evil\r\nX-Forwarded-Ssl: on\r\nForwarded: for=6.6.6.6\r\n";

const OVERRIDE_NAMES: [&str; 10] = [
    "x-original-url",
    "x-rewrite-url",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "forwarded",
];

#[tokio::test]
async fn routing_and_address_overrides_from_an_untrusted_client_are_removed() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let reply = raw_get(&gw, "/public/x", &format!("{OVERRIDES}X-Kept: 1\r\n")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = upstream.next().await;
    for name in OVERRIDE_NAMES {
        let expected: &[&str] = if name == "x-real-ip" { &["127.0.0.1"] } else { &[] };
        assert_eq!(all(&seen.headers, name), expected, "{name}");
    }
    assert_eq!(all(&seen.headers, "x-kept"), ["1"]);
    gw.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_address_headers_but_never_a_path_override() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&with_server_line(upstream.addr, "trusted_proxies = [\"127.0.0.0/8\"]", "")).await;
    // The proxy vouches for 203.0.113.9, which talked to it; the client
    // made up 6.6.6.6 to the left of that.
    let reply = raw_get(&gw, "/public/x", &format!("{OVERRIDES}X-Forwarded-For: 6.6.6.6, 203.0.113.9\r\n")).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = upstream.next().await;
    assert_eq!(all(&seen.headers, "x-original-url"), Vec::<String>::new());
    assert_eq!(all(&seen.headers, "x-rewrite-url"), Vec::<String>::new());
    assert_eq!(all(&seen.headers, "x-real-ip"), ["203.0.113.9"]);
    assert_eq!(all(&seen.headers, "x-forwarded-for"), ["6.6.6.6, 203.0.113.9, 127.0.0.1"]);
    for (name, value) in [
        ("true-client-ip", "6.6.6.6"),
        ("client-ip", "6.6.6.6"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-prefix", "/evil"),
        ("forwarded", "for=6.6.6.6"),
    ] {
        assert_eq!(all(&seen.headers, name), [value], "{name}");
    }
    gw.stop().await;
}

const OVERRIDE_REFUSED: &str =
    "The request asks for another method than its own (X-HTTP-Method-Override, _method); send that method instead";

#[tokio::test]
async fn a_protected_route_refuses_a_method_override() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    // calendar.write lets POST through; the upstream must not be asked to
    // run DELETE instead.
    let token = gw.token("app", "calendar.write").await;
    for name in ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"] {
        let reply = raw_request(
            &gw,
            &format!("POST /calendar/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\n{name}: DELETE\r\nContent-Length: 0\r\n"),
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "{name}: {reply:?}");
        assert_eq!(reply.json(), bad_request(OVERRIDE_REFUSED), "{name}");
        assert!(upstream.saw_nothing(), "{name}");
    }
    // The query parameter Laravel and Symfony read, however it is spelt.
    for query in ["_method=DELETE", "a=1&_method=DELETE", "%5Fmethod=DELETE", "_method"] {
        let reply = raw_request(
            &gw,
            &format!("POST /calendar/x?{query} HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n"),
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "{query}: {reply:?}");
        assert_eq!(reply.json(), bad_request(OVERRIDE_REFUSED), "{query}");
        assert!(upstream.saw_nothing(), "{query}");
    }
    let reply = raw_request(
        &gw,
        &format!("POST /calendar/x?method=x&my_method=y HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n"),
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.next().await.uri, "/calendar/x?method=x&my_method=y");
    let reply = raw_request(
        &gw,
        &format!(
            "POST /calendar/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n"
        ),
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.next().await.method, "POST");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Methods (SECURITY.md 43)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn methods_that_are_not_upper_case_are_refused() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    // `other` may GET the calendar; a lower-case `delete` would fall to the
    // `"*"` rule here, and frameworks would run their DELETE handler.
    let token = gw.token("app", "calendar.write").await;
    for method in ["delete", "Delete", "get"] {
        let reply = raw_request(
            &gw,
            &format!("{method} /calendar/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\n"),
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "{method}: {reply:?}");
        assert_eq!(reply.json(), bad_request("The request method must be upper case"), "{method}");
        assert!(upstream.saw_nothing(), "{method}");
    }
    // Frameworks answer HEAD with their GET handler: a HEAD that the route
    // does not name needs GET's scopes, not the `"*"` rule's.
    let read_only = gw.token("other", "calendar.read").await;
    let reply = raw_request(
        &gw,
        &format!("HEAD /calendar/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {read_only}\r\n"),
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.next().await.method, "HEAD");
    let admin_route = raw_request(
        &gw,
        &format!("HEAD /admin/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {read_only}\r\n"),
        "",
    )
    .await;
    assert_eq!(admin_route.status, 403, "HEAD on /admin/ needs GET's admin scope: {admin_route:?}");
    let reply = raw_request(&gw, "PUT /admin/x HTTP/1.1\r\nHost: gw.example\r\nContent-Length: 0\r\n", "").await;
    assert_eq!((reply.status, reply.header("allow")), (405, Some("DELETE, GET, HEAD")), "{reply:?}");
    for method in ["DELETE", "PROPFIND", "M-SEARCH"] {
        let reply = raw_request(
            &gw,
            &format!("{method} /calendar/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {token}\r\n"),
            "",
        )
        .await;
        assert_eq!(reply.status, 200, "{method}: {reply:?}");
        assert_eq!(upstream.next().await.method, method);
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Hosts (SECURITY.md 42: a Host that becomes X-Forwarded-Host)
// ---------------------------------------------------------------------------

fn misdirected() -> serde_json::Value {
    serde_json::json!({
        "error": "misdirected_request",
        "error_description": "This gateway does not serve the host the request names",
    })
}

#[tokio::test]
async fn by_default_proxied_routes_answer_only_for_the_issuers_host() {
    let mut upstream = Upstream::start().await;
    // The standard configuration without its allowed_hosts line: the
    // issuer is http://127.0.0.1:8080, so the loopback names are served.
    let toml = config_toml(upstream.addr, "");
    let line = toml.lines().find(|l| l.starts_with("allowed_hosts")).expect("the fixture lists allowed_hosts");
    let gw = Gateway::start(&toml.replace(line, "")).await;
    for host in ["127.0.0.1:8080", "localhost", "LOCALHOST:1", "[::1]:8080"] {
        let reply = raw_request(&gw, &format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\n"), "").await;
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
        assert_eq!(all(&upstream.next().await.headers, "x-forwarded-host"), [host]);
    }
    for host in ["evil.example", "127.0.0.2", "localhost.evil.example"] {
        let reply = raw_request(&gw, &format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\n"), "").await;
        assert_eq!(reply.status, 421, "{host}: {reply:?}");
        assert_eq!(reply.json(), misdirected(), "{host}");
        assert!(upstream.saw_nothing(), "{host}");
    }
    // The authorization server's own endpoints build nothing from the Host
    // and stay reachable by any name (a backend asking for a token by a
    // cluster-internal one, say).
    let reply = raw_request(&gw, "GET /oauth/jwks HTTP/1.1\r\nHost: portcullis.internal\r\n", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    gw.stop().await;
}

#[tokio::test]
async fn allowed_hosts_take_names_and_subdomains_and_check_a_trusted_proxys_forwarded_host() {
    let mut upstream = Upstream::start().await;
    let toml = config_toml(upstream.addr, "");
    let line = toml.lines().find(|l| l.starts_with("allowed_hosts")).expect("the fixture lists allowed_hosts");
    let toml = toml.replace(
        line,
        "allowed_hosts = [\"api.example.com\", \"*.apps.example.com\"]\ntrusted_proxies = [\"127.0.0.1\"]",
    );
    let gw = Gateway::start(&toml).await;
    for (host, forwarded, status) in [
        ("api.example.com", None, 200),
        ("a.apps.example.com:443", None, 200),
        ("apps.example.com", None, 421),
        ("evil.example", None, 421),
        // Behind a trusted proxy the client-facing host is the one it
        // forwards, and that is what must be served.
        ("lb.internal", Some("api.example.com"), 200),
        ("lb.internal", Some("api.example.com, a.apps.example.com"), 200),
        ("api.example.com", Some("evil.example"), 421),
        // Frameworks differ on which entry they read: all must be served.
        ("lb.internal", Some("api.example.com, evil.example"), 421),
        ("lb.internal", Some("evil.example, api.example.com"), 421),
    ] {
        let extra = forwarded.map(|f| format!("X-Forwarded-Host: {f}\r\n")).unwrap_or_default();
        let reply = raw_request(&gw, &format!("GET /public/x HTTP/1.1\r\nHost: {host}\r\n{extra}"), "").await;
        assert_eq!(reply.status, status, "{host} {forwarded:?}: {reply:?}");
        if status == 200 {
            let seen = upstream.next().await;
            assert_eq!(all(&seen.headers, "x-forwarded-host"), [forwarded.unwrap_or(host)]);
        } else {
            assert_eq!(reply.json(), misdirected());
            assert!(upstream.saw_nothing());
        }
    }
    // A trusted proxy's `Forwarded` names the host too (Spring reads it first).
    for (forwarded, status) in [
        ("for=198.51.100.7;host=api.example.com;proto=https", 200),
        ("for=198.51.100.7;host=\"a.apps.example.com\"", 200),
        ("for=198.51.100.7;host=evil.example", 421),
        ("for=198.51.100.7, for=10.0.0.1;HOST=\"evil.example:443\"", 421),
    ] {
        let reply = raw_request(
            &gw,
            &format!("GET /public/x HTTP/1.1\r\nHost: api.example.com\r\nForwarded: {forwarded}\r\n"),
            "",
        )
        .await;
        assert_eq!(reply.status, status, "{forwarded}: {reply:?}");
        if status == 200 {
            assert_eq!(all(&upstream.next().await.headers, "forwarded"), [forwarded]);
        } else {
            assert!(upstream.saw_nothing());
        }
    }
    gw.stop().await;
}

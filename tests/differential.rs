//! Differential tests with real upstreams behind the gateway (SECURITY.md
//! 30, 40): a corpus of hostile paths goes through Portcullis to nginx, to
//! a WSGI app, to a servlet container (Jetty, which also cuts
//! `;parameters` off segments) and to Express (which routes without
//! regard to letter case), and for every request an upstream acted
//! on, the location it acted on must be the one the gateway's route
//! decision covered.
//!
//! Every gateway route has an upstream server of its own, which names the
//! route in its answer, so each answer says both what the gateway decided
//! (which route let it through) and what the upstream did with it (which
//! location its own routing chose).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use support::upstreams::{Acted, Express, Jetty, Nginx, Wsgi};
use support::{APP_SECRET_HASH, Gateway, raw, raw_status};

/// The routes, as gateway prefixes and upstream locations alike: what
/// each asks of a request, and its options.
const ROUTES: [(&str, &str); 6] = [
    ("admin", "[routes.scopes]\n\"*\" = [\"admin\"]\n"),
    ("cal", "[routes.scopes]\n\"*\" = [\"calendar.read\"]\n"),
    ("public", "public = true\n"),
    ("files", "public = true\nallow_encoded_slashes = true\n"),
    ("matrix", "public = true\nallow_path_parameters = true\n"),
    ("root", "public = true\n"),
];

fn route_names() -> Vec<&'static str> {
    ROUTES.iter().map(|(name, _)| *name).collect()
}

/// A gateway whose routes each go to `servers[route]`.
fn gateway_toml(servers: &[(String, SocketAddr)]) -> String {
    let by_name: BTreeMap<&str, SocketAddr> = servers.iter().map(|(r, a)| (r.as_str(), *a)).collect();
    let mut toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
allowed_hosts = ["gw.example", "127.0.0.1"]
[admin]
listen = "127.0.0.1:0"
[storage]
url = "sqlite::memory:"
[authorization_server]
issuer = "http://127.0.0.1:8080"

[[clients]]
client_id = "app"
client_secret_hash = "{APP_SECRET_HASH}"
scopes = ["calendar.read", "admin"]
grant_types = ["client_credentials"]
"#
    );
    for (name, rule) in ROUTES {
        let prefix = if name == "root" { "/".to_string() } else { format!("/{name}/") };
        let upstream = by_name[name];
        toml.push_str(&format!(
            "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"http://{upstream}\"\n{rule}"
        ));
    }
    toml
}

/// The hostile paths: each trick aimed from every route at the admin
/// location, and paths aimed at it from nowhere in particular.
fn corpus() -> Vec<String> {
    let tricks = [
        "..%2Fadmin/x",
        "..%2fadmin/x",
        "%2e%2e%2Fadmin/x",
        "%2E%2E/admin/x",
        "../admin/x",
        "..;/admin/x",
        "..%3B/admin/x",
        ".%2e/admin/x",
        "%252e%252e/admin/x",
        "%252e%252e%252Fadmin/x",
        "%25252e%25252e/admin/x",
        "..%252Fadmin/x",
        "..%5Cadmin/x",
        "..\\admin/x",
        "%C0%AE%C0%AE/admin/x",
        "%C0%AE%C0%AE%C0%AFadmin/x",
        "%E0%80%AE%E0%80%AE/admin/x",
        "..%00/admin/x",
        "%00/../admin/x",
        "x/..%2F..%2Fadmin/x",
        "..%2F..%2F..%2Fadmin/x",
        "a%2F..%2F..%2Fadmin/x",
        "a;x/..%2F..%2Fadmin/x",
        "ADMIN/x",
        "..%2FADMIN/x",
        "//admin/x",
        "%2F%2Fadmin/x",
    ];
    let mut paths = Vec::new();
    for from in ["/public/", "/cal/", "/files/", "/matrix/", "/", "/admin/"] {
        for trick in tricks {
            paths.push(format!("{from}{trick}"));
        }
    }
    paths.extend(
        [
            "/admin;x/y",
            "/admin;/y",
            "/admin%3Bx/y",
            "/ADMIN/y",
            "/Admin/y",
            "/aDmIn",
            "/%61dmin/y",
            "/admin%2Fy",
            "/admin%2fy",
            "/admin%252Fy",
            "/admin%5Cy",
            "//admin//y",
            "/./admin/./y",
            "/admin/%2e%2e/admin/y",
            "/admin.;/y",
            "/files/a%2Fb",
            "/files/a%2F..%2Fb",
            "/files/a%2F..%2F..%2Fadmin",
            "/files/%2e%2e%2Fadmin",
            "/files/..%2F..%2Fadmin%2Fy",
            "/files/%252e%252e%252Fadmin",
            "/matrix/a;v=1/b",
            "/matrix/a;v=1/..;/..;/admin/y",
            "/matrix;/../admin/y",
            "/matrix/..;/admin/y",
            "/cal/..%2Fadmin/secret",
            "/public/%25%32%65%25%32%65/admin/y",
            "/files/..%2F..%2Ffiles/y",
            "/adm%C4%B1n/y",
            "/%C5%BFecret",
        ]
        .map(String::from),
    );
    paths
}

/// A `GET path` on a connection of its own, with `token` if any; the
/// status and body of the answer.
async fn get_raw(gw: &Gateway, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let text = raw(
        gw.public,
        format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (raw_status(&text), body)
}

/// Sends the corpus with no token, a `calendar.read` token and an `admin`
/// token, and checks that every answer an upstream gave came from the
/// location of the route that let it through. Returns what reached the
/// upstream, for the caller's own checks.
async fn run_corpus(gw: &Gateway, upstream: &str) -> Vec<(String, Acted)> {
    let calendar = gw.token("app", "calendar.read").await;
    let admin = gw.token("app", "admin").await;
    let mut violations = Vec::new();
    let mut acted = Vec::new();
    for path in corpus() {
        for (token, holding) in
            [(None, "no token"), (Some(calendar.as_str()), "calendar.read"), (Some(admin.as_str()), "admin")]
        {
            let (status, body) = get_raw(gw, &path, token).await;
            let Some(a) = Acted::parse(&body) else { continue };
            if a.location != a.route {
                violations.push(format!(
                    "{path} ({holding}): route {:?} let it through, {upstream} acted on location {:?} ({:?})",
                    a.route, a.location, a.path
                ));
            }
            assert_eq!(status, 200, "{path}: {body}");
            acted.push((path.clone(), a));
        }
    }
    assert!(violations.is_empty(), "{upstream} acted outside the route the gateway chose:\n{}", violations.join("\n"));
    acted
}

/// The checks of [`run_corpus`] can fail: ordinary paths do reach their
/// locations, and a path some route accepts on purpose reaches its own.
fn assert_controls(acted: &[(String, Acted)], upstream: &str, files_path: &str) {
    let reached = |path: &str, location: &str| {
        acted.iter().any(|(p, a)| p == path && a.location == location)
            || panic!("{upstream}: {path} did not reach {location}; reached: {acted:#?}")
    };
    reached("/files/a%2Fb", "files");
    reached("/matrix/a;v=1/b", "matrix");
    assert!(
        acted.iter().any(|(p, a)| p == "/files/a%2Fb" && a.path == files_path),
        "{upstream} did not decode the allowed encoded slash: {acted:#?}"
    );
}

#[tokio::test]
async fn nginx_acts_only_on_the_location_the_gateway_authorised() {
    let Some(nginx) = Nginx::start(&route_names()).await else { return };
    let gw = Gateway::start(&gateway_toml(&nginx.servers)).await;

    // Controls: the harness sees what it is meant to.
    let admin = gw.token("app", "admin").await;
    let (status, body) = get_raw(&gw, "/admin/x", Some(&admin)).await;
    assert_eq!((status, Acted::parse(&body).map(|a| a.location)), (200, Some("admin".into())), "{body}");
    let (status, body) = get_raw(&gw, "/public/x", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Acted::parse(&body),
        Some(Acted { route: "public".into(), location: "public".into(), path: "/public/x".into() })
    );
    // nginx on its own does decode %2F and then resolve `..`: the
    // behaviour the gateway has to allow for.
    let direct =
        raw(nginx.addr("public"), b"GET /public/..%2Fadmin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(direct.contains("location=admin"), "{direct}");

    let acted = run_corpus(&gw, "nginx").await;
    assert_controls(&acted, "nginx", "/files/a/b");
    gw.stop().await;
}

#[tokio::test]
async fn a_wsgi_app_acts_only_on_the_location_the_gateway_authorised() {
    let Some(wsgi) = Wsgi::start(&route_names()).await else { return };
    let gw = Gateway::start(&gateway_toml(&wsgi.servers)).await;

    let direct = raw(wsgi.addr("root"), b"GET /admin%2Fx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(direct.contains("location=admin path=/admin/x"), "{direct}");

    let acted = run_corpus(&gw, "the WSGI app").await;
    assert_controls(&acted, "the WSGI app", "/files/a/b");
    gw.stop().await;
}

#[tokio::test]
async fn the_paths_of_the_attack_report_are_refused_with_400() {
    // Nothing is forwarded, so the upstreams need not be there.
    let mut servers = Vec::new();
    for name in route_names() {
        servers.push((name.to_string(), support::dead_addr().await));
    }
    let gw = Gateway::start(&gateway_toml(&servers)).await;
    let calendar = gw.token("app", "calendar.read").await;
    for (path, token, says) in [
        (
            "/public/..%2Fadmin/x",
            None,
            "The request path has an encoded slash (%2F), which upstreams read in different ways",
        ),
        (
            "/cal/..%2Fadmin/secret",
            Some(&calendar),
            "The request path has an encoded slash (%2F), which upstreams read in different ways",
        ),
        ("/admin%2Fx", None, "The request path has an encoded slash (%2F), which upstreams read in different ways"),
        (
            "/admin;x/y",
            None,
            "The request path has a ';' parameter, which servlet containers cut off before they route",
        ),
        (
            "/public/%252e%252e/admin/x",
            None,
            "The request path is percent-encoded twice (%25), which upstreams read in different ways",
        ),
        ("/ADMIN/x", None, "The request path may mean another route's path to the upstream"),
        ("/files/..%2Fadmin/x", None, "The request path may mean another route's path to the upstream"),
        ("/matrix/..;/admin/x", None, "The request path may mean another route's path to the upstream"),
        (
            "/public/%25%32%65%25%32%65/admin",
            None,
            "The request path is percent-encoded twice (%25), which upstreams read in different ways",
        ),
        ("/files/..%2F..%2Ffiles/x", None, "The request path may mean another route's path to the upstream"),
        ("/adm%C4%B1n/x", None, "The request path may mean another route's path to the upstream"),
    ] {
        let (status, body) = get_raw(&gw, path, token.map(String::as_str)).await;
        assert_eq!(status, 400, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(json, serde_json::json!({"error": "invalid_request", "error_description": says}), "{path}");
    }
    gw.stop().await;
}

/// What the WSGI app was handed (the second line of its answer).
fn wsgi_environ(body: &str) -> serde_json::Value {
    let line = body.lines().nth(1).unwrap_or_else(|| panic!("no environ line in {body:?}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test]
async fn a_servlet_container_acts_only_on_the_location_the_gateway_authorised() {
    let Some(jetty) = Jetty::start(&route_names()).await else { return };
    let gw = Gateway::start(&gateway_toml(&jetty.servers)).await;

    // Jetty on its own does map `/admin;x/y` to its /admin servlet: the
    // behaviour the gateway has to allow for.
    let direct = raw(
        jetty.servers[jetty.servers.len() - 1].1,
        b"GET /admin;x/y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(direct.contains("location=admin path=/admin/y"), "{direct}");

    let acted = run_corpus(&gw, "Jetty").await;
    assert_controls(&acted, "Jetty", "/files/a/b");
    assert!(
        acted.iter().any(|(p, a)| p == "/matrix/a;v=1/b" && a.path == "/matrix/a/b"),
        "Jetty did not cut the parameter the route allows: {acted:#?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_express_app_acts_only_on_the_location_the_gateway_authorised() {
    let Some(express) = Express::start(&route_names()).await else { return };
    let gw = Gateway::start(&gateway_toml(&express.servers)).await;

    // Express on its own does route `/ADMIN/x` to its /admin route.
    let direct = raw(express.addr("root"), b"GET /ADMIN/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(direct.contains("location=admin path=/ADMIN/x"), "{direct}");

    let acted = run_corpus(&gw, "Express").await;
    // Express does not decode %2F before it routes: the allowed encoded
    // slash reaches the files route as it was sent.
    assert_controls(&acted, "Express", "/files/a%2Fb");
    gw.stop().await;
}

/// SECURITY.md 41–43 against a real WSGI server: it reads `X_Auth_Subject`
/// as `X-Auth-Subject` (and joins the two), and the app upper-cases the
/// method; the gateway must leave it nothing of the client's to read so.
#[tokio::test]
async fn a_wsgi_app_sees_only_the_identity_and_address_the_gateway_set() {
    let Some(wsgi) = Wsgi::start(&route_names()).await else { return };
    let gw = Gateway::start(&gateway_toml(&wsgi.servers)).await;
    let calendar = gw.token("app", "calendar.read").await;
    let spoofs = "X_Auth_Subject: admin\r\nX_Auth_Scope: admin\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n";

    let send = |request: String| async move {
        let text = raw(gw.public, request.as_bytes()).await;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (raw_status(&text), body)
    };
    let (status, body) = send(format!(
        "GET /cal/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {calendar}\r\n{spoofs}Connection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let environ = wsgi_environ(&body);
    assert_eq!(environ["HTTP_X_AUTH_SUBJECT"], "app", "{environ}");
    assert_eq!(environ["HTTP_X_AUTH_SCOPE"], "calendar.read", "{environ}");
    assert_eq!(environ["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{environ}");
    assert_eq!(environ["HTTP_X_REAL_IP"], "127.0.0.1", "{environ}");

    // A public route asserts no identity at all.
    let (status, body) =
        send(format!("GET /public/x HTTP/1.1\r\nHost: gw.example\r\n{spoofs}Connection: close\r\n\r\n")).await;
    assert_eq!(status, 200, "{body}");
    let environ = wsgi_environ(&body);
    assert!(environ.get("HTTP_X_AUTH_SUBJECT").is_none(), "{environ}");
    assert!(environ.get("HTTP_X_AUTH_SCOPE").is_none(), "{environ}");

    // `delete` would be DELETE to the app; the gateway refuses it.
    let (status, body) = send(format!(
        "delete /cal/x HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {calendar}\r\nConnection: close\r\n\r\n"
    ))
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(Acted::parse(&body).is_none(), "{body}");
    gw.stop().await;
}

//! What an operator watches and relies on, in process over real sockets:
//! the admin listener (`/healthz`, `/readyz`, `/metrics` and the series an
//! alert would be written against), the strict split between the admin and
//! public listeners, and graceful shutdown (in-flight requests finish; idle
//! connections do not hold the process up).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::held::HeldUpstream;
use support::{Gateway, Upstream, config_toml, dead_addr, get, raw_status, send, with_server_line};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The longest any single awaited event may take before a test fails.
const BOUND: Duration = Duration::from_secs(10);

async fn metrics(gw: &Gateway) -> String {
    let reply = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text()
}

/// The value of the sample `series` (name and labels exactly as exposed),
/// or `None` when the exposition has no such line.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let value = l.strip_prefix(series)?.strip_prefix(' ')?;
        Some(value.trim().parse().expect("a numeric sample"))
    })
}

#[track_caller]
fn assert_sample(exposition: &str, series: &str, want: f64) {
    assert_eq!(sample(exposition, series), Some(want), "{series} in:\n{exposition}");
}

#[tokio::test]
async fn health_and_readiness_answer_on_the_admin_listener() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let reply = get(&gw.admin_url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(reply.text(), body, "{path}");
        assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"), "{path}");
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_every_outcome_by_route() {
    let upstream = Upstream::start().await;
    let dead = dead_addr().await;
    let extra =
        format!("[[routes]]\nname = \"dead\"\npath_prefix = \"/dead/\"\nupstream = \"http://{dead}\"\npublic = true\n");
    let gw = Gateway::start(&config_toml(upstream.addr, &extra)).await;

    // Before any traffic: the exposition is well-formed and every route's
    // series exist at zero, so dashboards and alerts need no traffic.
    let reply = get(&gw.admin_url("/metrics"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.header("content-type").expect("content-type");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let before = reply.text();
    assert!(before.contains("# TYPE portcullis_request_duration_seconds histogram"), "{before}");
    assert!(before.contains("# TYPE portcullis_requests_total counter"), "{before}");
    assert_sample(&before, r#"portcullis_requests_total{outcome="allowed",route="calendar"}"#, 0.0);
    assert_sample(&before, "portcullis_requests_in_flight", 0.0);

    let token = gw.token("other", "calendar.read").await;
    let auth = format!("Bearer {token}");
    let allowed = get(&gw.url("/calendar/x"), &[("authorization", &auth)]).await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", allowed.text());
    let missing = get(&gw.url("/calendar/x"), &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    let scope = send(Method::POST, &gw.url("/calendar/x"), &[("authorization", &auth)], "{}").await;
    assert_eq!(scope.status, StatusCode::FORBIDDEN);
    let invalid = get(&gw.url("/calendar/x"), &[("authorization", "Bearer not-a-token")]).await;
    assert_eq!(invalid.status, StatusCode::UNAUTHORIZED);
    let nowhere = get(&gw.url("/nowhere"), &[]).await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    let bad_gateway = get(&gw.url("/dead/x"), &[]).await;
    assert_eq!(bad_gateway.status, StatusCode::BAD_GATEWAY);
    let upload = send(Method::PUT, &gw.url("/public/upload"), &[], vec![b'x'; 12_345]).await;
    assert_eq!(upload.status, StatusCode::OK);

    let m = metrics(&gw).await;
    for (series, want) in [
        (r#"portcullis_requests_total{outcome="allowed",route="calendar"}"#, 1.0),
        (r#"portcullis_requests_total{outcome="missing_token",route="calendar"}"#, 1.0),
        (r#"portcullis_requests_total{outcome="insufficient_scope",route="calendar"}"#, 1.0),
        (r#"portcullis_requests_total{outcome="invalid_token",route="calendar"}"#, 1.0),
        (r#"portcullis_requests_total{outcome="not_found",route="(none)"}"#, 1.0),
        (r#"portcullis_requests_total{outcome="upstream_error",route="dead"}"#, 1.0),
        // Nothing else happened on these series.
        (r#"portcullis_requests_total{outcome="allowed",route="dead"}"#, 0.0),
        (r#"portcullis_requests_total{outcome="allowed",route="public"}"#, 1.0),
        (r#"portcullis_denials_total{reason="missing_token",route="calendar"}"#, 1.0),
        (r#"portcullis_denials_total{reason="insufficient_scope",route="calendar"}"#, 1.0),
        (r#"portcullis_denials_total{reason="invalid_token",route="calendar"}"#, 1.0),
        (r#"portcullis_request_duration_seconds_bucket{outcome="allowed",route="calendar",le="+Inf"}"#, 1.0),
        (r#"portcullis_request_duration_seconds_count{outcome="allowed",route="calendar"}"#, 1.0),
        (r#"portcullis_request_duration_seconds_count{outcome="upstream_error",route="dead"}"#, 1.0),
        (r#"portcullis_tokens_issued_total{grant_type="client_credentials"}"#, 1.0),
        ("portcullis_requests_in_flight", 0.0),
        // Bodies both ways, counted as they stream: only what the upstream
        // got and sent, not the gateway's own refusals.
        (r#"portcullis_request_body_bytes_total{route="public"}"#, 12_345.0),
        (r#"portcullis_response_body_bytes_total{route="public"}"#, upload.body.len() as f64),
        (r#"portcullis_request_body_bytes_total{route="calendar"}"#, 0.0),
        (r#"portcullis_response_body_bytes_total{route="calendar"}"#, allowed.body.len() as f64),
        (r#"portcullis_response_body_bytes_total{route="dead"}"#, 0.0),
        // The gateway's own share of allowed requests, apart from the
        // upstream's.
        (r#"portcullis_gateway_overhead_seconds_count{route="calendar"}"#, 1.0),
        (r#"portcullis_gateway_overhead_seconds_count{route="public"}"#, 1.0),
        (r#"portcullis_gateway_overhead_seconds_count{route="dead"}"#, 0.0),
        (r#"portcullis_upstream_duration_seconds_count{route="calendar"}"#, 1.0),
    ] {
        assert_sample(&m, series, want);
    }
    // A 404 is not a bearer-enforcement decision, and no raw path becomes a
    // label.
    assert!(!m.contains("route=\"/nowhere\""), "{m}");
    assert!(!m.contains("/calendar/x"), "{m}");
    assert!(!m.contains(&token), "{m}");
    gw.stop().await;
}

#[tokio::test]
async fn admin_endpoints_and_public_routes_never_share_a_listener() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    // The admin endpoints are not on the public listener: no route matches.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let reply = get(&gw.url(path), &[]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["error"], "not_found", "{path}");
    }
    // The public routes and the authorization server are not on the admin
    // listener.
    let token = gw.token("other", "calendar.read").await;
    for path in ["/calendar/x", "/public/x", "/oauth/jwks"] {
        let reply = get(&gw.admin_url(path), &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json()["error"], "not_found", "{path}");
    }
    assert!(upstream.saw_nothing(), "the admin listener forwarded a request");
    // The admin listener only reads.
    let reply = send(Method::POST, &gw.admin_url("/metrics"), &[], "x").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    gw.stop().await;
}

/// Polls every 50 ms until a connect to `addr` is refused (bounded).
async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
            && e.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} still accepts connections {BOUND:?} after shutdown began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_in_flight_gauge_counts_requests_being_handled() {
    let mut upstream = HeldUpstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let url = gw.url("/public/x");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    upstream.next_head().await;
    assert_sample(&metrics(&gw).await, "portcullis_requests_in_flight", 1.0);

    upstream.release_one();
    let reply = tokio::time::timeout(BOUND, in_flight).await.expect("the request completes").expect("request task");
    assert_eq!(reply.status, StatusCode::OK);
    let m = metrics(&gw).await;
    assert_sample(&m, "portcullis_requests_in_flight", 0.0);
    assert_sample(&m, r#"portcullis_requests_total{outcome="allowed",route="public"}"#, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn stop_lets_the_request_in_flight_finish() {
    let mut upstream = HeldUpstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let public = gw.public;

    let url = gw.url("/public/report");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    let head = upstream.next_head().await;
    assert!(head.starts_with("GET /public/report HTTP/1.1\r\n"), "{head}");

    let stopping = tokio::spawn(gw.stop());
    // Shutdown has begun once the public listener is closed...
    wait_refused(public).await;
    // ...and it waits for the request the upstream is still holding.
    assert!(!stopping.is_finished(), "stop returned with a request in flight");
    assert!(!in_flight.is_finished(), "the held request already ended");

    let released = Instant::now();
    upstream.release_one();
    let reply =
        tokio::time::timeout(BOUND, in_flight).await.expect("the in-flight request completes").expect("request task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok");
    tokio::time::timeout(BOUND, stopping).await.expect("stop returns once the request is done").expect("stop task");
    // Well inside the 5 s drain timeout: it ended because the request did.
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "stop took {:?} after the request finished",
        released.elapsed()
    );
}

fn with_shutdown_delay(upstream: SocketAddr, delay: &str) -> String {
    with_server_line(upstream, &format!("shutdown_delay = \"{delay}\""), "")
}

/// With `shutdown_delay`, a stopping gateway fails `/readyz` at once but
/// still serves new connections, which a load balancer keeps sending until
/// it has seen the probe fail.
#[tokio::test]
async fn during_the_shutdown_delay_readiness_fails_and_new_connections_are_served() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_shutdown_delay(upstream.addr, "60s")).await;
    let (ready, url) = (gw.admin_url("/readyz"), gw.url("/public/late"));
    let stopping = tokio::spawn(gw.stop());

    let deadline = Instant::now() + BOUND;
    loop {
        let reply = get(&ready, &[]).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(reply.text(), "draining\n");
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(Instant::now() < deadline, "/readyz still passes {BOUND:?} after the stop signal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new connection, made after the probe failed, is still served.
    let reply = get(&url, &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["uri"], "/public/late", "{}", reply.text());
    assert!(!stopping.is_finished(), "stop returned inside a 60 s shutdown delay");
    stopping.abort();
}

/// The listeners close once the delay is over, not before.
#[tokio::test]
async fn the_listeners_close_when_the_shutdown_delay_is_over() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&with_shutdown_delay(upstream.addr, "700ms")).await;
    let public = gw.public;
    let signalled = Instant::now();
    let stopping = tokio::spawn(gw.stop());
    wait_refused(public).await;
    assert!(signalled.elapsed() >= Duration::from_millis(700), "closed after {:?}", signalled.elapsed());
    tokio::time::timeout(BOUND, stopping).await.expect("stop returns after the delay").expect("stop task");
}

/// Reads one HTTP/1.1 response with a `content-length` body from `stream`,
/// leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().expect("content-length"))
                    .unwrap_or_else(|| panic!("no content-length in {head}"));
                if data.len() >= end + 4 + length {
                    return;
                }
            }
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed mid-response");
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(BOUND, read).await.expect("a response in time");
    String::from_utf8_lossy(&data).into_owned()
}

/// Whether the server closed `stream` (EOF or reset) within the bound.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(BOUND, stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

#[tokio::test]
async fn idle_keep_alive_connections_do_not_hold_up_stop() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    // A keep-alive connection with one finished exchange, left open.
    let mut idle = TcpStream::connect(gw.public).await.expect("connect");
    idle.write_all(b"GET /public/x HTTP/1.1\r\nHost: gw.example\r\n\r\n").await.expect("write");
    let response = read_response(&mut idle).await;
    assert_eq!(raw_status(&response), 200, "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("connection: close"),
        "the gateway should keep the connection alive: {response}"
    );
    // An admin connection the same way.
    let mut idle_admin = TcpStream::connect(gw.admin).await.expect("connect");
    idle_admin.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await.expect("write");
    let response = read_response(&mut idle_admin).await;
    assert_eq!(raw_status(&response), 200, "{response}");

    let started = Instant::now();
    tokio::time::timeout(BOUND, gw.stop()).await.expect("stop returns");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop waited {:?} on idle connections (drain timeout 5 s)",
        started.elapsed()
    );
    assert!(closed_by_server(&mut idle).await, "the idle public connection was left open");
    assert!(closed_by_server(&mut idle_admin).await, "the idle admin connection was left open");
}

#[tokio::test]
async fn a_connection_that_never_sent_a_byte_does_not_hold_up_stop() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let mut silent = TcpStream::connect(gw.public).await.expect("connect");
    // Make sure the gateway has accepted it: a later request on another
    // connection is answered, and connections are accepted in order.
    let reply = get(&gw.url("/public/x"), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);

    let started = Instant::now();
    tokio::time::timeout(BOUND, gw.stop()).await.expect("stop returns");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stop waited {:?} on a silent connection (drain timeout 5 s)",
        started.elapsed()
    );
    assert!(closed_by_server(&mut silent).await, "the silent connection was left open");
}

/// Every request gets an `X-Request-Id` (the client's when it sent a sane
/// one), which goes upstream and comes back to the client.
#[tokio::test]
async fn request_ids_go_upstream_and_back() {
    let mut upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;

    let fresh = get(&gw.url("/public/a"), &[]).await;
    let id = fresh.header("x-request-id").expect("an id is generated").to_string();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(upstream.next().await.headers["x-request-id"], id.as_str());

    let kept = get(&gw.url("/public/b"), &[("x-request-id", "trace-42")]).await;
    assert_eq!(kept.header("x-request-id"), Some("trace-42"));
    assert_eq!(upstream.next().await.headers["x-request-id"], "trace-42");

    let replaced = get(&gw.url("/public/c"), &[("x-request-id", "has spaces and \"quotes\"")]).await;
    let new = replaced.header("x-request-id").expect("id");
    assert_ne!(new, "has spaces and \"quotes\"");
    assert_eq!(new.len(), 32);
    upstream.next().await;

    // The gateway's own answers carry one too.
    let refused = get(&gw.url("/calendar/x"), &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.header("x-request-id").map(str::len), Some(32));
    gw.stop().await;
}

/// A full validation cache evicts, and says so: the eviction counter
/// grows when more tokens are in use than `cache.max_entries` holds.
#[tokio::test]
async fn a_full_validation_cache_counts_its_evictions() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "").replace("max_entries = 1000", "max_entries = 2")).await;
    let mut tokens = Vec::new();
    for _ in 0..6 {
        tokens.push(gw.token("other", "calendar.read").await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for t in &tokens {
            let ok = get(&gw.url("/calendar/x"), &[("authorization", &format!("Bearer {t}"))]).await;
            assert_eq!(ok.status, StatusCode::OK);
        }
        let metrics = get(&gw.admin_url("/metrics"), &[]).await.text();
        let evicted: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("portcullis_validation_cache_evictions_total "))
            .map(|v| v.trim().parse().expect("number"))
            .expect("the eviction counter is exported");
        if evicted > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "six tokens in a two-entry cache never evicted:\n{metrics}");
    }
    gw.stop().await;
}

/// A store that fails (here its tables are gone, dropped by another
/// process): `/readyz` says so, and validation fails closed with `503`
/// and `Retry-After` rather than letting a token through unchecked.
#[tokio::test]
async fn a_failing_store_fails_readiness_and_validation_closed() {
    use sqlx::Connection as _;
    let mut upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("p.db");
    let toml = config_toml(upstream.addr, "")
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}\"", db.display()));
    let gw = Gateway::start(&toml).await;
    let token = gw.token("other", "calendar.read").await;
    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!((ready.status, ready.text().as_str()), (StatusCode::OK, "ready\n"));

    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.expect("connect");
    sqlx::query("DROP TABLE revoked_tokens").execute(&mut other).await.expect("drop");
    other.close().await.expect("close");

    let ready = get(&gw.admin_url("/readyz"), &[]).await;
    assert_eq!((ready.status, ready.text().as_str()), (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"));
    let refused = get(&gw.url("/calendar/x"), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"], "temporarily_unavailable");
    assert!(upstream.saw_nothing(), "nothing is forwarded on an unchecked token");
    // Liveness is not readiness: the process itself is fine.
    assert_eq!(get(&gw.admin_url("/healthz"), &[]).await.status, StatusCode::OK);
    gw.stop().await;
}

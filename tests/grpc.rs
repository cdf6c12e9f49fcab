//! gRPC through the gateway, with a real gRPC client and server (grpcio,
//! Debian's `python3-grpcio`, `tests/upstreams/grpc_echo.py`) and the
//! server behind an `h2c://` route (or an `https://` one, over TLS): unary and bidirectional streaming
//! calls, trailers and statuses relayed, a deadline the client set,
//! and refusals the client reads as gRPC statuses.
//!
//! Outside CI a machine without grpcio skips (with a note on stderr); with
//! `CI=true` that panics, since `.ci/run` installs it.

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Gateway, config_toml};

/// Debian's Python, whose packages hold grpcio (a pyenv's may not).
const PYTHON: &str = "/usr/bin/python3";

fn script() -> String {
    format!("{}/tests/upstreams/grpc_echo.py", env!("CARGO_MANIFEST_DIR"))
}

/// Whether grpcio is there; outside CI its absence skips the test.
fn grpcio() -> bool {
    let present = Command::new(PYTHON).args(["-c", "import grpc"]).status().is_ok_and(|s| s.success());
    if !present {
        let note = "the gRPC tests need grpcio (python3-grpcio; .ci/run installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and {note}");
        eprintln!("SKIPPED: {note}");
    }
    present
}

/// The gRPC server, killed on drop.
struct Server {
    addr: SocketAddr,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn server() -> Server {
    server_with(&[]).await
}

/// The gRPC server, started with `args` after `serve`.
async fn server_with(args: &[&str]) -> Server {
    let mut child = Command::new(PYTHON)
        .args([script().as_str(), "serve"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let stdout = child.stdout.take().expect("piped");
    let line = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next());
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .expect("the gRPC server comes up")
        .expect("read")
        .expect("a line")
        .expect("a line");
    let port = line.strip_prefix("grpc ").and_then(|p| p.parse().ok()).expect("`grpc PORT`");
    Server { addr: SocketAddr::from(([127, 0, 0, 1], port)), child }
}

/// What the client's calls through `gw` came to, by call name.
async fn call(gw: &Gateway, token: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    call_only(gw, token, &[]).await
}

/// [`call`], making only the calls `names`.
async fn call_only(gw: &Gateway, token: &str, names: &[&str]) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut client = Command::new(PYTHON);
    client.args([script().as_str(), "call", &gw.public.to_string(), token]).args(names);
    let out = tokio::task::spawn_blocking(move || client.output()).await.expect("joined").expect("the client runs");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
            (v["call"].as_str().expect("call").to_string(), v)
        })
        .collect()
}

fn config(grpc: SocketAddr) -> String {
    config_toml(
        grpc,
        &format!(
            r#"
[[routes]]
name = "grpc"
path_prefix = "/test.Echo/"
upstream = "h2c://{grpc}"
[routes.scopes]
POST = ["calendar.read"]
"#
        ),
    )
}

/// Checks what [`call`] came to when every call went through: answers,
/// the gateway's identity in and the token out, trailers, streams,
/// statuses and deadlines.
fn went_through(calls: &std::collections::BTreeMap<String, serde_json::Value>) {
    let unary = &calls["unary"];
    assert_eq!(unary["code"], "OK", "{unary}");
    let answer: serde_json::Value = serde_json::from_str(unary["responses"][0].as_str().unwrap()).unwrap();
    assert_eq!(answer["echo"], "hello");
    assert_eq!(answer["client_id"], "app", "the gateway's identity reached the service");
    assert_eq!(answer["authorization"], serde_json::Value::Null, "the token did not");
    assert_eq!(unary["trailers"]["x-trailer"], "done", "trailers are relayed");

    assert_eq!(calls["chat"]["code"], "OK", "{}", calls["chat"]);
    assert_eq!(calls["chat"]["responses"], serde_json::json!(["one", "two", "three"]));

    assert_eq!(calls["slow"]["code"], "DEADLINE_EXCEEDED", "{}", calls["slow"]);
    assert_eq!(calls["fail"]["code"], "NOT_FOUND", "{}", calls["fail"]);
    assert_eq!(calls["fail"]["details"], "no such thing");
}

#[tokio::test]
async fn unary_and_streaming_calls_go_through_with_trailers_statuses_and_deadlines() {
    if !grpcio() {
        return;
    }
    let upstream = server().await;
    let gw = Gateway::start(&config(upstream.addr)).await;
    let token = gw.token("app", "calendar.read").await;
    went_through(&call(&gw, &token).await);
    drop(upstream);
    gw.stop().await;
}

/// A gRPC service over TLS, behind an `https://` route: the gateway learns
/// in ALPN that it speaks HTTP/2, and verifies it against the route's CA.
#[tokio::test]
async fn calls_go_through_to_a_service_over_tls_that_agreed_to_h2() {
    if !grpcio() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = support::ca::Ca::new("gRPC Test CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"], (2040, 1, 1));
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert).expect("write");
    std::fs::write(&key_path, key).expect("write");
    let upstream = server_with(&[cert_path.to_str().expect("path"), key_path.to_str().expect("path")]).await;
    let tls = format!("ca = \"{}\"\nupstream = \"https://", ca.write(dir.path()).display());
    let toml = config(upstream.addr).replace("upstream = \"h2c://", &tls);
    let gw = Gateway::start(&toml).await;
    let token = gw.token("app", "calendar.read").await;
    went_through(&call(&gw, &token).await);
    drop(upstream);
    gw.stop().await;
}

#[tokio::test]
async fn calls_without_a_token_or_scope_are_refused_as_grpc_statuses() {
    if !grpcio() {
        return;
    }
    let upstream = server().await;
    let gw = Gateway::start(&config(upstream.addr)).await;
    let calls = call(&gw, "-").await;
    for (name, outcome) in &calls {
        assert_eq!(outcome["code"], "UNAUTHENTICATED", "{name}: {outcome}");
        assert_eq!(outcome["details"], "This route requires a bearer access token", "{name}");
    }
    let calls = call(&gw, "not-a-token").await;
    assert_eq!(calls["unary"]["code"], "UNAUTHENTICATED", "{}", calls["unary"]);

    // A token without the route's scope.
    let weak = gw.token("app", "admin").await;
    let calls = call(&gw, &weak).await;
    for (name, outcome) in &calls {
        assert_eq!(outcome["code"], "PERMISSION_DENIED", "{name}: {outcome}");
    }
    drop(upstream);
    gw.stop().await;
}

/// The client's deadline, not the route's timeout, bounds a gRPC call: a
/// call given 10 s is answered after the 3 s it takes, past the route's
/// 300 ms.
#[tokio::test]
async fn a_calls_deadline_replaces_the_routes_timeout() {
    if !grpcio() {
        return;
    }
    let upstream = server().await;
    let toml = config(upstream.addr).replace("upstream = \"h2c://", "timeout = \"300ms\"\nupstream = \"h2c://");
    let gw = Gateway::start(&toml).await;
    let token = gw.token("app", "calendar.read").await;
    let calls = call_only(&gw, &token, &["patient", "slow"]).await;
    assert_eq!(calls["patient"]["code"], "OK", "{}", calls["patient"]);
    assert_eq!(calls["patient"]["responses"], serde_json::json!(["worth it"]));
    assert_eq!(calls["slow"]["code"], "DEADLINE_EXCEEDED", "{}", calls["slow"]);
    drop(upstream);
    gw.stop().await;
}

//! The `portcullis` binary as an operator runs it: `check` and its exit
//! codes and messages, `serve` refusing a bad configuration before it
//! touches anything, failing loudly on a taken port, serving the README's
//! example configuration, draining in-flight requests on SIGTERM and exiting
//! 0, never writing a token or secret to its logs, `hash-password`, and
//! `resolve_interval` following what a host name resolves to (the process
//! in a mount namespace of its own, with an `/etc/hosts` the test writes).
//!
//! Every test runs the real binary as a child process on `127.0.0.1:0` and
//! learns its ports from the "portcullis is serving" log line.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use http::{Method, StatusCode};
use support::demo::{
    CHALLENGE, CLIENT_BASIC, FORM, approve_as_alice, authorization_query, code_in, demo_config_for_test,
    demo_config_path, form, hidden, redemption, set_cookie, sign_in_as_alice, token_request, try_token_request,
    write_config,
};
use support::held::HeldUpstream;
use support::served::{BIN, BOUND, Served, try_raw, wait_refused};
use support::{get, send};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// sysexits.h EX_CONFIG, what `check` and `serve` exit with on a bad file.
const EX_CONFIG: i32 = 78;

/// The example configuration users start from, and edit.
fn example_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml")
}

/// Runs the binary to completion with `stdin` as its input; panics (and
/// kills it) if it is still running after `BOUND`.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::{Read as _, Write as _};
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`portcullis {}` still ran after {BOUND:?}; stderr:\n{}",
                args.join(" "),
                text(&stderr.join().expect("stderr"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
}

fn check(config: &Path) -> Output {
    run(&["check", "--config", config.to_str().expect("UTF-8 path")], b"")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The field names of a `ConfigError` report on stderr: every indented
/// `field: reason` line after the "invalid configuration in" header.
fn reported_fields(stderr: &str) -> Vec<String> {
    let mut lines = stderr.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("invalid configuration in "), "unexpected report: {stderr}");
    lines
        .filter_map(|l| l.strip_prefix("  "))
        .map(|l| l.split_once(": ").unwrap_or_else(|| panic!("not a `field: reason` line: {l:?}")).0.to_string())
        .collect()
}

/// A minimal valid configuration around `routes`, with its store in `dir`.
fn minimal_config(dir: &Path, server_extra: &str, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}
[admin]
listen = "127.0.0.1:0"
[storage]
url = "sqlite://{dir}/p.db"
[authorization_server]
issuer = "http://127.0.0.1:8080"
[log]
format = "json"
level = "info"
{routes}
"#,
        dir = dir.display()
    )
}

async fn client_credentials_token(gw: SocketAddr, secret: &str, scope: &str) -> support::Reply {
    send(
        Method::POST,
        &format!("http://{gw}/oauth/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("grant_type=client_credentials&client_id=calendar-app&client_secret={secret}&scope={scope}"),
    )
    .await
}

// ---------------------------------------------------------------------------
// check

/// The one test of the shipped example: it is valid, whatever a user made
/// of it (its contents are theirs; the tests use `tests/fixtures/demo.toml`).
#[test]
fn check_accepts_the_shipped_example_config() {
    let out = check(&example_config_path());
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains(": ok ("), "{}", text(&out.stdout));
}

#[test]
fn check_counts_what_a_config_holds() {
    let path = demo_config_path();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let table: toml::Table = std::fs::read_to_string(&path).expect("read").parse().expect("TOML");
    let count = |key: &str| table.get(key).and_then(toml::Value::as_array).map_or(0, Vec::len);
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok ({} routes, {} clients, {} users)\n",
            path.display(),
            count("routes"),
            count("clients"),
            count("users")
        )
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn check_refuses_an_unknown_key_and_names_it_with_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `ttll` is on line 10 of this file.
    let config = "[server]\n\
                  listen = \"127.0.0.1:0\"\n\
                  [admin]\n\
                  listen = \"127.0.0.1:0\"\n\
                  [authorization_server]\n\
                  issuer = \"http://127.0.0.1:8080\"\n\
                  [cache]\n\
                  ttl = \"1s\"\n\
                  max_entries = 10\n\
                  ttll = \"1s\"\n";
    assert_eq!(config.lines().position(|l| l.starts_with("ttll")), Some(9), "the fixture puts ttll on line 10");
    let path = write_config(dir.path(), "unknown.toml", config);
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "stderr: {stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(stderr.starts_with(&format!("invalid configuration in {}:", path.display())), "{stderr}");
    assert!(stderr.contains("unknown field `ttll`"), "{stderr}");
    // The operator is sent to the line the key is on.
    assert!(stderr.contains("line 10:"), "the report should point at line 10, where `ttll` is: {stderr}");
}

#[test]
fn check_names_every_bad_field_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        r#"
[server]
listen = "nowhere"
[admin]
listen = "127.0.0.1:0"
[storage]
url = "sqlite://{dir}/p.db"
[authorization_server]
issuer = "http://auth.example.com"
[cache]
ttl = "soon"

[[clients]]
client_id = "calendar-app"
client_secret_hash = "not-a-phc-string"
scopes = ["calendar.read"]
grant_types = ["password"]

[[routes]]
name = "no-scopes"
path_prefix = "/a/"
upstream = "static://"

[[routes]]
name = "lowercase"
path_prefix = "/b/"
upstream = "static://"
[routes.scopes]
get = ["calendar.read"]
"#,
        dir = dir.path().display()
    );
    let path = write_config(dir.path(), "bad.toml", &config);
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "stderr: {stderr}");
    assert_eq!(text(&out.stdout), "");
    let mut fields = reported_fields(&stderr);
    fields.sort();
    let mut want = vec![
        "server.listen",
        "authorization_server.issuer",
        "cache.ttl",
        "clients[0].client_secret_hash",
        "clients[0].grant_types[0]",
        // The only grant type listed was refused, so none is left.
        "clients[0].grant_types",
        "routes[0].scopes",
        "routes[1].scopes.get",
    ];
    want.sort();
    assert_eq!(fields, want, "full report:\n{stderr}");
    // Each line says what is wrong, not only where.
    assert!(stderr.contains("\"nowhere\" is not an address"), "{stderr}");
    assert!(stderr.contains("must be an https:// URL"), "{stderr}");
    assert!(stderr.contains("\"soon\" is not a duration"), "{stderr}");
    assert!(stderr.contains("\"password\": must be"), "{stderr}");
    assert!(stderr.contains("is not a PHC string"), "{stderr}");
    assert!(!dir.path().join("p.db").exists(), "check opened the store");
}

#[test]
fn check_on_a_missing_file_says_it_cannot_read_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "stderr: {stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(stderr.starts_with(&format!("invalid configuration in {}:", path.display())), "{stderr}");
    assert!(stderr.contains("(file): cannot read:"), "{stderr}");
}

// ---------------------------------------------------------------------------
// serve: start-up failures

#[test]
fn serve_refuses_a_bad_config_before_binding_or_opening_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Hold the port: if serve bound before validating it would fail with
    // "cannot listen" (exit 1) instead of naming the bad field (exit 78).
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr");
    let config = minimal_config(dir.path(), "", "[cache]\nttl = \"soon\"\n")
        .replace("listen = \"127.0.0.1:0\"\n\n[admin]", &format!("listen = \"{addr}\"\n\n[admin]"));
    assert!(config.contains(&format!("listen = \"{addr}\"")), "{config}");
    let path = write_config(dir.path(), "bad.toml", &config);
    let out = run(&["serve", "--config", path.to_str().expect("UTF-8 path")], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "stderr: {stderr}");
    assert_eq!(reported_fields(&stderr), vec!["cache.ttl"], "{stderr}");
    assert!(!stderr.contains("cannot listen"), "{stderr}");
    assert!(!dir.path().join("p.db").exists(), "serve created the store before validating the config");
    drop(held);
}

#[test]
fn serve_on_a_taken_port_fails_naming_the_address() {
    for which in ["public", "admin"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let config = minimal_config(dir.path(), "", "");
        let section = if which == "public" { "[server]" } else { "[admin]" };
        let config =
            config.replace(&format!("{section}\nlisten = \"127.0.0.1:0\""), &format!("{section}\nlisten = \"{addr}\""));
        assert!(config.contains(&addr.to_string()), "{config}");
        let path = write_config(dir.path(), "taken.toml", &config);
        let out = run(&["serve", "--config", path.to_str().expect("UTF-8 path")], b"");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{which}: stderr: {stderr}");
        assert!(stderr.contains(&format!("portcullis: cannot listen on {addr} ({which})")), "{which}: {stderr}");
        assert!(!stderr.contains("portcullis is serving"), "{stderr}");
        drop(held);
    }
}

/// SECURITY.md 51: SO_REUSEPORT would let a second gateway join the first's
/// port and take half its connections (7 of 10 valid tokens got 401 from a
/// second gateway with its own store). The second is refused, and the
/// first serves on.
#[tokio::test]
async fn a_second_serve_on_the_same_port_is_refused() {
    let first_dir = tempfile::tempdir().expect("tempdir");
    let workers = "workers = 2";
    let path = write_config(first_dir.path(), "first.toml", &minimal_config(first_dir.path(), workers, ""));
    let mut first = Served::start(&path, &[]).await;

    let second_dir = tempfile::tempdir().expect("tempdir");
    let config = minimal_config(second_dir.path(), workers, "").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", first.public),
        1,
    );
    assert!(config.contains(&first.public.to_string()), "{config}");
    let second = write_config(second_dir.path(), "second.toml", &config);
    let out = run(&["serve", "--config", second.to_str().expect("UTF-8 path")], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "portcullis: cannot listen on {} (public): another process is listening there (another portcullis serve?)",
            first.public
        )),
        "{stderr}"
    );
    assert!(!second_dir.path().join("p.db").exists(), "the second gateway opened a store");
    // Every connection still reaches the first.
    for _ in 0..10 {
        let reply = get(&format!("http://{}/oauth/jwks", first.public), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert!(first.running());
    first.sigterm();
    first.wait_exit().await;
}

/// SECURITY.md 51: two gateways on one SQLite file would each cache what the
/// other revoked. The second is refused, naming the first; once the first
/// has stopped, a gateway starts on the file again.
#[tokio::test]
async fn a_second_serve_on_the_same_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "one.toml", &minimal_config(dir.path(), "", ""));
    let mut first = Served::start(&path, &[]).await;
    let out = run(&["serve", "--config", path.to_str().expect("UTF-8 path")], b"");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let lock = dir.path().join("p.db.lock");
    assert!(
        stderr.contains(&format!(
            "another portcullis serve (process {}) holds {}: two gateways must not share one SQLite file",
            first.child.id(),
            lock.display()
        )),
        "{stderr}"
    );
    // The commands that manage the store run beside the gateway.
    let (code, _) = (run(&["clients", "list", "--config", path.to_str().expect("UTF-8")], b"").status.code(), ());
    assert_eq!(code, Some(0));
    first.sigterm();
    first.wait_exit().await;
    let mut again = Served::start(&path, &[]).await;
    again.sigterm();
    again.wait_exit().await;
}

// ---------------------------------------------------------------------------
// hash-password

#[test]
fn hash_password_prints_an_argon2id_phc_string_of_the_line() {
    let out = run(&["hash-password"], b"s3cret\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let phc = stdout.strip_suffix('\n').unwrap_or_else(|| panic!("one line on stdout: {stdout:?}"));
    assert!(!phc.contains('\n'), "one line on stdout: {stdout:?}");
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let hash = PasswordHash::new(phc).expect("a PHC string");
    let argon2 = Argon2::default();
    assert!(argon2.verify_password(b"s3cret", &hash).is_ok());
    assert!(argon2.verify_password(b"s3cret\n", &hash).is_err());
    assert!(argon2.verify_password(b"s3cre", &hash).is_err());

    // A CRLF line ending (a Windows `echo`) is not part of the secret either.
    let out = run(&["hash-password"], b"s3cret\r\n");
    assert_eq!(out.status.code(), Some(0));
    let stdout = text(&out.stdout);
    let hash = PasswordHash::new(stdout.trim_end()).expect("a PHC string");
    assert!(argon2.verify_password(b"s3cret", &hash).is_ok());

    // Fresh salt each time: the same secret never hashes the same way twice.
    assert_ne!(stdout.trim_end(), phc);

    // The hash is usable in a config: `check` accepts it as a client secret.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = minimal_config(
        dir.path(),
        "",
        &format!(
            "[[clients]]\nclient_id = \"c\"\nclient_secret_hash = \"{phc}\"\nscopes = [\"a\"]\ngrant_types = [\"client_credentials\"]\n"
        ),
    );
    let out = check(&write_config(dir.path(), "hashed.toml", &config));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn hash_password_refuses_an_empty_secret() {
    for input in [&b""[..], b"\n"] {
        let out = run(&["hash-password"], input);
        assert_eq!(out.status.code(), Some(1), "input {input:?}");
        assert_eq!(text(&out.stdout), "", "input {input:?}");
        assert_eq!(text(&out.stderr), "the secret on stdin is empty\n", "input {input:?}");
    }
}

// ---------------------------------------------------------------------------
// serve: the README story, draining, logs

#[tokio::test]
async fn the_readme_demo_config_serves_the_demo_api_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "portcullis.toml", &demo_config_for_test(dir.path(), None));
    let mut gw = Served::start(&path, &[]).await;

    let reply = client_credentials_token(gw.public, "calendar-secret", "calendar.read").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "calendar.read");
    assert_eq!(body["expires_in"], 900);
    let token = body["access_token"].as_str().expect("access_token");

    let events = format!("http://{}/calendar/events", gw.public);
    let ok = get(&events, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.header("content-type"), Some("application/json"));
    let echo = ok.json();
    assert_eq!(echo["service"], "portcullis static demo upstream");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/calendar/events");
    assert_eq!(echo["subject"], "calendar-app");
    assert_eq!(echo["client_id"], "calendar-app");
    assert_eq!(echo["scope"], "calendar.read");

    let denied = get(&events, &[]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    assert!(dir.path().join("p.db").exists(), "the store was created where the config says");

    gw.sigterm();
    let status = gw.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", gw.full_log().await);
    let log = gw.full_log().await;
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.lines().any(|l| l.ends_with("shut down")), "{log}");
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_refuses_new_connections_and_exits_0() {
    let mut upstream = HeldUpstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = format!(
        "[[routes]]\nname = \"slow\"\npath_prefix = \"/slow/\"\nupstream = \"http://{}\"\npublic = true\ntimeout = \"30s\"\n",
        upstream.addr
    );
    let config = minimal_config(dir.path(), "drain_timeout = \"20s\"", &routes);
    let path = write_config(dir.path(), "drain.toml", &config);
    let mut gw = Served::start(&path, &[]).await;

    let url = format!("http://{}/slow/report", gw.public);
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    let head = upstream.next_head().await;
    assert!(head.starts_with("GET /slow/report HTTP/1.1\r\n"), "{head}");

    gw.sigterm();
    gw.wait_for_line("shutting down").await;
    // No new connections on the public listener once draining; the admin
    // listener stays up to tell load balancers so...
    wait_refused(gw.public).await;
    let ready = try_raw(gw.admin, "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .expect("the admin listener answers while draining");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.ends_with("draining\n"), "{ready}");
    // ...while the process is still there, waiting for the held request.
    assert!(gw.running(), "serve exited with a request in flight:\n{}", gw.log());
    assert!(!in_flight.is_finished(), "the held request already ended");

    let released = Instant::now();
    upstream.release_one();
    let reply =
        tokio::time::timeout(BOUND, in_flight).await.expect("the in-flight request completes").expect("request task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "ok");

    let status = gw.wait_exit().await;
    let log = gw.full_log().await;
    assert_eq!(status.code(), Some(0), "{log}");
    // It exited because the request finished, not because the 20 s drain
    // timeout ran out.
    assert!(
        released.elapsed() < Duration::from_secs(5),
        "exit took {:?} after the request was released",
        released.elapsed()
    );
    assert!(!log.contains("drain timeout reached"), "{log}");
}

/// With `shutdown_delay`, SIGTERM fails `/readyz` and the public listener
/// keeps serving; a second SIGTERM (an impatient operator, a supervisor
/// escalating) cuts the delay short, and the process drains and exits 0.
#[tokio::test]
async fn a_second_sigterm_cuts_the_shutdown_delay_short() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = "[[routes]]\nname = \"demo\"\npath_prefix = \"/demo/\"\nupstream = \"static://\"\npublic = true\n";
    let config = minimal_config(dir.path(), "shutdown_delay = \"60s\"", routes);
    let path = write_config(dir.path(), "delay.toml", &config);
    let mut gw = Served::start(&path, &[]).await;

    gw.sigterm();
    gw.wait_for_line("still accepting until the delay is over").await;
    let ready = try_raw(gw.admin, "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .expect("the admin listener answers");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let served = try_raw(gw.public, "GET /demo/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .expect("the public listener still answers during the delay");
    assert!(served.starts_with("HTTP/1.1 "), "{served}");
    assert!(gw.running(), "serve exited inside a 60 s shutdown delay:\n{}", gw.log());

    let second = Instant::now();
    gw.sigterm();
    let status = gw.wait_exit().await;
    let log = gw.full_log().await;
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(second.elapsed() < Duration::from_secs(10), "exit took {:?} after the second SIGTERM", second.elapsed());
    assert!(log.contains("the shutdown delay is cut short"), "{log}");
}

/// Drives every place a token or secret passes through with debug logging
/// on, then checks none of them reached stderr.
async fn no_secret_in_logs(token_format: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "portcullis.toml", &demo_config_for_test(dir.path(), Some(token_format)));
    let mut gw = Served::start(&path, &[("RUST_LOG", "debug")]).await;
    let base = format!("http://{}", gw.public);
    let form = [("content-type", "application/x-www-form-urlencoded")];

    // A token with the secret in the form body, another with Basic auth.
    let reply = client_credentials_token(gw.public, "calendar-secret", "calendar.read").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let token = reply.json()["access_token"].as_str().expect("token").to_string();
    let basic = CLIENT_BASIC;
    let reply = send(
        Method::POST,
        &format!("{base}/oauth/token"),
        &[form[0], ("authorization", basic)],
        "grant_type=client_credentials&scope=calendar.read",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let revoked_token = reply.json()["access_token"].as_str().expect("token").to_string();
    // A wrong secret.
    let wrong_secret = "wrong-secret-7f3a9c";
    let reply = client_credentials_token(gw.public, wrong_secret, "calendar.read").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());

    // The token in a header and in the query.
    let events = format!("{base}/calendar/events");
    let ok = get(&events, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let ok = get(&format!("{events}?access_token={token}&x=1"), &[]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    // Bad tokens, both ways.
    let bad_header = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJtYWxsb3J5In0.Zm9yZ2VkLXNpZ25hdHVyZS0xMjM0";
    let bad_query = "opaque-looking-bad-token-5d1e2b";
    let denied = get(&events, &[("authorization", &format!("Bearer {bad_header}"))]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{}", denied.text());
    let denied = get(&format!("{events}?access_token={bad_query}"), &[]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{}", denied.text());

    // Revoke the second token, then try it.
    let reply = send(
        Method::POST,
        &format!("{base}/oauth/revoke"),
        &[form[0], ("authorization", basic)],
        format!("token={revoked_token}"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let denied = get(&events, &[("authorization", &format!("Bearer {revoked_token}"))]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{}", denied.text());

    gw.sigterm();
    let status = gw.wait_exit().await;
    let log = gw.full_log().await;
    assert_eq!(status.code(), Some(0), "{log}");

    // Debug logging really was on, and saw these requests; so did the
    // audit log, on stderr by default.
    for expected in [
        r#""event":"token_issued""#,
        "client authentication failed",
        "refused an access token",
        r#""event":"token_revoked""#,
    ] {
        assert!(log.contains(expected), "{token_format}: no {expected:?} in the log:\n{log}");
    }
    let mut secrets = vec![
        ("the access token", token.clone()),
        ("the revoked access token", revoked_token.clone()),
        ("the client secret", "calendar-secret".to_string()),
        ("the wrong client secret", wrong_secret.to_string()),
        ("the Basic credentials", basic["Basic ".len()..].to_string()),
        ("the bad header token", bad_header.to_string()),
        ("the bad query token", bad_query.to_string()),
    ];
    // A JWT's signature alone is enough to matter; so is half an opaque token.
    for (what, t) in [("access", &token), ("revoked", &revoked_token)] {
        match t.rsplit_once('.') {
            Some((_, signature)) => secrets.push((what, signature.to_string())),
            None => secrets.push((what, t[t.len() / 2..].to_string())),
        }
    }
    for (what, secret) in secrets {
        assert!(!log.contains(&secret), "{token_format}: {what} ({secret}) is in the log:\n{log}");
    }
}

#[tokio::test]
async fn no_token_or_secret_reaches_the_logs_with_jwt_tokens() {
    no_secret_in_logs("jwt").await;
}

#[tokio::test]
async fn no_token_or_secret_reaches_the_logs_with_opaque_tokens() {
    no_secret_in_logs("opaque").await;
}

// ---------------------------------------------------------------------------
// Durability: what was acknowledged survives `kill -9`.

#[tokio::test]
async fn tokens_and_redeemed_codes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "durable.toml", &demo_config_for_test(dir.path(), None));
    let mut gw = Served::start(&config, &[]).await;

    let code = approve_as_alice(gw.public).await;
    let redeem = redemption(&code);
    let tokens = token_request(gw.public, &redeem).await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.text());
    let tokens = tokens.json();
    let access = tokens["access_token"].as_str().expect("access token").to_string();
    let refresh = tokens["refresh_token"].as_str().expect("refresh token").to_string();

    // SIGKILL: no shutdown path runs, nothing is flushed on the way out.
    gw.child.kill().expect("kill -9");
    gw.wait_exit().await;

    let mut gw = Served::start(&config, &[]).await;
    let api =
        get(&format!("http://{}/calendar/events", gw.public), &[("authorization", &format!("Bearer {access}"))]).await;
    assert_eq!(api.status, StatusCode::OK, "the access token outlives the crash: {}", api.text());
    let again = token_request(gw.public, &redeem).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.json()["error"], "invalid_grant", "the code stays redeemed");
    let refreshed = token_request(gw.public, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    // The replayed code above revoked its grant, refresh token included.
    assert_eq!(refreshed.status, StatusCode::BAD_REQUEST, "{}", refreshed.text());

    // A second approval, then a crash between issue and refresh.
    let code = approve_as_alice(gw.public).await;
    let redeem = redemption(&code);
    let tokens = token_request(gw.public, &redeem).await.json();
    let refresh = tokens["refresh_token"].as_str().expect("refresh token").to_string();
    gw.child.kill().expect("kill -9");
    gw.wait_exit().await;
    let mut gw = Served::start(&config, &[]).await;
    let refreshed = token_request(gw.public, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(
        refreshed.status,
        StatusCode::OK,
        "a refresh token issued before kill -9 works after: {}",
        refreshed.text()
    );
    assert_ne!(refreshed.json()["refresh_token"], refresh.as_str(), "rotated");
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0));
}

/// What the load of [`kill_9_under_load_loses_or_doubles_no_acknowledged_answer`]
/// was told, as the clients would have recorded it.
#[derive(Default)]
struct Ledger {
    /// Codes issued; `true` once their redemption was sent (and is in
    /// flight: a redeemed code leaves for `chains`).
    codes: std::collections::HashMap<String, bool>,
    chains: Vec<Chain>,
    /// Access tokens from `client_credentials`.
    client_tokens: Vec<String>,
    acknowledged: usize,
}

/// A redeemed code and what its refresh tokens were rotated into.
struct Chain {
    code: String,
    access: Vec<String>,
    /// The refresh token last acknowledged, and whether a rotation of it
    /// was sent and not answered.
    refresh: String,
    rotating: bool,
}

fn ledger(l: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().expect("ledger lock")
}

/// A successful token response's access and refresh tokens.
fn tokens_of(reply: &support::Reply) -> (String, String) {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json = reply.json();
    let token = |name: &str| json[name].as_str().unwrap_or_else(|| panic!("no {name} in {json}")).to_string();
    (token("access_token"), token("refresh_token"))
}

/// Codes issued, redeemed and refreshed (three rotations each), and
/// `client_credentials` tokens, by eight clients at once on SQLite with
/// opaque tokens (every issue a write), until `kill -9` once 120 answers
/// have been acknowledged. After a restart every acknowledged answer
/// holds: each access token works, each code issued and not yet sent is
/// redeemed, each chain's last refresh token rotates (or, when a rotation
/// of it was in flight, either rotates or is refused as used), the
/// consent and the session stand. And nothing acknowledged happens twice:
/// a rotated refresh token and a redeemed code are refused, and a code
/// whose redemption was in flight is redeemed at most once.
#[tokio::test]
async fn kill_9_under_load_loses_or_doubles_no_acknowledged_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "load.toml", &demo_config_for_test(dir.path(), Some("opaque")));
    let mut gw = Served::start(&config, &[]).await;
    approve_as_alice(gw.public).await;
    let (session, _) = sign_in_as_alice(gw.public).await;
    let public = gw.public;
    let authorize = format!("http://{public}/oauth/authorize?{}", authorization_query());
    let book = Arc::new(Mutex::new(Ledger::default()));
    let progress = Arc::new(tokio::sync::Notify::new());

    let mut load = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (book, progress, session, authorize) = (book.clone(), progress.clone(), session.clone(), authorize.clone());
        load.spawn(async move {
            let acknowledged = || {
                ledger(&book).acknowledged += 1;
                progress.notify_one();
            };
            loop {
                let Ok(reply) = support::try_send(Method::GET, &authorize, &[("cookie", &session)], "").await else {
                    return;
                };
                assert_eq!(reply.status, StatusCode::SEE_OTHER, "consent is remembered: {}", reply.text());
                let code = code_in(&reply);
                ledger(&book).codes.insert(code.clone(), false);
                acknowledged();
                ledger(&book).codes.insert(code.clone(), true);
                let Ok(reply) = try_token_request(public, &redemption(&code)).await else { return };
                let (access, refresh) = tokens_of(&reply);
                let chain = {
                    let mut book = ledger(&book);
                    book.codes.remove(&code);
                    book.chains.push(Chain { code, access: vec![access], refresh, rotating: false });
                    book.chains.len() - 1
                };
                acknowledged();
                for _ in 0..3 {
                    let refresh = {
                        let mut book = ledger(&book);
                        book.chains[chain].rotating = true;
                        book.chains[chain].refresh.clone()
                    };
                    let pairs = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str())];
                    let Ok(reply) = try_token_request(public, &pairs).await else { return };
                    let (access, refresh) = tokens_of(&reply);
                    {
                        let mut book = ledger(&book);
                        let chain = &mut book.chains[chain];
                        chain.access.push(access);
                        chain.refresh = refresh;
                        chain.rotating = false;
                    }
                    acknowledged();
                }
            }
        });
    }
    for _ in 0..2 {
        let (book, progress) = (book.clone(), progress.clone());
        load.spawn(async move {
            let pairs = [("grant_type", "client_credentials"), ("scope", "calendar.read")];
            while let Ok(reply) = try_token_request(public, &pairs).await {
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                let mut book = ledger(&book);
                book.client_tokens.push(support::access_token(&reply));
                book.acknowledged += 1;
                progress.notify_one();
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger(&book).acknowledged < 120 {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(tokio::time::timeout(left, progress.notified()).await.is_ok(), "120 answers not within 60 s");
    }
    gw.child.kill().expect("kill -9");
    gw.wait_exit().await;
    while let Some(ended) = load.join_next().await {
        ended.expect("a client of the load failed");
    }

    let gw = Served::start(&config, &[]).await;
    let book = std::mem::take(&mut *ledger(&book));
    let api = format!("http://{}/calendar/events", gw.public);
    let works = |token: String| {
        let api = api.clone();
        async move { get(&api, &[("authorization", &format!("Bearer {token}"))]).await.status == StatusCode::OK }
    };
    let refused_as_used =
        |reply: &support::Reply| reply.status == StatusCode::BAD_REQUEST && reply.json()["error"] == "invalid_grant";
    let (chains, rotations) = (book.chains.len(), book.chains.iter().map(|c| c.access.len() - 1).sum::<usize>());
    let in_flight =
        book.chains.iter().filter(|c| c.rotating).count() + book.codes.values().filter(|&&sent| sent).count();
    assert!(chains > 0 && rotations > 0 && !book.client_tokens.is_empty(), "too little load to reconcile");
    for token in book.client_tokens {
        assert!(works(token).await, "an acknowledged client_credentials token is lost");
    }
    for chain in book.chains {
        for token in chain.access {
            assert!(works(token).await, "an acknowledged access token of a code is lost");
        }
        let pairs = [("grant_type", "refresh_token"), ("refresh_token", chain.refresh.as_str())];
        let rotated = token_request(gw.public, &pairs).await;
        if rotated.status == StatusCode::OK {
            let again = token_request(gw.public, &pairs).await;
            assert!(refused_as_used(&again), "a refresh token rotated twice: {}", again.text());
        } else {
            assert!(chain.rotating, "an acknowledged refresh token is lost: {}", rotated.text());
            assert!(refused_as_used(&rotated), "{}", rotated.text());
        }
        let replayed = token_request(gw.public, &redemption(&chain.code)).await;
        assert!(refused_as_used(&replayed), "a code redeemed twice: {}", replayed.text());
    }
    for (code, sent) in book.codes {
        let redeemed = token_request(gw.public, &redemption(&code)).await;
        if redeemed.status == StatusCode::OK {
            let again = token_request(gw.public, &redemption(&code)).await;
            assert!(refused_as_used(&again), "a code redeemed twice: {}", again.text());
        } else {
            assert!(sent, "an acknowledged code is lost: {}", redeemed.text());
            assert!(refused_as_used(&redeemed), "{}", redeemed.text());
        }
    }
    let consent =
        get(&format!("http://{}/oauth/authorize?{}", gw.public, authorization_query()), &[("cookie", &session)]).await;
    assert_eq!(consent.status, StatusCode::SEE_OTHER, "the session and the consent stand: {}", consent.text());
    eprintln!("reconciled {chains} redeemed codes and {rotations} rotations ({in_flight} in flight at the kill)");
}

/// A consent withdrawn with the CLI while the gateway runs takes its
/// unredeemed code with it; a code whose grant stands is redeemed.
#[tokio::test]
async fn a_code_is_refused_once_its_consent_is_withdrawn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "withdraw.toml", &demo_config_for_test(dir.path(), None));
    let mut gw = Served::start(&config, &[]).await;
    let config_arg = config.to_str().expect("path");

    let code = approve_as_alice(gw.public).await;
    let withdrawn =
        run(&["consents", "revoke", "--user", "alice", "--client", "calendar-app", "--config", config_arg], b"");
    assert!(withdrawn.status.success(), "{}", text(&withdrawn.stderr));
    let refused = token_request(gw.public, &redemption(&code)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{}", refused.text());
    assert_eq!(refused.json()["error"], "invalid_grant");
    assert_eq!(refused.json()["error_description"], "The authorization was withdrawn");

    // Approved anew: the new grant's code works.
    let code = approve_as_alice(gw.public).await;
    let redeemed = token_request(gw.public, &redemption(&code)).await;
    assert_eq!(redeemed.status, StatusCode::OK, "{}", redeemed.text());
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0));
}

/// One JSON access log line per request: route, method, normalised path
/// without the query, status, durations, upstream, client and subject,
/// and the request id; never the token.
#[tokio::test]
async fn access_log_lines_say_who_did_what_without_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = demo_config_for_test(dir.path(), None).replace("format = \"text\"", "format = \"json\"");
    assert!(text.contains("format = \"json\""), "the example config sets a log format");
    let path = write_config(dir.path(), "portcullis.toml", &text);
    let mut gw = Served::start(&path, &[]).await;

    let token = client_credentials_token(gw.public, "calendar-secret", "calendar.read").await.json()["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let url = format!("http://{}/calendar//events?access_token={token}&x=1", gw.public);
    let ok = get(&url, &[("x-request-id", "acc-1")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.header("x-request-id"), Some("acc-1"));
    let denied = get(&format!("http://{}/calendar/events", gw.public), &[("x-request-id", "acc-2")]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    let line = gw.wait_for_line("\"acc-2\"").await;
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0));
    let log = gw.full_log().await;
    let entry = |id: &str| -> serde_json::Value {
        let line = log.lines().find(|l| l.contains(&format!("\"request_id\":\"{id}\""))).expect("an access line");
        serde_json::from_str(line).expect("JSON")
    };
    let allowed = entry("acc-1");
    assert_eq!(allowed["target"], "access");
    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["path"], "/calendar/events", "normalised, without the query");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["route"], "calendar");
    assert_eq!(allowed["upstream"], "static://");
    assert_eq!(allowed["client_id"], "calendar-app");
    assert_eq!(allowed["subject"], "calendar-app");
    assert!(allowed["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    let refused: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["client_id"], "");
    assert!(!log.contains(&token), "the token never reaches the log");
    assert!(!log.contains("access_token="), "nor the query that held it");
}

/// Access lines wait in their worker's batch for at most 100 ms; one
/// written just before SIGTERM still reaches the log before the exit.
#[tokio::test]
async fn the_last_access_lines_are_written_before_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = demo_config_for_test(dir.path(), None).replace("format = \"text\"", "format = \"json\"");
    let path = write_config(dir.path(), "portcullis.toml", &text);
    let mut gw = Served::start(&path, &[]).await;
    for i in 0..3 {
        let reply =
            get(&format!("http://{}/calendar/events", gw.public), &[("x-request-id", &format!("last-{i}"))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0));
    let log = gw.full_log().await;
    for i in 0..3 {
        assert!(log.contains(&format!("\"request_id\":\"last-{i}\"")), "line {i} is missing from:\n{log}");
    }
}

/// Signs in as `user` with a wrong password once.
async fn fail_to_sign_in(gw: SocketAddr, user: &str) {
    let query = form(&[
        ("response_type", "code"),
        ("client_id", "calendar-app"),
        ("redirect_uri", "http://127.0.0.1:3000/callback"),
        ("scope", "calendar.read"),
        ("code_challenge", CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let login = get(&format!("http://{gw}/oauth/authorize?{query}"), &[]).await;
    let html = login.text();
    let body = form(&[
        ("csrf", &hidden(&html, "csrf")),
        ("return_to", &hidden(&html, "return_to")),
        ("username", user),
        ("password", "not-the-password"),
    ]);
    let cookie = set_cookie(&login, "portcullis_login");
    let reply =
        send(Method::POST, &format!("http://{gw}/oauth/login"), &[("content-type", FORM), ("cookie", &cookie)], body)
            .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.text().contains("Wrong username or password."));
}

/// The audit log, to a file: every security event of the three-party story
/// as a JSON line with who, what and from where; a replayed code and a
/// reused refresh token stand out; the CLI's changes are audited too; no
/// token, code, secret or password is ever written.
#[tokio::test]
async fn the_audit_log_records_security_events_as_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let config_text = demo_config_for_test(dir.path(), None)
        .replace("audit = \"stderr\"", &format!("audit = \"{}\"", audit_path.display()));
    assert!(config_text.contains("audit.jsonl"), "the example config sets log.audit");
    let path = write_config(dir.path(), "portcullis.toml", &config_text);
    let mut gw = Served::start(&path, &[]).await;
    let mut secrets = vec!["calendar-secret".to_string(), "wonderland".to_string(), "not-the-password".to_string()];

    let issued = client_credentials_token(gw.public, "calendar-secret", "calendar.read").await;
    let service_token = issued.json()["access_token"].as_str().expect("token").to_string();
    assert_eq!(client_credentials_token(gw.public, "wrong-secret", "calendar.read").await.status, 401);
    fail_to_sign_in(gw.public, "alice").await;

    let code = approve_as_alice(gw.public).await;
    let redeem = redemption(&code);
    let first = token_request(gw.public, &redeem).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(token_request(gw.public, &redeem).await.status, StatusCode::BAD_REQUEST, "a replay");
    secrets.push(code.clone());
    secrets.push(first.json()["access_token"].as_str().expect("access").to_string());
    secrets.push(first.json()["refresh_token"].as_str().expect("refresh").to_string());

    // Consent is remembered now: a second code, whose refresh token is
    // then used twice.
    let code = approve_as_alice(gw.public).await;
    let redeem = redemption(&code);
    let tokens = token_request(gw.public, &redeem).await.json();
    let refresh = tokens["refresh_token"].as_str().expect("refresh").to_string();
    let refreshed = token_request(gw.public, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    let reused = token_request(gw.public, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
    assert_eq!(reused.status, StatusCode::BAD_REQUEST);
    secrets.extend([code, refresh, refreshed.json()["refresh_token"].as_str().expect("rotated").to_string()]);

    let revoked = send(
        Method::POST,
        &format!("http://{}/oauth/revoke", gw.public),
        &[("content-type", FORM), ("authorization", CLIENT_BASIC)],
        form(&[("token", &service_token)]),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK);
    secrets.push(service_token);

    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0), "stopping flushes the audit log");
    let withdrawn = run(
        &[
            "consents",
            "revoke",
            "--user",
            "alice",
            "--client",
            "calendar-app",
            "--config",
            path.to_str().expect("path"),
        ],
        b"",
    );
    assert!(withdrawn.status.success(), "{}", text(&withdrawn.stderr));

    let audit = std::fs::read_to_string(&audit_path).expect("the audit file exists");
    let events: Vec<serde_json::Value> =
        audit.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().expect("an event name")).collect();
    assert_eq!(
        names,
        [
            "token_issued",
            "token_refused",
            "login_failed",
            "login_succeeded",
            "consent_granted",
            "token_issued",
            "code_replayed",
            "token_refused",
            "login_succeeded",
            "token_issued",
            "token_issued",
            "refresh_token_reused",
            "token_refused",
            "token_revoked",
            "consent_withdrawn",
        ],
        "{audit}"
    );
    for e in &events {
        assert_eq!(e["target"], "audit");
        if e["event"] != "consent_withdrawn" {
            assert_eq!(e["span"]["peer"], "127.0.0.1", "{e}");
            assert!(e["span"]["request_id"].as_str().is_some_and(|id| id.len() == 32), "{e}");
        }
    }
    let (service, refused) = (&events[0], &events[1]);
    assert_eq!(service["level"], "INFO");
    assert_eq!(service["client_id"], "calendar-app");
    assert_eq!(service["subject"], "calendar-app");
    assert_eq!(service["grant_type"], "client_credentials");
    assert_eq!(service["scope"], "calendar.read");
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["reason"], "invalid_client");
    assert_eq!(events[2]["subject"], "alice");
    assert_eq!(events[4]["scope"], "calendar.read");
    assert_eq!(events[5]["subject"], "alice");
    assert_eq!(events[5]["grant_type"], "authorization_code");
    assert_eq!(events[6]["level"], "WARN");
    assert_eq!(events[7]["reason"], "invalid_grant");
    assert_eq!(events[10]["grant_type"], "refresh_token");
    assert_eq!(events[13]["token_type"], "access_token");
    assert_eq!(events[14]["subject"], "alice");
    assert_eq!(events[14]["client_id"], "calendar-app");
    for secret in &secrets {
        assert!(!audit.contains(secret.as_str()), "{secret:?} is in the audit log");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&audit_path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only its owner reads the audit log");
    }
    // And the main log holds none of it.
    assert!(!gw.full_log().await.contains("\"event\":"));
}

/// An audit file that cannot be opened stops `serve` before it binds.
#[test]
fn serve_refuses_an_audit_file_it_cannot_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-dir/audit.jsonl");
    let config_text = demo_config_for_test(dir.path(), None)
        .replace("audit = \"stderr\"", &format!("audit = \"{}\"", missing.display()));
    let path = write_config(dir.path(), "portcullis.toml", &config_text);
    let out = run(&["serve", "--config", path.to_str().expect("path")], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("cannot open the audit log {} (log.audit)", missing.display())), "{err}");
    assert!(!dir.path().join("p.db").exists(), "nothing was opened or bound");
}

/// SIGHUP re-reads the config (and never ends the process, TLS or not);
/// `portcullis reload` asks through the admin listener and reports a bad
/// file.
#[tokio::test]
async fn sighup_and_the_reload_command_apply_a_new_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = demo_config_for_test(dir.path(), None);
    let path = write_config(dir.path(), "portcullis.toml", &original);
    let mut gw = Served::start(&path, &[]).await;
    let url = format!("http://{}/extra/x", gw.public);
    assert_eq!(get(&url, &[]).await.status, StatusCode::NOT_FOUND);

    let with_extra = format!(
        "{original}\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra/\"\nupstream = \"static://\"\npublic = true\n"
    );
    std::fs::write(&path, &with_extra).expect("rewrite config");
    let status = std::process::Command::new("kill").args(["-HUP", &gw.child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    gw.wait_for_line("configuration reloaded").await;
    assert!(gw.running(), "SIGHUP does not end the gateway");
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK);

    // The command: a bad file is refused with the reason, and nothing
    // changes. It reads the admin address from a config file, and the
    // served one says port 0, so it gets a copy naming the live address.
    std::fs::write(&path, with_extra.replace("path_prefix = \"/extra/\"", "path_prefix = \"extra\"")).expect("write");
    let admin_cfg =
        with_extra.replace("[admin]\nlisten = \"127.0.0.1:0\"", &format!("[admin]\nlisten = \"{}\"", gw.admin));
    assert_ne!(admin_cfg, with_extra, "the admin address was substituted");
    let cmd_cfg = write_config(dir.path(), "cmd.toml", &admin_cfg);
    let out = run(&["reload", "--config", cmd_cfg.to_str().expect("utf-8")], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("routes[2].path_prefix"), "{}", text(&out.stderr));
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK, "the running table stays");

    std::fs::write(&path, &with_extra).expect("write");
    let out = run(&["reload", "--config", cmd_cfg.to_str().expect("utf-8")], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "reloaded\n");

    // A new listener address or connection setting is not applied live:
    // the log says it takes a restart, and the gateway keeps serving where
    // it was.
    let mut moved: toml::Table = with_extra.parse().expect("TOML");
    let server = moved["server"].as_table_mut().expect("[server]");
    server.insert("listen".into(), "127.0.0.1:9".into());
    server.insert("keep_alive_timeout".into(), "5s".into());
    let moved = toml::to_string(&moved).expect("serialise");
    std::fs::write(&path, &moved).expect("write");
    let out = run(&["reload", "--config", cmd_cfg.to_str().expect("utf-8")], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = gw.wait_for_line("takes a restart to apply").await;
    assert!(line.contains("server.listen"), "{line}");
    let line = gw.wait_for_line("server.keep_alive_timeout").await;
    assert!(line.contains("takes a restart to apply"), "{line}");
    assert_eq!(get(&url, &[]).await.status, StatusCode::OK, "still served on the old address");
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0));
}

/// `check` reports routes that overlap, so a nested prefix is a decision
/// the operator sees, not a surprise at request time.
#[test]
fn check_notes_overlapping_routes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = "[[routes]]\nname = \"api\"\npath_prefix = \"/api/\"\nupstream = \"static://\"\npublic = true\n\
                  [[routes]]\nname = \"api-admin\"\npath_prefix = \"/api/admin/\"\nupstream = \"static://\"\npublic = true\n";
    let path = write_config(dir.path(), "overlap.toml", &minimal_config(dir.path(), "", routes));
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(
            "note: route \"api-admin\" (/api/admin) takes the paths under /api/admin from route \"api\" (/api)"
        ),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_warns_about_a_route_scope_no_client_may_be_granted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = "[[routes]]\nname = \"cal\"\npath_prefix = \"/cal/\"\nupstream = \"static://\"\n\
                  [routes.scopes]\nGET = [\"calender.read\"]\n";
    let path = write_config(dir.path(), "typo.toml", &minimal_config(dir.path(), "", routes));
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("warning: route \"cal\" requires the scope \"calender.read\", which no client may be granted"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_warns_about_an_upstream_it_does_not_verify_and_names_a_bad_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let route = |tls: &str| {
        format!(
            "[[routes]]\nname = \"staging\"\npath_prefix = \"/staging/\"\nupstream = \"https://staging.internal:8443\"\npublic = true\n{tls}\n"
        )
    };
    let path = write_config(dir.path(), "skip.toml", &minimal_config(dir.path(), "", &route("tls_skip_verify = true")));
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("warning: route \"staging\" does not verify its upstream's certificate"),
        "{}",
        text(&out.stdout)
    );

    // Verified against the system roots: nothing to warn about.
    let path = write_config(dir.path(), "verified.toml", &minimal_config(dir.path(), "", &route("")));
    let out = check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("warning:"), "{}", text(&out.stdout));

    let missing = dir.path().join("missing-ca.pem");
    let bad = minimal_config(dir.path(), "", &route(&format!("ca = \"{}\"", missing.display())));
    let out = check(&write_config(dir.path(), "bad-ca.toml", &bad));
    assert_eq!(out.status.code(), Some(EX_CONFIG));
    assert_eq!(reported_fields(&text(&out.stderr)), ["routes[0].ca"]);
    assert!(text(&out.stderr).contains(&format!("cannot read {}", missing.display())), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------
// Limits under a low file-descriptor limit (SECURITY.md 45)

/// An upstream on a raw socket: `/endless` gets a chunked body that never
/// ends (sent as fast as it is taken), anything else a short one. Counts
/// the connections open to it.
async fn counting_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let open = count.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                            _ => {
                                open.fetch_sub(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    if head.starts_with(b"GET /endless") {
                        let mut chunk = b"4000\r\n".to_vec();
                        chunk.extend_from_slice(&[b'x'; 0x4000]);
                        chunk.extend_from_slice(b"\r\n");
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
                        while stream.write_all(&chunk).await.is_ok() {}
                        open.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                        open.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, open)
}

/// Two HTTP/2 clients open every stream they may and never read a byte
/// (their windows at zero), each stream an endless upstream body. Each
/// connection holds `max_upstream_exchanges_per_connection` upstream
/// connections at most, so a gateway that may open 256 files keeps
/// serving everyone else; before the bound, the two held 512 and new
/// clients met "Too many open files".
#[tokio::test]
async fn clients_holding_http2_streams_open_cannot_starve_others_under_a_low_fd_limit() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream, open) = counting_upstream().await;
    let routes =
        format!("[[routes]]\nname = \"up\"\npath_prefix = \"/\"\nupstream = \"http://{upstream}\"\npublic = true\n");
    let path = write_config(dir.path(), "limits.toml", &minimal_config(dir.path(), "", &routes));
    let mut served = Served::start_with_fd_limit(&path, 256).await;

    let mut attackers = Vec::new();
    for _ in 0..2 {
        let stream = TcpStream::connect(served.public).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(0)
            .max_concurrent_reset_streams(0)
            .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("h2c handshake");
        tokio::spawn(conn);
        for _ in 0..256 {
            let mut sender = sender.clone();
            let uri = format!("http://{}/endless", served.public);
            attackers.push(tokio::spawn(async move {
                let req = http::Request::get(uri).body(http_body_util::Empty::new()).expect("request");
                // The head comes; the body never can.
                sender.send_request(req).await.map(|res| res.into_body())
            }));
        }
    }
    // Until each connection has as many upstream connections as it may.
    let deadline = Instant::now() + BOUND;
    while open.load(Ordering::SeqCst) < 64 {
        assert!(Instant::now() < deadline, "the attack reached {} upstream connections", open.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Everyone else is served, with upstream connections to spare.
    for i in 0..20 {
        let reply = get(&format!("http://{}/small/{i}", served.public), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}\n{}", reply.text(), served.log());
        assert_eq!(reply.text(), "ok");
    }
    // And over HTTP/2: a connection's first exchange never waits on those
    // the attackers hold.
    let stream = TcpStream::connect(served.public).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/small/h2", served.public)).body(http_body_util::Empty::new());
    let res = tokio::time::timeout(BOUND, sender.send_request(req.expect("request"))).await.expect("in time");
    assert_eq!(res.expect("answered").status(), StatusCode::OK);
    // 32 for each attacker, and at most one idle per worker from the others'.
    let held = open.load(Ordering::SeqCst);
    assert!(held <= 2 * 32 + 2, "two connections hold {held} upstream connections");
    assert!(!served.log().contains("Too many open files"), "{}", served.log());
    assert!(served.running());
    drop(attackers);
    served.sigterm();
    served.wait_exit().await;
}

// ---------------------------------------------------------------------------
// resolve_interval: a host name's addresses as instances.

/// An upstream on `addr` that answers every request with `name` and the
/// `Host` it was sent.
async fn named_upstream(listener: TcpListener, name: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let host = req.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
                let body = format!("{name} {host}");
                async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    })
}

/// Two listeners on one port, at 127.0.0.2 and 127.0.0.3: what a name
/// with two addresses leads to.
async fn one_port_on_two_addresses() -> (TcpListener, TcpListener, u16) {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.2:0").await.expect("bind 127.0.0.2");
        let port = a.local_addr().expect("addr").port();
        if let Ok(b) = TcpListener::bind(("127.0.0.3", port)).await {
            return (a, b, port);
        }
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Asks `url` until `done` holds for what the answers say (each "NAME
/// HOST"), or panics after [`BOUND`].
async fn ask_until(url: &str, what: &str, mut done: impl FnMut(&str) -> bool) {
    let deadline = Instant::now() + BOUND;
    loop {
        let reply = get(url, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        if done(&reply.text()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {BOUND:?}");
    }
}

#[tokio::test]
async fn a_route_resolving_its_upstreams_name_follows_the_addresses_it_has() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, port) = one_port_on_two_addresses().await;
    let (_a, _b) = (named_upstream(a, "a").await, named_upstream(b, "b").await);
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.2 api.portcullis.test\n").expect("write hosts");
    let routes = format!(
        "[[routes]]\nname = \"api\"\npath_prefix = \"/\"\npublic = true\nupstream = \"http://api.portcullis.test:{port}\"\nresolve_interval = \"100ms\"\n"
    );
    let path = write_config(dir.path(), "resolve.toml", &minimal_config(dir.path(), "", &routes));
    let Some(mut gw) = Served::start_with_hosts(&path, &hosts).await else { return };
    let url = format!("http://{}/who", gw.public);

    let host = format!("api.portcullis.test:{port}");
    let reply = get(&url, &[]).await;
    assert_eq!(reply.text(), format!("a {host}"), "the one address it has; the name in Host");

    // A second address: both get requests.
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.2 api.portcullis.test\n127.0.0.3 api.portcullis.test\n")
        .expect("rewrite hosts");
    let mut seen = std::collections::BTreeSet::new();
    ask_until(&url, "both addresses answering", |answer| {
        assert!(answer.ends_with(&host), "{answer}");
        seen.insert(answer.to_owned());
        seen.len() == 2
    })
    .await;

    // The first goes: after the next resolution, nothing more reaches it.
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.3 api.portcullis.test\n").expect("rewrite hosts");
    let mut in_a_row = 0;
    ask_until(&url, "only 127.0.0.3 answering", |answer| {
        in_a_row = if answer.starts_with("b ") { in_a_row + 1 } else { 0 };
        in_a_row == 20
    })
    .await;
    let metrics = get(&format!("http://{}/metrics", gw.admin), &[]).await.text();
    let series = |addr: &str| format!("portcullis_upstream_requests_total{{instance=\"{addr}:{port}\",route=\"api\"}}");
    assert!(metrics.contains(&series("127.0.0.3")), "{metrics}");
    assert!(!metrics.contains(&series("127.0.0.2")), "a gone instance's series are dropped");

    // A name that stops resolving keeps the addresses it had.
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("rewrite hosts");
    gw.wait_for_line("did not resolve").await;
    assert_eq!(get(&url, &[]).await.text(), format!("b {host}"));
}

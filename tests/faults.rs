//! Faults of the machine under the gateway, on the real binary:
//! - the wall clock stepping forward and back by minutes (libfaketime,
//!   preloaded, moves `CLOCK_REALTIME` only, as an NTP step or an operator
//!   would), and
//! - the disk under its SQLite store filling up (a small tmpfs in a mount
//!   namespace of the gateway's own, filled and emptied from inside it).
//!
//! What `kill -9` must not lose is in `tests/cli.rs`, with the other
//! durability tests; an upstream's faults are in `tests/upstream_faults.rs`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::demo::{authorization_query, demo_config_for_test, post_login, token_request, write_config};
use support::served::{BIN, Served};
use support::{Reply, Upstream, access_token, client_credentials_at, config_toml, get, issuing_jwts};

/// Debian's libfaketime (package `faketime`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Whether what a test needs is here; outside CI a test without it is
/// skipped, saying so, and under `CI=true` it fails.
fn available(what: &str, here: bool) -> bool {
    if !here {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and this test needs {what}");
        eprintln!("SKIPPED: this test needs {what}");
    }
    here
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------
// Clock steps

/// A token the caches trusted is refused once the wall clock steps past
/// its `exp` (though the caches' own deadline, on the monotonic clock, is
/// minutes off); a token issued on a clock that then steps back twenty
/// minutes, and so issued "in the future", stays valid; the token
/// endpoint issues on the stepped-back clock; nothing panics.
#[tokio::test]
async fn clock_steps_end_cached_trust_at_exp_and_break_nothing() {
    if !available("libfaketime (Debian's faketime)", Path::new(LIBFAKETIME).exists()) {
        return;
    }
    let mut upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let offset = dir.path().join("offset");
    let step = |to: &str| std::fs::write(&offset, to).expect("step the clock");
    step("+0");
    let mut toml = issuing_jwts(&config_toml(upstream.addr, ""));
    for (from, to) in [
        ("url = \"sqlite::memory:\"".to_string(), format!("url = \"sqlite://{}/p.db\"", dir.path().display())),
        ("access_token_ttl = \"15m\"".into(), "access_token_ttl = \"5m\"".into()),
        ("[cache]\nttl = \"30s\"".into(), "[cache]\nttl = \"1h\"".into()),
    ] {
        assert!(toml.contains(&from), "{from:?} is not in the test configuration");
        toml = toml.replacen(&from, &to, 1);
    }
    let config = write_config(dir.path(), "clock.toml", &toml);
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&config);
    let offset_file = offset.to_str().expect("a UTF-8 path");
    let mut gw = Served::start_command(
        cmd,
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", offset_file),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;
    let token_url = format!("http://{}/oauth/token", gw.public);
    let issue =
        || async { access_token(&client_credentials_at(&token_url, "app", "app-secret", Some("calendar.read")).await) };
    let api = format!("http://{}/calendar/events", gw.public);

    let first = issue().await;
    let reply = get(&api, &[("authorization", &bearer(&first))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.next().await.uri, "/calendar/events");

    // Ten minutes on: five past the token's `exp`.
    step("+10m");
    let reply = get(&api, &[("authorization", &bearer(&first))]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token expired\"")
    );
    assert!(upstream.saw_nothing(), "an expired token's request went upstream");

    // A token issued ten minutes ahead, then the clock stepped back twenty.
    let ahead = issue().await;
    step("-10m");
    let reply = get(&api, &[("authorization", &bearer(&ahead))]).await;
    assert_eq!(reply.status, StatusCode::OK, "a token from the future: {}", reply.text());
    let behind = issue().await;
    let reply = get(&api, &[("authorization", &bearer(&behind))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(upstream.next().await.uri, "/calendar/events");
    assert_eq!(upstream.next().await.uri, "/calendar/events");

    step("+0");
    assert!(gw.running(), "the gateway died:\n{}", gw.log());
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0));
    let log = gw.full_log().await;
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------
// A full disk under the store

/// Runs `script` (with `$1` = `arg`) in the mount namespace of `pid`.
fn in_namespace_of(pid: u32, script: &str, arg: &Path) -> std::process::Output {
    Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--mount", "--", "sh", "-c", script, "sh"])
        .arg(arg)
        .output()
        .expect("nsenter runs")
}

/// The demo's client asks for a token (opaque: a write to the store each).
async fn client_credentials(gw: &Served) -> Reply {
    token_request(gw.public, &[("grant_type", "client_credentials"), ("scope", "calendar.read")]).await
}

/// While the filesystem under the SQLite store is full: what needs a write
/// (a token, a sign-in) answers 503 with the error a client or a person
/// can act on; tokens issued before keep working, cached or not; once
/// space is freed everything works again with no restart, and the
/// database passes SQLite's integrity check.
#[tokio::test]
async fn a_full_disk_under_the_store_refuses_writes_with_503_and_recovers() {
    let runs = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    let here =
        runs(Command::new("unshare").args(["--mount", "true"])) && runs(Command::new("nsenter").arg("--version"));
    if !available("`unshare --mount` and `nsenter` (root, util-linux)", here) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    std::fs::create_dir(&store).expect("the store's directory");
    let config = write_config(dir.path(), "full.toml", &demo_config_for_test(&store, Some("opaque")));
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=2m portcullis-store \"$1\" && exec \"$0\" serve --config \"$2\"")
        .arg(BIN)
        .arg(&store)
        .arg(&config);
    let mut gw = Served::start_command(cmd, &[]).await;
    let pid = gw.child.id();
    let api = format!("http://{}/calendar/events", gw.public);
    let works = |token: &str| {
        let (api, auth) = (api.clone(), bearer(token));
        async move { get(&api, &[("authorization", &auth)]).await.status }
    };

    let used = access_token(&client_credentials(&gw).await);
    assert_eq!(works(&used).await, StatusCode::OK);
    let unused = access_token(&client_credentials(&gw).await);
    let login_page = get(&format!("http://{}/oauth/authorize?{}", gw.public, authorization_query()), &[]).await;
    assert_eq!(login_page.status, StatusCode::OK, "{}", login_page.text());

    let filled = in_namespace_of(pid, "cat /dev/zero > \"$1/fill\"", &store);
    let said = String::from_utf8_lossy(&filled.stderr);
    assert!(said.contains("No space left on device"), "the disk did not fill: {said}");

    let refused = client_credentials(&gw).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert_eq!(refused.json()["error"], "temporarily_unavailable");
    let refused = post_login(gw.public, &login_page).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert!(refused.text().contains("The service is temporarily unavailable."), "{}", refused.text());
    assert_eq!(works(&used).await, StatusCode::OK, "a cached token");
    assert_eq!(works(&unused).await, StatusCode::OK, "a token read from the store");

    let emptied = in_namespace_of(pid, "rm \"$1/fill\"", &store);
    assert!(emptied.status.success(), "{}", String::from_utf8_lossy(&emptied.stderr));
    let started = Instant::now();
    let issued = loop {
        let reply = client_credentials(&gw).await;
        if reply.status == StatusCode::OK {
            break access_token(&reply);
        }
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
        assert!(started.elapsed() < Duration::from_secs(10), "no token within 10 s of the space coming back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(works(&issued).await, StatusCode::OK);
    assert_eq!(works(&used).await, StatusCode::OK);
    let signed_in = post_login(gw.public, &login_page).await;
    assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.text());

    let check = "python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(\"pragma integrity_check\").fetchone()[0])' \"$1/p.db\"";
    let checked = in_namespace_of(pid, check, &store);
    assert_eq!(String::from_utf8_lossy(&checked.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&checked.stderr));
    gw.sigterm();
    assert_eq!(gw.wait_exit().await.code(), Some(0), "{}", gw.log());
}

//! Live reload: `POST /reload` on the admin listener (and SIGHUP, tested
//! with the real binary in tests/cli.rs) re-reads the config file and
//! swaps routes and clients atomically; an invalid file changes nothing and
//! says why.

mod support;

use http::{Method, StatusCode};
use support::{Gateway, Upstream, config_toml, counter, get, send};

async fn reload(gw: &Gateway) -> support::Reply {
    send(Method::POST, &gw.admin_url("/reload"), &[], "").await
}

async fn token_status(gw: &Gateway, client: &str) -> StatusCode {
    send(
        Method::POST,
        &gw.url("/oauth/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("grant_type=client_credentials&client_id={client}&client_secret={client}-secret"),
    )
    .await
    .status
}

/// A directory holding the test configuration as `portcullis.toml`: the
/// directory (removed when dropped), the file, and its text.
fn config_file(upstream: &Upstream) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.toml");
    let original = config_toml(upstream.addr, "");
    std::fs::write(&path, &original).expect("write config");
    (dir, path, original)
}

#[tokio::test]
async fn a_reload_swaps_routes_and_clients_and_a_bad_file_changes_nothing() {
    let mut upstream = Upstream::start().await;
    let (_dir, path, original) = config_file(&upstream);
    let gw = Gateway::start_file(&path).await;

    assert_eq!(get(&gw.url("/fresh/x"), &[]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(token_status(&gw, "other").await, StatusCode::OK);

    // A new public route; the client "other" removed.
    let changed = original.replace("[[clients]]\nclient_id = \"other\"", "[[clients]]\nclient_id = \"other2\"")
        + &format!(
            "\n[[routes]]\nname = \"fresh\"\npath_prefix = \"/fresh/\"\nupstream = \"http://{}\"\npublic = true\n",
            upstream.addr
        );
    std::fs::write(&path, &changed).expect("rewrite config");
    let reply = reload(&gw).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "reloaded\n");
    assert_eq!(get(&gw.url("/fresh/x"), &[]).await.status, StatusCode::OK);
    assert_eq!(upstream.next().await.uri, "/fresh/x");
    assert_eq!(token_status(&gw, "other").await, StatusCode::UNAUTHORIZED);

    // A file with a syntax error: refused, named, and the running table stays.
    std::fs::write(&path, changed.replace("[[routes]]\nname = \"fresh\"", "[[routes]\nname = \"fresh\""))
        .expect("write");
    let reply = reload(&gw).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.text().contains("invalid configuration") && reply.text().contains("line"), "{}", reply.text());
    assert_eq!(get(&gw.url("/fresh/y"), &[]).await.status, StatusCode::OK);

    // A file that parses but does not validate: the same.
    std::fs::write(&path, changed.replace("path_prefix = \"/fresh/\"", "path_prefix = \"fresh\"")).expect("write");
    let reply = reload(&gw).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.text().contains("routes[6].path_prefix"), "{}", reply.text());
    assert_eq!(get(&gw.url("/fresh/z"), &[]).await.status, StatusCode::OK);

    let metrics = get(&gw.admin_url("/metrics"), &[]).await.text();
    assert_eq!(counter(&metrics, "portcullis_config_reload_total{result=\"success\"}"), 1, "{metrics}");
    assert_eq!(counter(&metrics, "portcullis_config_reload_total{result=\"error\"}"), 2, "{metrics}");

    // Only POST reloads.
    let get_reload = get(&gw.admin_url("/reload"), &[]).await;
    assert_eq!(get_reload.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get_reload.header("allow"), Some("POST"));
    gw.stop().await;
}

#[tokio::test]
async fn tokens_issued_before_a_reload_stay_valid() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("portcullis.toml");
    let toml = config_toml(upstream.addr, "")
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()));
    std::fs::write(&path, &toml).expect("write config");
    let gw = Gateway::start_file(&path).await;
    let token = gw.token("other", "calendar.read").await;
    std::fs::write(&path, toml.replace("ttl = \"30s\"", "ttl = \"10s\"")).expect("rewrite");
    assert_eq!(reload(&gw).await.status, StatusCode::OK);
    let ok = get(&gw.url("/calendar/x"), &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(ok.status, StatusCode::OK, "the signing key is the store's, not the config's: {}", ok.text());
    gw.stop().await;
}

#[tokio::test]
async fn without_a_config_file_reloads_are_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config_toml(upstream.addr, "")).await;
    let reply = reload(&gw).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.text().contains("no config file"), "{}", reply.text());
    gw.stop().await;
}

/// Whether the public listener speaks TLS is fixed at start: a reloaded
/// file that adds `[server.tls]` does not make upstreams believe cleartext
/// requests came over HTTPS (and the change is reported as needing a
/// restart).
#[tokio::test]
async fn a_reloaded_tls_section_does_not_change_what_upstreams_are_told_of_the_scheme() {
    let mut upstream = Upstream::start().await;
    let (dir, path, original) = config_file(&upstream);
    let gw = Gateway::start_file(&path).await;

    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    let with_tls = original.replacen(
        "[admin]",
        &format!("[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n[admin]", cert.display(), key.display()),
        1,
    );
    std::fs::write(&path, with_tls).expect("rewrite config");
    let reply = reload(&gw).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, StatusCode::OK);
    let seen = upstream.next().await;
    assert_eq!(seen.headers["x-forwarded-proto"], "http", "the listener is still cleartext");
    gw.stop().await;
}

//! `portcullis clients`, `consents` and `keys`: registering a client in
//! the store makes it usable by a running gateway without a restart, its
//! secret is shown once and rotates, and consents can be listed and
//! withdrawn, and the signing keys are listed and rotated.

mod support;

use http::StatusCode;
use portcullis::store::{SqliteStore, Store};
use support::{Gateway, Upstream, access_token, cli, config_toml, kid_of};

/// The test configuration on a SQLite file of its own, written where the
/// CLI reads it: the directory (removed on drop), the store's URL, the
/// configuration and its file.
fn on_a_store_file(upstream: &Upstream) -> (tempfile::TempDir, String, String, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/p.db", dir.path().display());
    let toml = config_toml(upstream.addr, "").replace("url = \"sqlite::memory:\"", &format!("url = \"{url}\""));
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &toml).expect("write config");
    (dir, url, toml, path)
}

fn secret_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .unwrap_or_else(|| panic!("no secret in {stdout:?}"))
        .to_string()
}

async fn token_status(gw: &Gateway, client: &str, secret: &str) -> StatusCode {
    gw.client_credentials(client, secret).await.status
}

#[tokio::test]
async fn a_client_registered_in_the_store_works_without_a_restart_and_its_secret_rotates() {
    let upstream = Upstream::start().await;
    let (_dir, url, toml, path) = on_a_store_file(&upstream);
    let gw = Gateway::start(&toml).await;

    let (code, out, err) =
        cli(&path, &["clients", "add", "svc", "--grant-type", "client_credentials", "--scope", "calendar.read"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("shown only now"), "{out}");
    let first = secret_of(&out);
    assert!(first.len() >= 43, "a secret of at least 256 bits: {first}");
    // Only the hash is stored.
    let store = SqliteStore::open(&url).await.expect("open store");
    let stored = store.find_client("svc").await.expect("query").expect("client");
    assert!(stored.secret_hash.as_deref().is_some_and(|h| h.starts_with("$argon2id$") && !h.contains(&first)));

    assert_eq!(token_status(&gw, "svc", &first).await, StatusCode::OK);
    assert_eq!(token_status(&gw, "svc", "wrong").await, StatusCode::UNAUTHORIZED);
    let reply = gw.client_credentials("svc", &first).await;
    let minted_with_first = access_token(&reply);

    let (code, out, err) = cli(&path, &["clients", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("svc ") && l.contains("store")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("app ") && l.contains("config")), "{out}");

    let (code, out, err) = cli(&path, &["clients", "rotate-secret", "svc"]);
    assert_eq!(code, 0, "{err}");
    let second = secret_of(&out);
    assert_ne!(first, second);
    // Whoever held the old secret may have minted tokens with it: they are
    // revoked (this one was never cached, so no notice is needed).
    let reply =
        support::get(&gw.url("/calendar/events"), &[("authorization", &format!("Bearer {minted_with_first}"))]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(
        reply.header("www-authenticate").is_some_and(|h| h.contains("The access token was revoked")),
        "{:?}",
        reply.header("www-authenticate")
    );
    gw.stop().await;
    // A gateway reading the store afresh takes the new secret only.
    let gw = Gateway::start(&toml).await;
    assert_eq!(token_status(&gw, "svc", &second).await, StatusCode::OK);
    assert_eq!(token_status(&gw, "svc", &first).await, StatusCode::UNAUTHORIZED);

    let (code, _, err) = cli(&path, &["clients", "remove", "svc"]);
    assert_eq!(code, 0, "{err}");
    gw.stop().await;
    let gw = Gateway::start(&toml).await;
    assert_eq!(token_status(&gw, "svc", &second).await, StatusCode::UNAUTHORIZED);
    gw.stop().await;
}

#[tokio::test]
async fn bad_registrations_are_refused_with_a_reason() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = config_toml(upstream.addr, "")
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()));
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &toml).expect("write config");
    for (args, reason) in [
        (vec!["clients", "add", "app"], "config file already"),
        (vec!["clients", "add", "x", "--redirect-uri", "http://evil.example/cb"], "loopback"),
        (vec!["clients", "add", "x"], "needs at least one --redirect-uri"),
        (vec!["clients", "add", "x", "--public", "--grant-type", "client_credentials"], "confidential"),
        (vec!["clients", "add", "x", "--grant-type", "password"], "grant types"),
        (vec!["clients", "add", "a:b", "--grant-type", "client_credentials"], "':'"),
        (vec!["clients", "remove", "nobody"], "no registered client"),
        (vec!["clients", "rotate-secret", "app"], "config file"),
        (vec!["consents", "revoke", "--user", "alice", "--client", "app"], "no consent"),
    ] {
        let (code, _, err) = cli(&path, &args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(reason), "{args:?}: {err}");
    }
    let (code, out, _) = cli(&path, &["clients", "add", "ok", "--grant-type", "client_credentials"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(&path, &["clients", "add", "ok", "--grant-type", "client_credentials"]);
    assert_eq!(code, 1);
    assert!(err.contains("registered already"), "{err} after {out}");
}

/// SECURITY.md 48: a client-credentials token's subject is its client id,
/// so no user may have one's name (letter case aside), whether the client
/// is in the file or in the store.
#[tokio::test]
async fn a_user_and_a_client_never_share_a_subject() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let user =
        |name: &str| format!("[[users]]\nusername = \"{name}\"\npassword_hash = \"{}\"\n", support::APP_SECRET_HASH);
    let toml = config_toml(upstream.addr, &user("alice"))
        .replace("url = \"sqlite::memory:\"", &format!("url = \"sqlite://{}/p.db\"", dir.path().display()));
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, &toml).expect("write config");

    let (code, _, err) = cli(&path, &["clients", "add", "ALICE", "--grant-type", "client_credentials"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("\"ALICE\" is a username; a client may not share a user's subject"), "{err}");
    let (code, _, err) = cli(&path, &["clients", "add", "bob", "--grant-type", "client_credentials"]);
    assert_eq!(code, 0, "{err}");

    // A user named like the stored client: the gateway does not start.
    let clashing = toml.clone() + &user("Bob");
    let config = portcullis::config::Config::parse(&clashing, "test.toml", &|_| None).expect("valid on its own");
    let err = portcullis::server::Server::start(config).await.err().expect("refused");
    assert_eq!(
        err.to_string(),
        "user \"Bob\" has the name of the client \"bob\" registered in the store; a user may not share a client's subject"
    );
    // Without the clash it starts.
    let config = portcullis::config::Config::parse(&(toml + &user("carol")), "test.toml", &|_| None).expect("valid");
    let gw = Gateway::start_config(config).await;
    gw.stop().await;
}

#[tokio::test]
async fn consents_are_listed_and_withdrawn_with_their_grants() {
    let upstream = Upstream::start().await;
    let (_dir, url, _, path) = on_a_store_file(&upstream);
    let store = SqliteStore::open(&url).await.expect("open store");
    store.save_consent("alice", "app", "calendar.read", 100).await.expect("save");
    store.save_consent("bob", "app", "admin", 100).await.expect("save");
    store
        .create_grant(&portcullis::store::GrantRecord {
            grant_id: "g1".into(),
            client_id: "app".into(),
            subject: "alice".into(),
            scope: "calendar.read".into(),
            created_at: 100,
            expires_at: i64::MAX,
        })
        .await
        .expect("grant");

    let (code, out, err) = cli(&path, &["consents", "list", "--user", "alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("alice ") && l.contains("app") && l.contains("calendar.read")), "{out}");
    assert!(!out.contains("bob"), "{out}");

    let (code, _, err) = cli(&path, &["consents", "revoke", "--user", "alice", "--client", "app"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(store.find_consent("alice", "app").await.expect("query"), None);
    assert!(store.grant_is_revoked("g1").await.expect("query"));
    assert_eq!(store.find_consent("bob", "app").await.expect("query").as_deref(), Some("admin"));
}

/// `portcullis keys`: listed with their states, and a rotated-in key is
/// published (JWKS) while the old one keeps signing until the new one's
/// activation; a bad duration is refused with a reason.
#[tokio::test]
async fn keys_are_listed_and_rotated_with_the_cli() {
    let upstream = Upstream::start().await;
    let (_dir, _, toml, path) = on_a_store_file(&upstream);

    let (code, out, err) = cli(&path, &["keys", "list"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "no signing key yet: the gateway creates the first when it starts\n"),
        "{err}"
    );
    let gw = Gateway::start(&toml).await;
    let (code, out, err) = cli(&path, &["keys", "list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("kid ") && lines[0].ends_with(" state"), "{out}");
    assert!(lines[1].ends_with(" active"), "{out}");
    let old = lines[1].split(' ').next().expect("kid").to_owned();

    let (code, out, err) = cli(&path, &["keys", "rotate", "--activate-in", "1h"]);
    assert_eq!(code, 0, "{err}");
    let new = out.lines().find_map(|l| l.strip_prefix("kid: ")).expect("kid").to_owned();
    assert!(out.contains("(in 1h)"), "{out}");
    let (code, out, err) = cli(&path, &["keys", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with(&new) && l.ends_with(" pending")), "{out}");
    assert!(out.lines().nth(2).is_some_and(|l| l.starts_with(&old) && l.ends_with(" active")), "{out}");
    gw.stop().await;

    // A gateway reading the store afresh publishes both, signs with the old.
    let gw = Gateway::start(&toml).await;
    let jwks = support::get(&gw.url("/oauth/jwks"), &[]).await.json();
    let kids: Vec<&str> = jwks["keys"].as_array().expect("keys").iter().filter_map(|k| k["kid"].as_str()).collect();
    assert_eq!(kids, [new.as_str(), old.as_str()]);
    let token = gw.token("app", "calendar.read").await;
    assert_eq!(kid_of(&token), old);
    gw.stop().await;

    let (code, _, err) = cli(&path, &["keys", "rotate", "--activate-in", "soon"]);
    assert_eq!(code, 2, "a usage error");
    assert!(err.contains("invalid value 'soon' for '--activate-in"), "{err}");
}

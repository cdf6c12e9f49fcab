//! Two gateways on one PostgreSQL database behave as one: a token issued
//! by either is honoured by both, for both token formats, and a token
//! revoked on one is refused by the other, within a second even when the
//! other had it cached (the replicas' notices, PostgreSQL `NOTIFY`); so
//! are clients and signing keys changed with the CLI. The database is the
//! test cluster's (`support::postgres`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use portcullis::auth::clock::{Clock as _, ManualClock};
use support::link::Link;
use support::{Gateway, Upstream, access_token, cli, client_credentials_at, config_toml, get, kid_of, send};

/// Two replicas on one new database, issuing `format` tokens.
async fn replicas(upstream: &Upstream, format: &str) -> Option<(Gateway, Gateway)> {
    let url = support::postgres::database().await?;
    Some((Gateway::start(&config(upstream, format, &url)).await, Gateway::start(&config(upstream, format, &url)).await))
}

/// The test configuration on the database at `url`, issuing `format` tokens.
fn config(upstream: &Upstream, format: &str, url: &str) -> String {
    let toml = config_toml(upstream.addr, "")
        .replace("url = \"sqlite::memory:\"", &format!("url = \"{url}\""))
        .replace("access_token_ttl = \"15m\"", &format!("access_token_ttl = \"15m\"\ntoken_format = \"{format}\""));
    assert!(toml.contains(url) && toml.contains(format), "the config anchors moved");
    toml
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_token_issued_by_one_replica_is_honoured_by_the_other() {
    for format in ["jwt", "opaque"] {
        let mut upstream = Upstream::start().await;
        let Some((a, b)) = replicas(&upstream, format).await else { return };
        let token = a.token("other", "calendar.read").await;
        for gw in [&b, &a] {
            let reply = get(&gw.url("/calendar/events"), &[("authorization", &bearer(&token))]).await;
            assert_eq!(reply.status, StatusCode::OK, "{format}: {}", reply.text());
            let seen = upstream.next().await;
            assert_eq!(seen.headers["x-auth-client-id"], "other", "{format}");
        }
        // Refused: a scope the token does not carry, on either replica.
        let reply = send(Method::POST, &b.url("/calendar/events"), &[("authorization", &bearer(&token))], "").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{format}");
        assert!(upstream.saw_nothing(), "{format}");
        a.stop().await;
        b.stop().await;
    }
}

#[tokio::test]
async fn a_token_revoked_on_one_replica_is_refused_by_the_other() {
    for format in ["jwt", "opaque"] {
        let mut upstream = Upstream::start().await;
        let Some((a, b)) = replicas(&upstream, format).await else { return };
        let token = a.token("other", "calendar.read").await;
        let kept = a.token("other", "calendar.read").await;
        let revoked = send(
            Method::POST,
            &b.url("/oauth/revoke"),
            &[("content-type", "application/x-www-form-urlencoded")],
            format!("token={token}&client_id=other&client_secret=other-secret"),
        )
        .await;
        assert_eq!(revoked.status, StatusCode::OK, "{format}: {}", revoked.text());

        let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&token))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{format}: {}", reply.text());
        assert_eq!(reply.json()["error"], "invalid_token", "{format}");
        assert!(upstream.saw_nothing(), "{format}: nothing forwarded");
        // Allowed: the client's other token is untouched.
        let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&kept))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{format}: {}", reply.text());
        upstream.next().await;
        a.stop().await;
        b.stop().await;
    }
}

/// A revoke request to `gw` for `token` of client `other`.
async fn revoke(gw: &Gateway, token: &str) {
    let reply = send(
        Method::POST,
        &gw.url("/oauth/revoke"),
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={token}&client_id=other&client_secret=other-secret"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Asks `gw` with `token` every 5 ms until it refuses (each allowed request
/// reaches `upstream`), and returns how long that took; fails past `bound`.
async fn until_refused(gw: &Gateway, upstream: &mut Upstream, token: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let reply = get(&gw.url("/calendar/events"), &[("authorization", &bearer(token))]).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_eq!(reply.json()["error"], "invalid_token");
            return started.elapsed();
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        upstream.next().await;
        assert!(started.elapsed() < bound, "still honoured {bound:?} after its revocation on the other replica");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Revocations measured per token format.
const TRIALS: usize = 100;

/// What no peer does: a token one replica has cached as valid is refused
/// there within a second of its revocation on another replica, though its
/// cache entry has 30 s to run. Measured over `TRIALS` trials per token
/// format; the distribution is printed.
#[tokio::test]
async fn a_revocation_on_one_replica_evicts_what_the_other_cached_within_a_second() {
    for format in ["jwt", "opaque"] {
        let mut upstream = Upstream::start().await;
        let Some((a, b)) = replicas(&upstream, format).await else { return };
        let mut took = Vec::new();
        for _ in 0..TRIALS {
            let token = a.token("other", "calendar.read").await;
            // Cached as valid on A.
            let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&token))]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            upstream.next().await;
            revoke(&b, &token).await;
            took.push(until_refused(&a, &mut upstream, &token, Duration::from_secs(1)).await);
        }
        assert_eq!(feed_events(&b, "announced").await, TRIALS as u64, "{format}");
        assert!(feed_events(&a, "heard").await >= TRIALS as u64, "{format}");
        took.sort();
        eprintln!(
            "{format}: revocation on B refused on A after p50 {:?}, p99 {:?}, max {:?} ({TRIALS} trials)",
            took[took.len().div_ceil(2) - 1],
            took[(took.len() * 99).div_ceil(100) - 1],
            took[took.len() - 1]
        );
        a.stop().await;
        b.stop().await;
    }
}

/// A replica cut off from PostgreSQL (its link down, the other replica's
/// up): what it has cached keeps working, what it has not is refused with
/// a 503 (never forwarded), and so is a token request that needs the
/// store; a revocation made elsewhere meanwhile is not
/// heard, so when the link comes back the replica forgets its whole cache
/// and the revoked token is refused, with no restart.
#[tokio::test]
async fn a_replica_cut_off_from_the_database_fails_closed_and_catches_up_when_it_returns() {
    let mut upstream = Upstream::start().await;
    let Some(url) = support::postgres::database().await else { return };
    let (host, rest) = url.split_once('@').expect("a user in the URL");
    let (authority, db) = rest.split_once('/').expect("a database in the URL");
    let link = Link::start(authority.parse().expect("an IP:port authority")).await;
    let a = Gateway::start(&config(&upstream, "opaque", &format!("{host}@{}/{db}", link.addr))).await;
    let b = Gateway::start(&config(&upstream, "opaque", &url)).await;
    let cached = b.token("other", "calendar.read").await;
    let uncached = b.token("other", "calendar.read").await;
    let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&cached))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;

    link.cut();
    revoke(&b, &cached).await;
    // Allowed: a token A has cached, for at most cache.ttl.
    let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&cached))]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    upstream.next().await;
    // Refused: one it would have to ask the store about.
    let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&uncached))]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(upstream.saw_nothing(), "nothing forwarded on a token it could not check");
    // Refused: an opaque token, which cannot be issued without the store.
    let reply = a.client_credentials("other", "other-secret").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.json()["error"], "temporarily_unavailable");

    link.restore();
    let took = until_refused(&a, &mut upstream, &cached, Duration::from_secs(5)).await;
    eprintln!("the revoked token was refused {took:?} after the link came back");
    assert_eq!(feed_events(&a, "resumed").await, 1, "one return, one emptied cache");
    let reply = get(&a.url("/calendar/events"), &[("authorization", &bearer(&uncached))]).await;
    assert_eq!(reply.status, StatusCode::OK, "recovered on its own: {}", reply.text());
    upstream.next().await;
    assert_eq!(a.client_credentials("other", "other-secret").await.status, StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

/// Guesses spread over two replicas count together: after `MAX_FAILURES`
/// wrong secrets in all, the next guess is refused unverified on either
/// replica, as it would be on one.
#[tokio::test]
async fn guesses_spread_over_replicas_are_throttled_as_on_one() {
    let upstream = Upstream::start().await;
    let Some((a, b)) = replicas(&upstream, "jwt").await else { return };
    // Allowed: the real secret, before any guessing.
    assert_eq!(b.client_credentials("app", "app-secret").await.status, StatusCode::OK);
    let max = portcullis::oauth::clients::MAX_FAILURES;
    for i in 0..max {
        let gw = if i % 2 == 0 { &a } else { &b };
        let reply = gw.client_credentials("other", "guess").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "guess {i}: {}", reply.text());
    }
    for gw in [&a, &b] {
        let reply = gw.client_credentials("other", "guess").await;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.text());
        assert_eq!(reply.json()["error"], "slow_down");
    }
    // Another client is not affected.
    assert_eq!(a.client_credentials("app", "app-secret").await.status, StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

/// Three replicas: a token cached on two of them is refused on both within
/// a second of its revocation on the third.
#[tokio::test]
async fn three_replicas_hear_a_revocation_on_any_one() {
    let mut upstream = Upstream::start().await;
    let Some(url) = support::postgres::database().await else { return };
    let toml = config(&upstream, "jwt", &url);
    let (a, b, c) = (Gateway::start(&toml).await, Gateway::start(&toml).await, Gateway::start(&toml).await);
    let token = c.token("other", "calendar.read").await;
    for gw in [&a, &b] {
        let reply = get(&gw.url("/calendar/events"), &[("authorization", &bearer(&token))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        upstream.next().await;
    }
    revoke(&c, &token).await;
    for gw in [&a, &b] {
        until_refused(gw, &mut upstream, &token, Duration::from_secs(1)).await;
    }
    for gw in [a, b, c] {
        gw.stop().await;
    }
}

/// `portcullis_replica_notices_total` of `gw` for `event`.
async fn feed_events(gw: &Gateway, event: &str) -> u64 {
    gw.counter(&format!("portcullis_replica_notices_total{{event=\"{event}\"}}")).await
}

/// Waits until `check` holds, asking every 5 ms; fails past `bound`.
async fn within<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The config `toml` in a file of its own, for the CLI.
fn config_file(dir: &tempfile::TempDir, toml: &str) -> std::path::PathBuf {
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Clients registered, re-keyed and removed with the CLI are seen by every
/// replica within a second (the replicas' notices), though each keeps what
/// it read of a client for 5 s: a replica that has just found a client
/// unknown takes it once registered, and one that has just used a secret
/// refuses it once rotated. A rotation revokes the tokens issued before it,
/// a removal all of them, JWTs included: refused on every replica that had
/// them cached, within a second.
#[tokio::test]
async fn clients_changed_with_the_cli_reach_every_replica_within_a_second() {
    let mut upstream = Upstream::start().await;
    let Some(url) = support::postgres::database().await else { return };
    let toml = config(&upstream, "jwt", &url);
    let (a, b) = (Gateway::start(&toml).await, Gateway::start(&toml).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(&dir, &toml);
    let secret_of =
        |out: &str| out.lines().find_map(|l| l.strip_prefix("client_secret: ")).expect("a secret").to_owned();
    let second_of = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();

    // Read as unknown by both first.
    for gw in [&a, &b] {
        assert_eq!(svc_status(gw, "none").await, StatusCode::UNAUTHORIZED);
    }
    let (code, out, err) =
        cli(&path, &["clients", "add", "svc", "--grant-type", "client_credentials", "--scope", "calendar.read"]);
    assert_eq!(code, 0, "{err}");
    let first = secret_of(&out);
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "registered", || async { svc_status(gw, &first).await == StatusCode::OK }).await;
    }
    let before_rotation = svc_token(&a, &first).await;
    cache_on_both(&a, &b, &mut upstream, &before_rotation).await;

    let (code, out, err) = cli(&path, &["clients", "rotate-secret", "svc"]);
    assert_eq!(code, 0, "{err}");
    let rotated_in = second_of();
    let second = secret_of(&out);
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "old secret refused", || async {
            svc_status(gw, &first).await == StatusCode::UNAUTHORIZED
        })
        .await;
        assert_eq!(svc_status(gw, &second).await, StatusCode::OK);
        until_refused(gw, &mut upstream, &before_rotation, Duration::from_secs(1)).await;
    }
    // A token of the new secret, issued after the rotation's second (a
    // client revocation is to the second), is honoured.
    within(Duration::from_secs(2), "the next second", || async { second_of() > rotated_in }).await;
    let after_rotation = svc_token(&b, &second).await;
    cache_on_both(&a, &b, &mut upstream, &after_rotation).await;

    let (code, _, err) = cli(&path, &["clients", "remove", "svc"]);
    assert_eq!(code, 0, "{err}");
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "removed", || async {
            svc_status(gw, &second).await == StatusCode::UNAUTHORIZED
        })
        .await;
        until_refused(gw, &mut upstream, &after_rotation, Duration::from_secs(1)).await;
    }
    a.stop().await;
    b.stop().await;
}

/// A token of `svc` with `secret`, from `gw`.
async fn svc_token(gw: &Gateway, secret: &str) -> String {
    access_token(&gw.client_credentials("svc", secret).await)
}

/// `token` presented to both replicas, and cached as valid there.
async fn cache_on_both(a: &Gateway, b: &Gateway, upstream: &mut Upstream, token: &str) {
    for gw in [a, b] {
        let reply = get(&gw.url("/calendar/events"), &[("authorization", &bearer(token))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        upstream.next().await;
    }
}

/// What `gw` answers a client-credentials request of `svc` with `secret`.
async fn svc_status(gw: &Gateway, secret: &str) -> StatusCode {
    gw.client_credentials("svc", secret).await.status
}

/// The published keys' ids, in the JWKS `gw` serves.
async fn published(gw: &Gateway) -> Vec<String> {
    let jwks = get(&gw.url("/oauth/jwks"), &[]).await.json();
    jwks["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_owned()).collect()
}

/// `portcullis keys rotate` on a store two replicas share: both publish the
/// new key within a second and neither signs with it before its activation;
/// from then on both do, and both still honour what the old key signed,
/// which they keep publishing until those tokens have expired.
#[tokio::test]
async fn a_rotated_key_is_published_by_every_replica_before_any_signs_with_it() {
    let mut upstream = Upstream::start().await;
    let Some(url) = support::postgres::database().await else { return };
    let toml = config(&upstream, "jwt", &url);
    let clock = Arc::new(ManualClock::starting_now());
    let a = Gateway::start_with_clock(&toml, clock.clone()).await;
    let b = Gateway::start_with_clock(&toml, clock.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(&dir, &toml);
    let old_token = a.token("other", "calendar.read").await;
    // Not presented before the end: a cached verdict runs on real time,
    // which this test does not move.
    let unused_old_token = b.token("other", "calendar.read").await;
    let old = kid_of(&old_token);

    let (code, out, err) = cli(&path, &["keys", "rotate", "--activate-in", "10m"]);
    assert_eq!(code, 0, "{err}");
    let new = out.lines().find_map(|l| l.strip_prefix("kid: ")).expect("the new kid").to_owned();
    for gw in [&a, &b] {
        within(Duration::from_secs(1), "published", || async { published(gw).await == [new.clone(), old.clone()] })
            .await;
        assert_eq!(kid_of(&gw.token("other", "calendar.read").await), old, "pending: nobody signs with it");
    }
    let (code, out, err) = cli(&path, &["keys", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with(&new) && l.ends_with("pending")), "{out}");
    assert!(out.lines().any(|l| l.starts_with(&old) && l.ends_with("active")), "{out}");

    // To a second before the activation the CLI chose (by the system
    // clock, some way ahead of this test's by now), then to it.
    let keys = portcullis::store::open(&url).await.expect("open").signing_keys().await.expect("keys");
    let activates_at = keys.iter().find(|k| k.kid == new).expect("stored").activates_at as u64;
    clock.advance(Duration::from_secs(activates_at - 1 - clock.unix()));
    for gw in [&a, &b] {
        assert_eq!(kid_of(&gw.token("other", "calendar.read").await), old, "a second before: not yet");
    }
    clock.advance(Duration::from_secs(1));
    for gw in [&a, &b] {
        assert_eq!(kid_of(&gw.token("other", "calendar.read").await), new, "active: both sign with it");
        let reply = get(&gw.url("/calendar/events"), &[("authorization", &bearer(&old_token))]).await;
        assert_eq!(reply.status, StatusCode::OK, "the old key's token still honoured: {}", reply.text());
        upstream.next().await;
    }
    // 15 m tokens, 5 s leeway: the old key is published until then.
    clock.advance(Duration::from_secs(15 * 60 + 4));
    for gw in [&a, &b] {
        assert_eq!(published(gw).await, [new.clone(), old.clone()]);
    }
    clock.advance(Duration::from_secs(1));
    for gw in [&a, &b] {
        assert_eq!(published(gw).await, [new.as_str()], "retired and outlived");
        let reply = get(&gw.url("/calendar/events"), &[("authorization", &bearer(&unused_old_token))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    }
    assert!(upstream.saw_nothing());
    a.stop().await;
    b.stop().await;
}

/// `authorization_server.key_rotation`: replicas that find the newest key
/// older than the period rotate one in, once between them, and it is
/// published by a replica that does not rotate itself.
#[tokio::test]
async fn a_scheduled_rotation_adds_one_key_however_many_replicas_are_due() {
    let upstream = Upstream::start().await;
    let Some(url) = support::postgres::database().await else { return };
    let toml = config(&upstream, "jwt", &url);
    let first = Gateway::start(&toml).await;
    let old = published(&first).await;
    assert_eq!(old.len(), 1);

    // Two replicas whose clocks say the key is two days old, due under a
    // one-day period; each checks at start.
    let later = Arc::new(ManualClock::starting_now());
    later.advance(Duration::from_secs(2 * 86_400));
    let scheduled = toml.replace("access_token_ttl = \"15m\"", "access_token_ttl = \"15m\"\nkey_rotation = \"1d\"");
    assert_ne!(scheduled, toml);
    let b = Gateway::start_with_clock(&scheduled, later.clone()).await;
    let c = Gateway::start_with_clock(&scheduled, later.clone()).await;
    within(Duration::from_secs(1), "rotated and published", || async { published(&first).await.len() == 2 }).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = cli(&config_file(&dir, &toml), &["keys", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1 + 2, "one key added between two replicas: {out}");
    for gw in [first, b, c] {
        gw.stop().await;
    }
}

/// The test configuration for replicas in namespaces: on the database at
/// `url`, opaque tokens (every uncached one needs the store), a request
/// waiting at most 1 s for it, and any host name (requests come to the
/// replicas' addresses). Only the built-in demo route is used: the
/// replicas reach nothing but the database.
fn partition_config(url: &str) -> String {
    let toml = config_toml("127.0.0.1:9".parse().expect("an address"), "")
        .replace("url = \"sqlite::memory:\"", &format!("url = \"{url}\"\nacquire_timeout = \"1s\""))
        .replace("access_token_ttl = \"15m\"", "access_token_ttl = \"15m\"\ntoken_format = \"opaque\"");
    let toml = toml.replacen("allowed_hosts = [", "allowed_hosts = [\"*\", ", 1);
    assert!(toml.contains(url) && toml.contains("opaque") && toml.contains("\"*\""), "the config anchors moved");
    toml
}

/// Replicas and PostgreSQL each on a host of their own (network
/// namespaces on this machine), and one replica's link to the database
/// taken down, so its packets go nowhere and nothing is refused or reset:
/// the partition a switch or a cloud network makes. That replica keeps
/// serving what it has cached, answers `503` for what needs the database
/// within its `acquire_timeout` (never hangs, never forwards), fails
/// `/readyz`; a revocation made on the other replica meanwhile is refused
/// there once the link is back, with no restart.
#[tokio::test]
async fn a_replica_partitioned_from_the_database_fails_closed_and_heals() {
    let Some(mut net) = support::netns::Net::new() else { return };
    let db = net.host("db", false);
    let (host1, host2) = (net.host("r1", true), net.host("r2", true));
    let pg = support::netns::Postgres::start(&db);
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = partition_config(&pg.url);
    let r1 = support::netns::Replica::start(&host1, &toml, dir.path()).await;
    let r2 = support::netns::Replica::start(&host2, &toml, dir.path()).await;
    let call = |r: &support::netns::Replica, token: &str| {
        let (url, auth) = (r.url("/static/events"), bearer(token));
        async move { get(&url, &[("authorization", &auth)]).await }
    };
    let token_from = |r: &support::netns::Replica| {
        let url = r.url("/oauth/token");
        async move { access_token(&client_credentials_at(&url, "other", "other-secret", Some("calendar.read")).await) }
    };
    let (cached, uncached) = (token_from(&r2).await, token_from(&r2).await);
    assert_eq!(call(&r1, &cached).await.status, StatusCode::OK);

    net.set_back_link(&host1, false);
    let revoked = send(
        Method::POST,
        &r2.url("/oauth/revoke"),
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={cached}&client_id=other&client_secret=other-secret"),
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    // Allowed: what r1 has cached, for at most cache.ttl.
    assert_eq!(call(&r1, &cached).await.status, StatusCode::OK);
    // Refused, within the acquire timeout: what needs the database.
    let started = Instant::now();
    let reply = call(&r1, &uncached).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    let reply = token_request(&r1).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(get(&r1.admin_url("/readyz"), &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    eprintln!("partitioned: an uncached token refused with 503 after {took:?}");
    let store_metric = |series: &'static str| {
        let url = r1.admin_url("/metrics");
        async move { support::counter(&get(&url, &[]).await.text(), series) }
    };
    // Told once, and metered: checked every second, waited on for 1 s.
    within(Duration::from_secs(3), "the store metered down", || async {
        store_metric("portcullis_store_up").await == 0
    })
    .await;
    assert_eq!(store_metric("portcullis_store_transitions_total{to=\"down\"}").await, 1);

    net.set_back_link(&host1, true);
    let healed = Instant::now();
    within(Duration::from_secs(30), "the revoked token refused after healing", || async {
        call(&r1, &cached).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    eprintln!("healed: the revocation made during the partition took effect after {:?}", healed.elapsed());
    assert_eq!(call(&r1, &uncached).await.status, StatusCode::OK);
    assert_eq!(token_request(&r1).await.status, StatusCode::OK);
    assert_eq!(get(&r1.admin_url("/readyz"), &[]).await.status, StatusCode::OK);
    within(Duration::from_secs(3), "the store metered up", || async { store_metric("portcullis_store_up").await == 1 })
        .await;
    assert_eq!(store_metric("portcullis_store_transitions_total{to=\"up\"}").await, 1);
    assert_eq!(store_metric("portcullis_store_transitions_total{to=\"down\"}").await, 1);
}

/// A token request of `other` to the replica `r`, whatever it answers.
async fn token_request(r: &support::netns::Replica) -> support::Reply {
    client_credentials_at(&r.url("/oauth/token"), "other", "other-secret", None).await
}

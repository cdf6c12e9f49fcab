//! The store's contract, held by both backends: SQLite (one file, two
//! pools on it) and PostgreSQL (one database, two pools on it, as two
//! replicas would have). Every test runs the same steps on each and
//! expects the same answers: one-time items are consumed once whoever
//! asks, replicas starting together settle on one signing key, a revoked
//! grant is revoked for every replica, and every record reads back as it
//! was written.

mod support;

use std::sync::Arc;

use portcullis::store::{
    AccessTokenRecord, CodeRecord, Consumed, GrantRecord, Heard, Notice, PostgresStore, RefreshRecord, ReplicaFeed,
    Revocation, SessionRecord, SqliteStore, Store, StoredClient, StoredKey,
};

/// One backend: its name, and `REPLICAS` handles on one database.
struct Backend {
    name: &'static str,
    replicas: Vec<Arc<dyn Store>>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

const REPLICAS: usize = 2;

impl Backend {
    async fn open(url: &str) -> Arc<dyn Store> {
        if url.starts_with("sqlite:") {
            Arc::new(SqliteStore::open(url).await.expect("SQLite opens"))
        } else {
            Arc::new(PostgresStore::open(url).await.expect("PostgreSQL opens"))
        }
    }

    /// Another handle on the same database, as a replica starting later
    /// would open.
    async fn another(&self) -> Arc<dyn Store> {
        Backend::open(&self.url).await
    }
}

/// Every backend this machine has: SQLite always, PostgreSQL where the
/// test cluster runs (required under `CI=true`).
async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut all = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(Backend::open(&url).await);
    }
    all.push(Backend { name: "sqlite", replicas, url, _dir: Some(dir) });
    if let Some(url) = support::postgres::database().await {
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            replicas.push(Backend::open(&url).await);
        }
        all.push(Backend { name: "postgres", replicas, url, _dir: None });
    }
    all
}

fn grant(id: &str) -> GrantRecord {
    GrantRecord {
        grant_id: id.into(),
        client_id: "web".into(),
        subject: "alice".into(),
        scope: "calendar.read".into(),
        created_at: 100,
        expires_at: 10_000,
    }
}

fn code(hash: u8, grant_id: &str) -> CodeRecord {
    CodeRecord {
        code_hash: [hash; 32],
        grant_id: grant_id.into(),
        client_id: "web".into(),
        subject: "alice".into(),
        redirect_uri: "https://web.example/cb".into(),
        redirect_uri_sent: true,
        scope: "calendar.read".into(),
        code_challenge: Some("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into()),
        expires_at: 700,
    }
}

fn refresh(hash: u8, grant_id: &str) -> RefreshRecord {
    RefreshRecord {
        token_hash: [hash; 32],
        grant_id: grant_id.into(),
        client_id: "web".into(),
        subject: "alice".into(),
        scope: "calendar.read".into(),
        issued_at: 100,
        expires_at: 5_000,
        used: false,
    }
}

/// Sixteen concurrent attempts, spread over the replicas; the outcomes.
async fn race<T, F, Fut>(b: &Backend, attempt: F) -> Vec<Consumed<T>>
where
    T: Send + 'static,
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = Consumed<T>> + Send + 'static,
{
    let tasks: Vec<_> = (0..16).map(|i| tokio::spawn(attempt(b.replicas[i % REPLICAS].clone()))).collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("attempt"));
    }
    outcomes
}

fn count<T>(outcomes: &[Consumed<T>]) -> (usize, usize, usize) {
    outcomes.iter().fold((0, 0, 0), |(c, a, u), o| match o {
        Consumed::Consumed(_) => (c + 1, a, u),
        Consumed::AlreadyUsed(_) => (c, a + 1, u),
        Consumed::Unknown => (c, a, u + 1),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_and_a_refresh_token_are_consumed_once_whoever_asks() {
    for b in backends().await {
        let (a, other) = (&b.replicas[0], &b.replicas[1]);
        a.create_grant(&grant("g1")).await.unwrap();
        a.save_code(&code(1, "g1")).await.unwrap();
        let outcomes = race(&b, |s| async move { s.consume_code(&[1; 32], 200).await.expect("store answers") }).await;
        assert_eq!(count(&outcomes), (1, 15, 0), "{}: one redemption wins, the others are replays", b.name);
        let won = outcomes.into_iter().find_map(|o| if let Consumed::Consumed(c) = o { Some(c) } else { None });
        assert_eq!(won, Some(code(1, "g1")), "{}: the code reads back as saved", b.name);
        assert_eq!(other.consume_code(&[9; 32], 200).await.unwrap(), Consumed::Unknown, "{}", b.name);

        other.save_refresh_token(&refresh(2, "g1")).await.unwrap();
        let outcomes =
            race(&b, |s| async move { s.consume_refresh_token(&[2; 32], 300).await.expect("store answers") }).await;
        assert_eq!(count(&outcomes), (1, 15, 0), "{}: one rotation wins, the others are reuse", b.name);
        let found = a.find_refresh_token(&[2; 32]).await.unwrap().expect("still there");
        assert!(found.used, "{}", b.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_starting_together_settle_on_one_signing_key() {
    for b in backends().await {
        // Four more replicas open at once (migrations included) and each
        // tries to store a key of its own.
        let opened: Vec<_> = (0..4).map(|_| b.another()).collect();
        let mut stores = Vec::new();
        for s in opened {
            stores.push(s.await);
        }
        let tries: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                tokio::spawn(async move {
                    let key = StoredKey {
                        kid: format!("k{i}"),
                        alg: "EdDSA".into(),
                        private_der: vec![i as u8; 48],
                        public_key: vec![i as u8; 32],
                        created_at: 1_000 + i as i64,
                        activates_at: 1_000 + i as i64,
                    };
                    s.add_signing_key(&key, Some(i64::MIN)).await.expect("store answers");
                })
            })
            .collect();
        for t in tries {
            t.await.expect("insert");
        }
        let kids: Vec<Vec<String>> = {
            let mut all = Vec::new();
            for s in stores.iter().chain(&b.replicas) {
                all.push(s.signing_keys().await.unwrap().into_iter().map(|k| k.kid).collect());
            }
            all
        };
        assert_eq!(kids[0].len(), 1, "{}: one key, not one per replica: {kids:?}", b.name);
        assert!(kids.iter().all(|k| *k == kids[0]), "{}: every replica sees the same key: {kids:?}", b.name);
    }
}

/// A client removed or re-keyed on one replica: its tokens issued up to
/// then are revoked on the other, JWTs included (by client and issue time,
/// since no JWT is recorded), later ones and other clients' are not; the
/// time never moves back; with `grants`, its refresh tokens die too; and
/// the row goes once its tokens have expired.
#[tokio::test]
async fn a_client_revoked_on_one_replica_is_revoked_on_the_other() {
    for b in backends().await {
        let (a, other) = (&b.replicas[0], &b.replicas[1]);
        a.create_grant(&grant("g9")).await.unwrap();
        a.save_refresh_token(&refresh(9, "g9")).await.unwrap();
        assert!(!a.is_revoked("jwt-1", "web", 200).await.unwrap(), "{}", b.name);

        other.revoke_client("web", 200, 1_100, false).await.unwrap();
        assert!(a.is_revoked("jwt-1", "web", 200).await.unwrap(), "{}: issued in the second of the change", b.name);
        assert!(a.is_revoked("jwt-2", "web", 150).await.unwrap(), "{}", b.name);
        assert!(!a.is_revoked("jwt-3", "web", 201).await.unwrap(), "{}: issued after", b.name);
        assert!(!a.is_revoked("jwt-4", "app", 150).await.unwrap(), "{}: another client", b.name);
        assert!(!a.grant_is_revoked("g9").await.unwrap(), "{}: a new secret leaves the grants", b.name);

        other.revoke_client("web", 100, 1_000, true).await.unwrap();
        assert!(a.is_revoked("jwt-2", "web", 150).await.unwrap(), "{}: never moved back", b.name);
        assert!(a.grant_is_revoked("g9").await.unwrap(), "{}: a removal ends the grants", b.name);
        assert!(matches!(a.consume_refresh_token(&[9; 32], 300).await.unwrap(), Consumed::AlreadyUsed(_)));

        a.purge_expired(1_101).await.unwrap();
        assert!(!a.is_revoked("jwt-2", "web", 150).await.unwrap(), "{}: purged after its tokens' life", b.name);
    }
}

#[tokio::test]
async fn a_grant_revoked_on_one_replica_is_revoked_on_the_other() {
    for b in backends().await {
        let (a, other) = (&b.replicas[0], &b.replicas[1]);
        a.create_grant(&grant("g2")).await.unwrap();
        a.record_grant_access_token("g2", "jti-1", 900).await.unwrap();
        a.record_grant_access_token("g2", "jti-2", 900).await.unwrap();
        a.save_refresh_token(&refresh(3, "g2")).await.unwrap();
        assert!(!a.grant_is_revoked("g2").await.unwrap(), "{}", b.name);
        // Allowed before, refused after.
        assert!(!a.is_revoked("jti-1", "web", 100).await.unwrap(), "{}", b.name);

        let mut jtis = other.revoke_grant("g2", 400).await.unwrap();
        jtis.sort();
        assert_eq!(jtis, ["jti-1", "jti-2"], "{}: the jtis to forget", b.name);
        assert!(a.grant_is_revoked("g2").await.unwrap(), "{}", b.name);
        assert!(
            a.is_revoked("jti-1", "web", 100).await.unwrap() && a.is_revoked("jti-2", "web", 100).await.unwrap(),
            "{}",
            b.name
        );
        assert!(matches!(a.consume_refresh_token(&[3; 32], 500).await.unwrap(), Consumed::AlreadyUsed(_)));
        // A refresh token minted after the revocation starts out used.
        a.save_refresh_token(&refresh(4, "g2")).await.unwrap();
        assert!(a.find_refresh_token(&[4; 32]).await.unwrap().expect("saved").used, "{}", b.name);
        // Unknown grants (purged after expiry) count as revoked.
        assert!(other.grant_is_revoked("never").await.unwrap(), "{}", b.name);
    }
}

#[tokio::test]
async fn records_read_back_as_written_and_expire_together() {
    for b in backends().await {
        let (a, other) = (&b.replicas[0], &b.replicas[1]);
        let n = b.name;

        let token = AccessTokenRecord {
            token_hash: [5; 32],
            jti: "jti-5".into(),
            client_id: "app".into(),
            subject: "app".into(),
            scope: "a b".into(),
            issued_at: 100,
            expires_at: 200,
        };
        a.save_access_token(&token).await.unwrap();
        assert_eq!(other.find_access_token(&[5; 32]).await.unwrap(), Some(token), "{n}");
        assert_eq!(other.find_access_token(&[6; 32]).await.unwrap(), None, "{n}");
        a.revoke("jti-5", 200).await.unwrap();
        a.revoke("jti-5", 200).await.unwrap();
        assert!(other.is_revoked("jti-5", "web", 100).await.unwrap(), "{n}: revocations are idempotent and shared");

        let session = SessionRecord {
            session_hash: [7; 32],
            subject: "alice".into(),
            csrf_token: "csrf".into(),
            created_at: 100,
            expires_at: 200,
        };
        a.create_session(&session).await.unwrap();
        assert_eq!(other.find_session(&[7; 32], 150).await.unwrap(), Some(session.clone()), "{n}");
        assert_eq!(other.find_session(&[7; 32], 250).await.unwrap(), None, "{n}: expired");
        other.delete_session(&[7; 32]).await.unwrap();
        assert_eq!(a.find_session(&[7; 32], 150).await.unwrap(), None, "{n}: ended on every replica");

        a.create_grant(&grant("g3")).await.unwrap();
        a.save_consent("alice", "web", "calendar.read", 100).await.unwrap();
        other.save_consent("alice", "web", "calendar.read calendar.write", 110).await.unwrap();
        assert_eq!(a.find_consent("alice", "web").await.unwrap().as_deref(), Some("calendar.read calendar.write"));
        let listed = a.list_consents(Some("alice")).await.unwrap();
        assert_eq!(listed.len(), 1, "{n}: replaced, not added");
        assert_eq!(listed[0].granted_at, 110, "{n}");
        assert!(other.delete_consent("alice", "web", 120).await.unwrap(), "{n}");
        assert!(a.grant_is_revoked("g3").await.unwrap(), "{n}: withdrawing consent ends its grants");
        assert!(!other.delete_consent("alice", "web", 120).await.unwrap(), "{n}: nothing left to withdraw");

        let client = StoredClient {
            client_id: "cli".into(),
            name: "CLI app".into(),
            secret_hash: Some("$argon2id$hash".into()),
            public: false,
            require_pkce: true,
            redirect_uris: vec!["https://cli.example/cb".into(), "http://127.0.0.1/cb".into()],
            scopes: vec!["calendar.read".into()],
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            created_at: 100,
        };
        assert!(a.insert_client(&client).await.unwrap(), "{n}");
        assert!(!other.insert_client(&client).await.unwrap(), "{n}: the id is taken");
        assert_eq!(other.find_client("cli").await.unwrap(), Some(client.clone()), "{n}");
        assert!(other.set_client_secret("cli", "$argon2id$other").await.unwrap(), "{n}");
        assert_eq!(a.list_clients().await.unwrap()[0].secret_hash.as_deref(), Some("$argon2id$other"), "{n}");
        assert!(a.delete_client("cli").await.unwrap() && !other.delete_client("cli").await.unwrap(), "{n}");

        // Everything above expired by 20 000: purged, whoever purges.
        a.save_code(&code(8, "g3")).await.unwrap();
        assert!(other.purge_expired(20_000).await.unwrap() >= 4, "{n}");
        assert_eq!(a.find_access_token(&[5; 32]).await.unwrap(), None, "{n}");
        assert_eq!(a.find_code(&[8; 32]).await.unwrap(), None, "{n}");
        a.ping().await.unwrap();
    }
}

/// The janitor's purge: every expired row goes, once, however many
/// replicas purge at the same moment (PostgreSQL: one at a time under an
/// advisory lock, in batches of 5,000), and nothing live goes with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_rows_are_purged_once_whoever_purges() {
    const EXPIRED: u64 = 6_000;
    for b in backends().await {
        let writers: Vec<_> = (0..EXPIRED / 200)
            .map(|w| {
                let s = b.replicas[(w % 2) as usize].clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        s.revoke(&format!("expired-{w}-{i}"), 10).await.expect("store answers");
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        b.replicas[0].revoke("live", 1_000_000).await.unwrap();
        let purges: Vec<_> = b
            .replicas
            .iter()
            .map(|s| {
                let s = s.clone();
                tokio::spawn(async move { s.purge_expired(500).await.expect("store answers") })
            })
            .collect();
        let mut purged = 0;
        for p in purges {
            purged += p.await.expect("purge");
        }
        assert_eq!(purged, EXPIRED, "{}: each expired row purged once", b.name);
        assert!(!b.replicas[1].is_revoked("expired-0-0", "web", 100).await.unwrap(), "{}", b.name);
        assert!(b.replicas[1].is_revoked("live", "web", 100).await.unwrap(), "{}: the live row stays", b.name);
    }
}

/// Replicas hear each other's revocations (and client and key changes) through the store (PostgreSQL
/// `NOTIFY`; SQLite serves one process and has no feed), a consent
/// withdrawn with the CLI included: its grants' access tokens are
/// announced, so every replica's cache forgets them.
#[tokio::test]
async fn revocations_are_heard_by_every_replica() {
    for b in backends().await {
        let (a, other) = (&b.replicas[0], &b.replicas[1]);
        let Some(mut feed) = other.replica_feed().await.unwrap() else {
            assert_eq!(b.name, "sqlite", "only SQLite has no one to tell");
            continue;
        };
        for told in [Notice::Revoked(Revocation::Token([7; 32])), Notice::Client("app".into()), Notice::Keys] {
            a.announce(&told).await.unwrap();
            assert_eq!(heard(&mut feed).await, Heard::Told(told), "{}", b.name);
        }

        a.create_grant(&grant("g4")).await.unwrap();
        a.record_grant_access_token("g4", "jti-4", 900).await.unwrap();
        a.save_consent("alice", "web", "calendar.read", 100).await.unwrap();
        assert!(a.delete_consent("alice", "web", 200).await.unwrap());
        let grant = Notice::Revoked(Revocation::Grant(vec!["jti-4".into()]));
        assert_eq!(heard(&mut feed).await, Heard::Told(grant), "{}", b.name);
    }
}

/// The next thing `feed` hears, within five seconds.
async fn heard(feed: &mut Box<dyn ReplicaFeed>) -> Heard {
    tokio::time::timeout(std::time::Duration::from_secs(5), feed.next()).await.expect("heard in time")
}

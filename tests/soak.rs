//! Soak: the real binary under a steady mix of everything clients do, at
//! 80% of the most this machine could push through it a moment before,
//! for `PORTCULLIS_SOAK_SECONDS` (30 in the suite; `benches/soak.sh`
//! runs 600 on a release build). It fails on any answer other than the
//! one its kind of request must get, and on resident memory or open file
//! descriptors that do not stay within 10% of where they stood once warm.
//!
//! The mix, per 100 requests: 50 GETs with one of ten tokens (cache
//! hits), 15 with a token from the last 2,000 issued (the cache holds
//! 1,000: many miss), 10 with a token that is no JWT (401), 10 DELETEs
//! with a read-only token (403), 7 `client_credentials` grants, 4
//! authorization-code flows (code, then redemption) and 4 refreshes.

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::demo::{
    CLIENT_BASIC, FORM, approve_as_alice, authorization_query, code_in_location, demo_config_for_test, form,
    redemption, sign_in_as_alice, write_config,
};
use support::served::Served;

/// Requests in flight at once.
const CLIENTS: usize = 16;

/// One client's keep-alive connections to the gateway.
type Http = Client<HttpConnector, Full<Bytes>>;

/// What the clients share: the gateway's address, tokens, and the tally.
struct Soak {
    public: std::net::SocketAddr,
    session: String,
    hot: Vec<String>,
    /// The last 2,000 access tokens issued.
    issued: Mutex<VecDeque<String>>,
    /// Refresh tokens not yet used.
    refresh: Mutex<Vec<String>>,
    done: AtomicU64,
    unexpected: AtomicU64,
}

/// The kinds of request in the mix, and how many of each per 100.
const MIX: [(Kind, u32); 7] = [
    (Kind::Hit, 50),
    (Kind::Fresh, 15),
    (Kind::Unauthenticated, 10),
    (Kind::Forbidden, 10),
    (Kind::Issue, 7),
    (Kind::Code, 4),
    (Kind::Refresh, 4),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Hit,
    Fresh,
    Unauthenticated,
    Forbidden,
    Issue,
    Code,
    Refresh,
}

/// One request on `http`; a 418 stands for no whole answer within 10 s.
async fn exchange(
    http: &Http,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("a request");
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        let res = http.request(req).await.ok()?;
        let (parts, body) = res.into_parts();
        Some((parts.status, parts.headers, body.collect().await.ok()?.to_bytes()))
    });
    answered.await.ok().flatten().unwrap_or((StatusCode::IM_A_TEAPOT, HeaderMap::new(), Bytes::new()))
}

impl Soak {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    async fn token(&self, http: &Http, pairs: &[(&str, &str)]) -> Option<serde_json::Value> {
        let headers = [("content-type", FORM), ("authorization", CLIENT_BASIC)];
        let (status, _, body) = exchange(http, Method::POST, &self.url("/oauth/token"), &headers, form(pairs)).await;
        (status == StatusCode::OK).then(|| serde_json::from_slice(&body).ok()).flatten()
    }

    fn keep(&self, tokens: &serde_json::Value) {
        if let Some(access) = tokens["access_token"].as_str() {
            let mut issued = self.issued.lock().expect("lock");
            if issued.len() == 2_000 {
                issued.pop_front();
            }
            issued.push_back(access.to_string());
        }
        if let Some(refresh) = tokens["refresh_token"].as_str() {
            self.refresh.lock().expect("lock").push(refresh.to_string());
        }
    }

    /// Sends one request of `kind`; whether it got what it must.
    async fn one(&self, http: &Http, kind: Kind, n: u64) -> bool {
        let api = self.url("/calendar/events");
        let get = |token: String| async move {
            let auth = format!("Bearer {token}");
            exchange(http, Method::GET, &api, &[("authorization", &auth)], String::new()).await.0
        };
        match kind {
            Kind::Hit => get(self.hot[n as usize % self.hot.len()].clone()).await == StatusCode::OK,
            Kind::Fresh => {
                let token = {
                    let issued = self.issued.lock().expect("lock");
                    issued[n as usize % issued.len()].clone()
                };
                get(token).await == StatusCode::OK
            }
            Kind::Unauthenticated => get(format!("not-a-jwt-{n}")).await == StatusCode::UNAUTHORIZED,
            Kind::Forbidden => {
                let auth = format!("Bearer {}", self.hot[0]);
                let url = self.url("/calendar/events");
                let (status, ..) =
                    exchange(http, Method::DELETE, &url, &[("authorization", &auth)], String::new()).await;
                status == StatusCode::FORBIDDEN
            }
            Kind::Issue => {
                let tokens =
                    self.token(http, &[("grant_type", "client_credentials"), ("scope", "calendar.read")]).await;
                tokens.map(|t| self.keep(&t)).is_some()
            }
            Kind::Code => {
                let url = self.url(&format!("/oauth/authorize?{}", authorization_query()));
                let (status, headers, _) =
                    exchange(http, Method::GET, &url, &[("cookie", &self.session)], String::new()).await;
                let location = headers.get("location").and_then(|v| v.to_str().ok());
                let Some(location) = location.filter(|_| status == StatusCode::SEE_OTHER) else { return false };
                let code = code_in_location(location);
                self.token(http, &redemption(&code)).await.map(|t| self.keep(&t)).is_some()
            }
            Kind::Refresh => {
                let Some(refresh) = self.refresh.lock().expect("lock").pop() else {
                    return Box::pin(self.one(http, Kind::Code, n)).await;
                };
                let tokens = self.token(http, &[("grant_type", "refresh_token"), ("refresh_token", &refresh)]).await;
                tokens.map(|t| self.keep(&t)).is_some()
            }
        }
    }
}

/// The kind of the `n`th request: the mix, spread evenly.
fn kind(n: u64) -> Kind {
    let mut at = (n.wrapping_mul(37) % 100) as u32;
    for (kind, share) in MIX {
        if at < share {
            return kind;
        }
        at -= share;
    }
    unreachable!("the shares add up to 100")
}

/// Runs `CLIENTS` clients for `length`, each sending its next request at
/// `interval` after the last (none: at once); how many were sent.
async fn drive(soak: &Arc<Soak>, length: Duration, interval: Option<Duration>) -> u64 {
    let start = soak.done.load(Ordering::Relaxed);
    let until = Instant::now() + length;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let soak = soak.clone();
        clients.spawn(async move {
            let http: Http = Client::builder(TokioExecutor::new()).build_http();
            // Spread the paced clients' starts over one interval.
            let mut next = Instant::now() + interval.map_or(Duration::ZERO, |i| i * c as u32 / CLIENTS as u32);
            while Instant::now() < until {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += interval;
                }
                let n = soak.done.fetch_add(1, Ordering::Relaxed);
                let kind = kind(n);
                if !soak.one(&http, kind, n).await {
                    soak.unexpected.fetch_add(1, Ordering::Relaxed);
                    eprintln!("unexpected answer to request {n} ({kind:?})");
                }
            }
        });
    }
    while let Some(ended) = clients.join_next().await {
        ended.expect("a client failed");
    }
    soak.done.load(Ordering::Relaxed) - start
}

/// The resident set (KiB) and open file descriptors of `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc fd").count();
    (rss, fds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_at_80_percent_of_the_maximum_with_flat_memory_and_descriptors() {
    let seconds: u64 =
        std::env::var("PORTCULLIS_SOAK_SECONDS").ok().map_or(30, |s| s.parse().expect("PORTCULLIS_SOAK_SECONDS"));
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = demo_config_for_test(dir.path(), None)
        .replace("max_entries = 100000", "max_entries = 1000")
        .replace("access = true", "access = false");
    assert!(toml.contains("max_entries = 1000\n") && toml.contains("access = false"), "{toml}");
    let config = write_config(dir.path(), "soak.toml", &toml);
    let gw = Served::start(&config, &[]).await;
    approve_as_alice(gw.public).await;
    let (session, _) = sign_in_as_alice(gw.public).await;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let mut soak = Soak {
        public: gw.public,
        session,
        hot: Vec::new(),
        issued: Mutex::new(VecDeque::new()),
        refresh: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
    };
    for _ in 0..10 {
        let tokens = soak.token(&http, &[("grant_type", "client_credentials"), ("scope", "calendar.read")]).await;
        let tokens = tokens.expect("a token");
        soak.keep(&tokens);
        soak.hot.push(tokens["access_token"].as_str().expect("an access token").to_string());
    }
    let code = approve_as_alice(gw.public).await;
    soak.keep(&soak.token(&http, &redemption(&code)).await.expect("a redemption"));
    let soak = Arc::new(soak);

    // The most this machine pushes through: all clients at once.
    let calibration = Duration::from_secs((seconds / 6).clamp(5, 30));
    let sent = drive(&soak, calibration, None).await;
    let maximum = sent as f64 / calibration.as_secs_f64();
    let rate = maximum * 0.8;
    let interval = Duration::from_secs_f64(CLIENTS as f64 / rate);
    eprintln!("maximum {maximum:.0} requests/s; soaking at {rate:.0}/s for {seconds} s");

    // Sampled every 10 s (every third of the run, when shorter) while
    // the load runs, and not as it winds down.
    let (every, length) = (Duration::from_secs(10.min(seconds / 3).max(1)), Duration::from_secs(seconds));
    let pid = gw.child.id();
    let started = Instant::now();
    let sampler = {
        let soak = soak.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            for at in (1..).map(|k| every * k).take_while(|at| *at + Duration::from_millis(500) < length) {
                tokio::time::sleep_until((started + at).into()).await;
                let (rss, fds) = footprint(pid);
                let sent = soak.done.load(Ordering::Relaxed);
                eprintln!("t={:>4}s rss={rss} KiB fds={fds} requests={sent}", at.as_secs());
                samples.push((rss, fds));
            }
            samples
        })
    };
    let before = soak.done.load(Ordering::Relaxed);
    drive(&soak, length, Some(interval)).await;
    let achieved = (soak.done.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    let samples = sampler.await.expect("the sampler");

    let unexpected = soak.unexpected.load(Ordering::Relaxed);
    eprintln!("{achieved:.0} requests/s achieved; {unexpected} unexpected answers");
    assert_eq!(unexpected, 0, "unexpected answers under load");
    // Warm after the first third of the run; flat within 10% of that.
    let warm = samples.len() / 3;
    let (rss0, fds0) = samples[warm];
    for &(rss, fds) in &samples[warm..] {
        assert!(rss.abs_diff(rss0) * 10 <= rss0, "resident memory moved from {rss0} KiB to {rss} KiB: {samples:?}");
        assert!(fds.abs_diff(fds0) * 10 <= fds0, "open descriptors moved from {fds0} to {fds}: {samples:?}");
    }
}

//! A route over several upstream instances: requests are spread over
//! them, an instance that goes away is left out with no request lost, and
//! it is used again once it is back.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{Gateway, Upstream, config_toml, get, send};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An upstream instance that can be killed (its listener and every
/// connection closed at once, as a crashed process's are) and started
/// again on the same port. It answers `instance N`.
struct Instance {
    n: usize,
    addr: SocketAddr,
    tasks: Option<JoinSet<()>>,
    /// What it answers on `/healthz`: 200 or 503.
    healthy: Arc<AtomicBool>,
}

impl Instance {
    async fn start(n: usize) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut instance = Instance { n, addr, tasks: None, healthy: Arc::new(AtomicBool::new(true)) };
        instance.serve(listener);
        instance
    }

    fn serve(&mut self, listener: TcpListener) {
        let (n, healthy) = (self.n, self.healthy.clone());
        let mut tasks = JoinSet::new();
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let held = connections.clone();
        tasks.spawn(async move {
            let _held = held;
            while let Ok((stream, _)) = listener.accept().await {
                let healthy = healthy.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let healthy = healthy.clone();
                    async move {
                        if req.uri().path() == "/healthz" {
                            let mut res = Response::new(Full::new(Bytes::new()));
                            if !healthy.load(Ordering::SeqCst) {
                                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            return Ok::<_, Infallible>(res);
                        }
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let text = format!("instance {n} body={}", String::from_utf8_lossy(&body));
                        Ok(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                connections.lock().unwrap().spawn(async move {
                    let _ = connection.await;
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the listener and every connection.
    async fn kill(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("the port is free again");
        self.serve(listener);
    }
}

fn config(instances: &[&Instance], spare: SocketAddr) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("\"http://{}\"", i.addr)).collect();
    let extra = format!(
        "[[routes]]\nname = \"lb\"\npath_prefix = \"/lb/\"\nupstream = [{}]\nejection_time = \"1s\"\n[routes.scopes]\n\"*\" = [\"calendar.read\"]\n",
        list.join(", ")
    );
    config_toml(spare, &extra)
}

/// Polls `done` (counts the load tasks move) until it holds, failing the
/// test after `deadline`.
async fn wait_until(what: &str, deadline: Duration, done: &dyn Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "{what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which instance answered.
fn instance_of(body: &str) -> usize {
    body.strip_prefix("instance ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(99)
}

#[tokio::test]
async fn a_route_over_three_instances_serves_with_no_error_while_one_is_killed_and_restarted() {
    let mut instances = [Instance::start(0).await, Instance::start(1).await, Instance::start(2).await];
    let spare = Upstream::start().await;
    let gw = Gateway::start(&config(&instances.iter().collect::<Vec<_>>(), spare.addr)).await;
    let token = gw.token("app", "calendar.read").await;
    let auth = format!("Bearer {token}");
    let url = gw.url("/lb/items");

    // Load, from four clients, all through the kill and the restart.
    let running = Arc::new(AtomicBool::new(true));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let seen = Arc::new(std::sync::Mutex::new([0u64; 3]));
    let mut load = JoinSet::new();
    for _ in 0..4 {
        let (running, ok, errors, seen, url, auth) =
            (running.clone(), ok.clone(), errors.clone(), seen.clone(), url.clone(), auth.clone());
        load.spawn(async move {
            while running.load(Ordering::SeqCst) {
                let reply = get(&url, &[("authorization", &auth)]).await;
                if reply.status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::SeqCst);
                    seen.lock().unwrap()[instance_of(&reply.text()).min(2)] += 1;
                } else {
                    errors.lock().unwrap().push(format!("{} {}", reply.status, reply.text()));
                }
            }
        });
    }
    let served = |i: usize| seen.lock().unwrap()[i];
    wait_until("every instance serves", Duration::from_secs(10), &|| (0..3).all(|i| served(i) > 10)).await;

    instances[2].kill().await;
    let before = served(2);
    let killed_at = ok.load(Ordering::SeqCst);
    wait_until("requests go on without instance 2", Duration::from_secs(10), &|| {
        ok.load(Ordering::SeqCst) > killed_at + 200
    })
    .await;
    assert!(served(2) <= before + 4, "the dead instance answered nothing");

    // A request with a body to the dead instance never left: it goes to
    // another one, whole.
    for _ in 0..6 {
        let reply = send(Method::POST, &url, &[("authorization", &auth)], "payload").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(reply.text().ends_with("body=payload"), "{}", reply.text());
    }

    instances[2].restart().await;
    let back = served(2);
    wait_until("instance 2 serves again", Duration::from_secs(15), &|| served(2) > back + 10).await;
    running.store(false, Ordering::SeqCst);
    while load.join_next().await.is_some() {}

    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    let metrics = get(&gw.admin_url("/metrics"), &[]).await.text();
    let series = |name: &str, instance: &Instance| {
        support::counter(&metrics, &format!("{name}{{instance=\"{}\",route=\"lb\"}}", instance.addr))
    };
    assert!(series("portcullis_upstream_ejections_total", &instances[2]) >= 1, "{metrics}");
    assert!(series("portcullis_upstream_failures_total", &instances[2]) >= 3);
    assert_eq!(series("portcullis_upstream_ejections_total", &instances[0]), 0);
    assert!(series("portcullis_upstream_requests_total", &instances[0]) > 10);
    assert!(metrics.contains(&format!(
        "portcullis_upstream_connect_seconds_count{{instance=\"{}\",route=\"lb\"}}",
        instances[1].addr
    )));
    gw.stop().await;
}

/// What the configuration check says of a route `lb` with `lines`.
fn refusal_of(lines: &str) -> String {
    let route = format!("[[routes]]\nname = \"lb\"\npath_prefix = \"/lb/\"\n{lines}\npublic = true\n");
    let toml = config_toml("127.0.0.1:1".parse().unwrap(), &route);
    portcullis::config::Config::parse(&toml, "t.toml", &|_| None).expect_err(lines).to_string()
}

#[tokio::test]
async fn a_list_of_upstreams_must_differ_only_in_their_authority_and_probes_and_resolution_fit() {
    for (list, error) in [
        ("[]", "an empty list"),
        ("[\"http://a:1\", \"https://b:1\"]", "one scheme, one base path"),
        ("[\"http://a:1/x\", \"http://b:1/y\"]", "one scheme, one base path"),
        ("[\"http://a:1\", \"http://a:1\"]", "listed twice"),
        ("[\"http://a:1\", \"static://\"]", "one scheme, one base path"),
    ] {
        let err = refusal_of(&format!("upstream = {list}"));
        assert!(err.contains("upstream") && err.contains(error), "{list}: {err}");
    }
    for (route, error) in [
        ("upstream = \"http://a:1\"\nhealth_path = \"/healthz\"", "several upstream instances"),
        ("upstream = [\"http://a:1\", \"http://b:1\"]\nhealth_path = \"healthz\"", "not a path"),
        ("upstream = [\"http://a:1\", \"http://b:1\"]\nhealth_interval = \"1s\"", "needs health_path"),
    ] {
        let err = refusal_of(route);
        assert!(err.contains("health_") && err.contains(error), "{route}: {err}");
    }
    for (route, error) in [
        ("upstream = \"static://\"\nresolve_interval = \"5s\"", "not static://"),
        ("upstream = [\"http://10.0.0.1:1\", \"http://[::1]:1\"]\nresolve_interval = \"5s\"", "nothing to resolve"),
        ("upstream = \"http://api.internal:1\"\nresolve_interval = \"0s\"", "longer than zero"),
    ] {
        let err = refusal_of(route);
        assert!(err.contains("resolve_interval") && err.contains(error), "{route}: {err}");
    }
    // One name resolved into instances is a balanced route: it may be
    // probed.
    let route = "[[routes]]\nname = \"lb\"\npath_prefix = \"/lb/\"\npublic = true\nupstream = \"http://api.internal:1\"\nresolve_interval = \"5s\"\nhealth_path = \"/healthz\"\n";
    let toml = config_toml("127.0.0.1:1".parse().unwrap(), route);
    let config = portcullis::config::Config::parse(&toml, "t.toml", &|_| None).expect("valid");
    let lb = config.routes.iter().find(|r| r.name == "lb").expect("the route");
    assert_eq!(lb.resolve_interval, Some(std::time::Duration::from_secs(5)));
}

/// With `health_path`, an instance whose probe fails gets no requests,
/// though it would still answer them, until its probe passes again.
#[tokio::test]
async fn an_instance_failing_its_health_check_is_left_out_until_it_passes() {
    let instances = [Instance::start(0).await, Instance::start(1).await, Instance::start(2).await];
    let spare = Upstream::start().await;
    let toml = config(&instances.iter().collect::<Vec<_>>(), spare.addr)
        .replace("ejection_time = \"1s\"\n", "health_path = \"/healthz\"\nhealth_interval = \"100ms\"\n");
    let gw = Gateway::start(&toml).await;
    let token = gw.token("app", "calendar.read").await;
    let auth = format!("Bearer {token}");
    let url = gw.url("/lb/items");
    // Answers, by instance, of `count` requests.
    let spread = |count: usize| {
        let (url, auth) = (url.clone(), auth.clone());
        async move {
            let mut by = [0usize; 3];
            for _ in 0..count {
                let reply = get(&url, &[("authorization", &auth)]).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                by[instance_of(&reply.text()).min(2)] += 1;
            }
            by
        }
    };
    assert!(spread(60).await.iter().all(|&n| n > 0));

    instances[1].healthy.store(false, Ordering::SeqCst);
    let metrics_url = gw.admin_url("/metrics");
    let ejections = format!("portcullis_upstream_ejections_total{{instance=\"{}\",route=\"lb\"}}", instances[1].addr);
    let probed_out = || async { support::counter(&get(&metrics_url, &[]).await.text(), &ejections) == 1 };
    let start = Instant::now();
    while !probed_out().await {
        assert!(start.elapsed() < Duration::from_secs(10), "the failing probe was seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(spread(60).await[1], 0, "the unhealthy instance got requests");

    instances[1].healthy.store(true, Ordering::SeqCst);
    let start = Instant::now();
    while spread(10).await[1] == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the instance came back");
    }
    gw.stop().await;
}

/// An instance that reads each request and hangs up without answering:
/// the request may have reached it. A `GET` (idempotent, no body) goes
/// again to the other instance; a `POST` with a body is not sent twice.
#[tokio::test]
async fn a_request_that_may_have_arrived_is_sent_again_only_when_that_is_safe() {
    let (hangup_addr, _) = support::tcp::serve(|mut stream, _| async move {
        // Read, then dropped: closed with no answer.
        support::tcp::read_head(&mut stream, &mut Vec::new()).await;
    })
    .await;
    let good = Instance::start(0).await;
    let spare = Upstream::start().await;
    let list = format!("[\"http://{hangup_addr}\", \"http://{}\"]", good.addr);
    // Ejection takes 3 failures; a long ejection time would hide the
    // hanging-up instance after them, so each request meets it afresh.
    let extra = format!(
        "[[routes]]\nname = \"lb\"\npath_prefix = \"/lb/\"\nupstream = {list}\nejection_time = \"1ms\"\npublic = true\n"
    );
    let gw = Gateway::start(&config_toml(spare.addr, &extra)).await;
    let url = gw.url("/lb/items");
    for _ in 0..20 {
        let reply = get(&url, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "a GET was not sent again: {}", reply.text());
    }
    let mut refused = 0;
    for _ in 0..20 {
        let reply = send(Method::POST, &url, &[], "once").await;
        match reply.status {
            StatusCode::OK => assert_eq!(reply.text(), "instance 0 body=once"),
            StatusCode::BAD_GATEWAY => refused += 1,
            other => panic!("{other}: {}", reply.text()),
        }
    }
    assert!(refused > 0, "a POST that may have arrived was sent again");
    gw.stop().await;
}

/// A client whose body breaks its framing (a chunk size that is not hex),
/// or breaks off, is answered `400`, and that is no mark against the
/// instance it was going to: six such requests, which would be two
/// instances' three failures each, eject neither (attacking the gateway
/// with smuggler found they did, answering 502).
#[tokio::test]
async fn a_client_whose_body_fails_is_answered_400_and_ejects_no_instance() {
    let (a, b) = (Instance::start(0).await, Instance::start(1).await);
    let spare = Upstream::start().await;
    let extra = format!(
        "[[routes]]\nname = \"lb\"\npath_prefix = \"/lb/\"\nupstream = [\"http://{}\", \"http://{}\"]\npublic = true\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&config_toml(spare.addr, &extra)).await;
    let malformed =
        "POST /lb/a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n";
    for _ in 0..6 {
        let reply = support::parse_raw(&support::raw(gw.public, malformed.as_bytes()).await);
        assert_eq!(reply.status, 400, "{reply:?}");
        assert_eq!(reply.json()["error_description"], "The request body could not be read");
    }
    let metrics = get(&gw.admin_url("/metrics"), &[]).await.text();
    for instance in [&a, &b] {
        let ejections = format!("portcullis_upstream_ejections_total{{instance=\"{}\",route=\"lb\"}}", instance.addr);
        assert_eq!(support::counter(&metrics, &ejections), 0, "{metrics}");
    }
    // Both still take requests (which one a request goes to is the
    // balancer's choice: asked until both have answered, at most 50 times).
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let reply = get(&gw.url("/lb/b"), &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        answered.insert(instance_of(&reply.text()));
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered.len(), 2, "both instances still take requests");
    gw.stop().await;
}

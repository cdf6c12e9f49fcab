//! `server.pin_workers`: which threads end up on which CPUs, read from
//! `/proc/self/task`. One test in a binary of its own, so that no other
//! test's gateway threads are in the process while it looks.
#![cfg(target_os = "linux")]

mod support;

use std::collections::BTreeSet;

use http::StatusCode;
use support::{Gateway, Upstream, send, with_server_line};

/// `0-3,8` → {0, 1, 2, 3, 8}.
fn cpu_list(text: &str) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(from.parse::<usize>().expect("cpu")..=to.parse::<usize>().expect("cpu"));
    }
    cpus
}

/// Every thread of this process: its name and the CPUs it may run on.
fn threads() -> Vec<(String, BTreeSet<usize>)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let status = std::fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_string()
        };
        if !status.is_empty() {
            threads.push((field("Name:"), cpu_list(&field("Cpus_allowed_list:"))));
        }
    }
    threads
}

/// The public workers' CPU sets, sorted (names are `portcullis-worker-N`,
/// cut by the kernel to `portcullis-work`, so which worker is which does
/// not show).
fn worker_cpus() -> Vec<BTreeSet<usize>> {
    let mut cpus: Vec<_> =
        threads().into_iter().filter(|(name, _)| name == "portcullis-work").map(|(_, cpus)| cpus).collect();
    cpus.sort();
    cpus
}

/// Waits for the workers' threads to start and pin themselves (they do
/// so on their own, after `Gateway::start` returns) until their CPU sets
/// are `want`, and fails if that never comes.
async fn assert_workers_on(mut want: Vec<BTreeSet<usize>>) {
    want.sort();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = worker_cpus();
    while seen != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        seen = worker_cpus();
    }
    assert_eq!(seen, want);
}

/// A gateway on a file store (whose connections each have a thread).
async fn start(upstream: &Upstream, workers: usize, pin: &str, store: &std::path::Path) -> Gateway {
    let line = format!("workers = {workers}\npin_workers = \"{pin}\"");
    let toml = with_server_line(upstream.addr, &line, "");
    // A file for each gateway: the one before may still be closing its own.
    let url = format!("sqlite://{}", store.join(format!("{pin}-{workers}.db")).display());
    let on_file = toml.replacen("url = \"sqlite::memory:\"", &format!("url = \"{url}\""), 1);
    assert_ne!(on_file, toml, "the test config's store line is gone");
    Gateway::start(&on_file).await
}

#[tokio::test]
async fn workers_are_pinned_one_cpu_each_only_when_asked_or_when_the_cpus_are_theirs() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path();
    let process = threads().into_iter().next().expect("the main thread").1;
    let allowed: Vec<usize> = process.iter().copied().collect();
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    let single = |cpu: usize| BTreeSet::from([cpu]);

    // `on`: worker i on the i-th allowed CPU, round the set again if need be.
    let gw = start(&upstream, 3, "on", store).await;
    let want: Vec<_> = (0..3).map(|i| single(allowed[i % allowed.len()])).collect();
    assert_workers_on(want).await;
    // The store's connections each have a thread, which takes the CPU set
    // of the thread that opens it: all four are opened at start, before
    // any worker is pinned, and kept.
    let store_threads = threads().into_iter().filter(|(name, _)| name == "sqlx-sqlite-wor").count();
    assert_eq!(store_threads, 4, "the file store's connections are not all open");
    // A password check runs on a blocking thread the worker's runtime
    // starts: it gets every CPU back, not its worker's one.
    let reply = send(
        http::Method::POST,
        &gw.url("/oauth/token"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "grant_type=client_credentials&client_id=app&client_secret=app-secret&scope=calendar.read",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let others: Vec<_> = threads().into_iter().filter(|(name, _)| name != "portcullis-work").collect();
    // `portcullis-blocking`, cut to 15 bytes.
    assert!(others.iter().any(|(name, _)| name == "portcullis-bloc"), "no blocking thread: {others:?}");
    for (name, cpus) in &others {
        assert_eq!(cpus, &process, "{name} was left on fewer CPUs");
    }
    gw.stop().await;
    // Stop ends every worker (its thread ends a moment after it says so).
    assert_workers_on(Vec::new()).await;

    // `off`: never.
    let gw = start(&upstream, allowed.len(), "off", store).await;
    assert_workers_on(vec![process.clone(); allowed.len()]).await;
    gw.stop().await;

    // `auto`: one worker per CPU the process may use, with no quota
    // allowing fewer, is pinned...
    let gw = start(&upstream, allowed.len(), "auto", store).await;
    let pinned = allowed.len() > 1 && usable == allowed.len();
    println!("usable CPUs {usable}, allowed {allowed:?}: auto pins {pinned}");
    let want: Vec<_> =
        if pinned { allowed.iter().map(|&c| single(c)).collect() } else { vec![process.clone(); allowed.len()] };
    assert_workers_on(want).await;
    gw.stop().await;
    // ...and more workers than CPUs are not.
    let gw = start(&upstream, allowed.len() + 1, "auto", store).await;
    assert_workers_on(vec![process.clone(); allowed.len() + 1]).await;
    gw.stop().await;
}

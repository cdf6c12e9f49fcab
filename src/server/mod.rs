//! Listeners and connection lifecycle: binding the public and admin
//! sockets, accepting with a connection limit, serving HTTP/1.1 and HTTP/2
//! with header-read and keep-alive timeouts and size caps, and draining on
//! shutdown (every connection holds a permit of the connection limit, so
//! holding them all back means all have finished).
//!
//! `Server::start` does all the fallible set-up (store, keys, sockets) and
//! returns the bound addresses; `Server::run` serves until the shutdown
//! future resolves, so tests pass their own shutdown and bind port 0.
//!
//! The public listener is served by one worker per core, nginx-style: each
//! worker is a thread with a current-thread runtime, its own `SO_REUSEPORT`
//! socket (the kernel spreads connections across them) and its own upstream
//! connection pool, so a request never leaves the core that accepted it;
//! with `server.pin_workers` each stays on one CPU too (`affinity`). The
//! calling runtime keeps the admin listener, reloads and housekeeping.
//! State that must be shared (validation cache, store, keys, metrics) is
//! behind `Arc`s and lock-free or sharded on the hot path.
//!
//! The only room that wires the others together (start-up, `reload`), and
//! the top of the arrows: nothing imports it. `connection` is one
//! connection's life, `admin` the admin listener, `affinity` CPU pinning,
//! `replicas` what is told to and heard from other replicas, and the
//! signing keys' upkeep.

pub mod admin;
pub mod affinity;
mod connection;
mod reload;
mod replicas;

pub use reload::{ReloadError, Reloader};

use connection::{ConnectionLimit, accept_loop};
use reload::log_notes;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_rustls::TlsAcceptor;

use crate::auth::cache::TokenValidator;
use crate::auth::clock::{Clock, SystemClock};
use crate::auth::tokens::TokenService;
use crate::config::{Config, HostPattern, ServerConfig};
use crate::gateway::{Gateway, Route, RouteTable, Tunnel, Worker};
use crate::oauth::AuthorizationServer;
use crate::oauth::clients::ClientRegistry;
use crate::server::admin::Admin;
use crate::server::affinity::Pinning;
use crate::store::{self, ReplicaFeed, Store};
use crate::telemetry::access;
use crate::telemetry::metrics::Metrics;
use crate::tls::listener::{CertEvents, CertStore};
use crate::web::endpoints::AuthzEndpoints;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keys(#[from] crate::auth::tokens::KeyError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The file is valid on its own, but not with what the store holds.
    #[error("{0}")]
    Conflict(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(
        "cannot listen on {addr} ({what}): another process is listening there (another portcullis serve?), and the two would split its connections"
    )]
    Taken { what: &'static str, addr: SocketAddr },
}

/// A gateway whose sockets are bound and whose state is loaded.
pub struct Server {
    /// One socket per worker, all bound to the same address.
    public: Vec<std::net::TcpListener>,
    admin_listener: std::net::TcpListener,
    /// The gateway in force; a reload swaps in a new one atomically, so a
    /// request sees the old table or the new one, never a mix.
    gateway: Arc<ArcSwap<Gateway>>,
    reloader: Arc<Reloader>,
    admin: Arc<Admin>,
    store: Arc<dyn Store>,
    server_config: ServerConfig,
    tls: Option<Tls>,
    /// This process's claim on a SQLite store, released when it stops.
    _store_lock: Option<store::ServeLock>,
    /// What the other replicas announce (a shared store only), listened
    /// to from `start`, so nothing announced while this one starts is missed.
    replica_feed: Option<Box<dyn ReplicaFeed>>,
    /// How long a health check waits for the store (`storage.acquire_timeout`).
    store_wait: Duration,
}

/// TLS on the public listener: the acceptor, the certificate it serves
/// (for reloads), and the HSTS header every response gets.
#[derive(Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    certs: Arc<CertStore>,
    hsts: Option<HeaderValue>,
}

impl Server {
    /// Binds both listeners, opens the store, and loads (or creates) the
    /// signing key. Nothing is served until `run`.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// `start`, with tokens, codes and sessions minted and checked on
    /// `clock` (a test's `ManualClock`, to expire them without waiting).
    pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Server, StartError> {
        log_notes(&config);
        // The sockets first: a taken port touches no store.
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let public = bind("public", config.server.listen, workers)?;
        let admin_listener = bind("admin", config.admin.listen, 1)?.remove(0);
        let store_lock = store::lock_for_serving(&config.storage.url)?;
        let store = store::open_with(&config.storage.url, crate::oauth::manage::pool_options(&config.storage)).await?;
        let replica_feed = store.replica_feed().await?;
        let metrics = Arc::new(Metrics::new());
        let gateway = Arc::new(ArcSwap::from_pointee(
            build_gateway(&config, config.server.tls.is_some(), &store, &metrics, &clock).await?,
        ));
        let tls = match &config.server.tls {
            None => None,
            Some(t) => {
                let certs = Arc::new(CertStore::open(&t.cert, &t.key, metrics.clone())?);
                let acceptor = TlsAcceptor::from(crate::tls::listener::server_config(certs.clone())?);
                let hsts = t.hsts_max_age.and_then(|age| {
                    HeaderValue::from_str(&format!("max-age={}; includeSubDomains", age.as_secs())).ok()
                });
                Some(Tls { acceptor, certs, hsts })
            }
        };
        let draining = Arc::new(AtomicBool::new(false));
        let reloader = Arc::new(Reloader {
            path: std::sync::Mutex::new(None),
            current: gateway.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            started: config.clone(),
            clock: clock.clone(),
            certs: tls.as_ref().map(|t| t.certs.clone()),
            busy: tokio::sync::Mutex::new(()),
        });
        let admin = Arc::new(Admin {
            metrics,
            store: store.clone(),
            gateway: gateway.clone(),
            reloader: reloader.clone(),
            draining,
        });

        Ok(Server {
            public,
            admin_listener,
            gateway,
            reloader,
            admin,
            store,
            server_config: config.server,
            tls,
            _store_lock: store_lock,
            replica_feed,
            store_wait: config.storage.acquire_timeout,
        })
    }

    /// The file `SIGHUP` and `POST /reload` re-read; without one, reloads
    /// are refused.
    pub fn reload_from(&self, path: std::path::PathBuf) {
        if let Ok(mut p) = self.reloader.path.lock() {
            *p = Some(path);
        }
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public[0].local_addr().expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets
    /// in-flight requests finish (up to `server.drain_timeout`) and returns.
    ///
    /// Every public worker gets a thread of its own (pinned to a CPU when
    /// `server.pin_workers` says so); the admin listener, reloads and the
    /// store's janitor run on the calling runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_until(shutdown, std::future::pending()).await
    }

    /// [`Server::run`], where `hurry` (a second stop signal) cuts the
    /// `shutdown_delay` short.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>, hurry: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // The admin listener outlives the public drain, so `/readyz` can say
        // "draining" to the load balancer while in-flight requests finish.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let cfg = Arc::new(self.server_config);
        let addr = |l: &std::net::TcpListener| l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
        let pinning = Pinning::plan(cfg.pin_workers, self.public.len());
        tracing::info!(
            public = %addr(&self.public[0]),
            admin = %addr(&self.admin_listener),
            workers = self.public.len(),
            pinned = pinning.is_some(),
            "portcullis is serving"
        );

        let limit = ConnectionLimit::new(&cfg);
        let exchanges = upstream_exchanges_per_worker(&cfg, self.public.len());
        let mut workers_done = Vec::new();
        for (i, listener) in self.public.into_iter().enumerate() {
            let (gateway, cfg, stop, tls) = (self.gateway.clone(), cfg.clone(), stop_rx.clone(), self.tls.clone());
            let (limit, pinning) = (limit.clone(), pinning.clone());
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let spawned = std::thread::Builder::new().name(format!("portcullis-worker-{i}")).spawn(move || {
                crate::telemetry::metrics::use_shard(i);
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                // Its threads for blocking work (password hashing, file reads).
                runtime.enable_all().thread_name("portcullis-blocking");
                if let Some(pinning) = pinning {
                    if let Err(e) = pinning.pin_current(i) {
                        tracing::warn!(error = %e, cpu = pinning.cpu(i), "cannot pin a worker to its CPU; it runs free");
                    }
                    // Its blocking threads, which would inherit its one CPU.
                    runtime.on_thread_start(move || {
                        let _ = pinning.unpin_current();
                    });
                }
                match runtime.build() {
                    Ok(rt) => rt.block_on(serve_public(listener, gateway, cfg, stop, tls, limit, exchanges)),
                    Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
                }
                let _ = done_tx.send(());
            });
            match spawned {
                Ok(_) => workers_done.push(done_rx),
                Err(e) => tracing::error!(error = %e, "cannot start a worker thread"),
            }
        }
        let admin = self.admin.clone();
        let admin_cfg = cfg.clone();
        let admin_listener = self.admin_listener;
        let admin_task = tokio::spawn(async move {
            let listener = match TcpListener::from_std(admin_listener) {
                Ok(l) => l,
                Err(e) => return tracing::error!(error = %e, "cannot serve the admin listener"),
            };
            let limit = ConnectionLimit::new(&admin_cfg);
            accept_loop(listener, admin_cfg, admin_stop_rx, None, limit, move |req, _peer| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            })
            .await
        });
        let janitor = tokio::spawn(janitor(self.store.clone(), self.reloader.clock.clone()));
        let metrics = &self.reloader.metrics;
        let follower = self
            .replica_feed
            .take()
            .map(|feed| tokio::spawn(replicas::follow(feed, self.gateway.clone(), metrics.clone())));
        let key_keeper = tokio::spawn(replicas::keep_keys(self.gateway.clone(), metrics.clone()));
        let store_watch = tokio::spawn(watch_store(self.store.clone(), metrics.clone(), self.store_wait));
        let certs = self.tls.as_ref().map(|t| t.certs.clone());
        let cert_watch =
            certs.zip(cfg.tls.as_ref()).map(|(c, t)| tokio::spawn(watch_certificates(c, t.watch_interval)));
        let hangup = tokio::spawn(on_hangup(self.reloader.clone()));

        shutdown.await;
        self.admin.draining.store(true, Ordering::SeqCst);
        if !cfg.shutdown_delay.is_zero() {
            // A load balancer learns of the shutdown from `/readyz` (or
            // from its orchestrator) some time after the signal; until it
            // has, it still sends new connections, and they are served.
            tracing::info!(shutdown_delay = ?cfg.shutdown_delay, "shutting down: /readyz fails now; still accepting until the delay is over (a second signal ends it)");
            tokio::select! {
                _ = tokio::time::sleep(cfg.shutdown_delay) => {}
                _ = hurry => tracing::info!("a second stop signal: the shutdown delay is cut short"),
            }
        }
        tracing::info!(drain_timeout = ?cfg.drain_timeout, "shutting down: no new connections, draining in-flight requests");
        let _ = stop_tx.send(true);
        janitor.abort();
        key_keeper.abort();
        store_watch.abort();
        if let Some(f) = follower {
            f.abort();
        }
        if let Some(w) = cert_watch {
            w.abort();
        }
        hangup.abort();
        for done in workers_done {
            let _ = done.await;
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        tracing::info!("shut down");
    }
}

/// Each worker's share of `server.max_upstream_exchanges`: by default half
/// the file descriptors the process may open, so that clients holding
/// upstream connections open (HTTP/2 streams they never read) cannot leave
/// none for new clients to connect with.
fn upstream_exchanges_per_worker(cfg: &ServerConfig, workers: usize) -> usize {
    let total = cfg.max_upstream_exchanges.unwrap_or_else(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        limit.map_or(usize::MAX, |fds| usize::try_from(fds / 2).unwrap_or(usize::MAX))
    });
    total.div_ceil(workers.max(1)).max(1)
}

/// One public worker: its own socket, its own upstream pool.
async fn serve_public(
    listener: std::net::TcpListener,
    gateway: Arc<ArcSwap<Gateway>>,
    cfg: Arc<ServerConfig>,
    stop: watch::Receiver<bool>,
    tls: Option<Tls>,
    limit: ConnectionLimit,
    exchanges: usize,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "cannot serve the public listener"),
    };
    let worker = Arc::new(Worker::new(exchanges));
    // The log's filter is fixed at start: with access lines filtered out,
    // there is never anything to flush, and no reason to wake 10 times a
    // second.
    let flusher = access::enabled().then(|| {
        tokio::spawn(async {
            let mut every = tokio::time::interval(access::FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                access::flush();
            }
        })
    });
    let gateway = Arc::new(HeldGateway {
        shared: gateway.clone(),
        held: std::sync::Mutex::new(Arc::new(Held(gateway.load_full()))),
    });
    // This worker's own copy, so that cloning it per request counts on
    // this core's cache line (a clone shares its reference count).
    let hsts = tls.as_ref().and_then(|t| t.hsts.as_ref()).and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok());
    accept_loop(listener, cfg, stop, tls.map(|t| t.acceptor), limit, move |mut req: Request<Incoming>, peer| {
        let (gateway, worker, hsts) = (gateway.current(), worker.clone(), hsts.clone());
        // Boxed: hyper moves the future it is handed into place, and a
        // request's future is kilobytes; a box moves as one pointer.
        Box::pin(async move {
            let started = std::time::Instant::now();
            let id = access::request_id(req.headers());
            req.headers_mut().insert(access::X_REQUEST_ID.clone(), id.clone());
            let logged = (gateway.access_log && access::enabled()).then(|| req.method().clone());
            // Only a request that asks to upgrade has extensions here.
            let hold = req.extensions_mut().remove::<connection::Hold>();
            let (mut res, info) = gateway.handle(req, peer, &worker, started).await;
            if let Some(hsts) = hsts {
                res.headers_mut().insert(http::header::STRICT_TRANSPORT_SECURITY, hsts);
            }
            if let (Some(tunnel), Some(hold)) = (Tunnel::take(&mut res), hold) {
                let line = logged.map(|method| (id.clone(), method, res.status(), started));
                run_tunnel(tunnel, hold, line, &info);
            } else if let Some(method) = logged {
                access::log(&id, &method, res.status(), started.elapsed(), &info);
            }
            res.headers_mut().insert(access::X_REQUEST_ID.clone(), id);
            Ok::<_, Infallible>(res)
        })
    })
    .await;
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    access::flush();
}

/// Relays a WebSocket the gateway opened, on this worker, for as long as
/// it lasts: it keeps its connection's place under
/// `server.max_connections` (`hold`), and is closed when the listener
/// drains. Its access line, when there is one to write, is written as it
/// ends, with what it carried.
fn run_tunnel(
    tunnel: Tunnel,
    hold: connection::Hold,
    line: Option<(HeaderValue, http::Method, http::StatusCode, std::time::Instant)>,
    info: &access::AccessInfo<'_>,
) {
    // The line's fields, owned: the tunnel outlives the request.
    let (route, upstream) = (info.route.map(str::to_owned), info.upstream.map(str::to_owned));
    let (path, identity, upstream_time) = (info.path.clone(), info.identity.clone(), info.upstream_time);
    tokio::spawn(async move {
        let summary = tunnel.run(hold.stopped()).await;
        if let Some((id, method, status, started)) = line {
            let tunnel = access::TunnelRecord {
                bytes_from_client: summary.bytes_from_client,
                bytes_to_client: summary.bytes_to_client,
                ended: summary.ended.as_str(),
            };
            let info = access::AccessInfo {
                route: route.as_deref(),
                path,
                upstream: upstream.as_deref(),
                upstream_time,
                identity,
                tunnel: Some(tunnel),
            };
            access::log(&id, &method, status, started.elapsed(), &info);
        }
    });
}

/// The gateway in force, as one worker holds it. A request clones the
/// worker's own `Arc` around the shared gateway, not the shared gateway's:
/// every core incrementing one reference count per request would bounce
/// its cache line between them. A reload is seen at the worker's next
/// request (the old gateway lives until then).
struct HeldGateway {
    shared: Arc<ArcSwap<Gateway>>,
    held: std::sync::Mutex<Arc<Held>>,
}

/// A worker's reference to a gateway.
struct Held(Arc<Gateway>);

impl std::ops::Deref for Held {
    type Target = Gateway;
    fn deref(&self) -> &Gateway {
        &self.0
    }
}

impl HeldGateway {
    fn current(&self) -> Arc<Held> {
        let now = self.shared.load();
        // Only this worker's thread takes the lock.
        let mut held = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !Arc::ptr_eq(&held.0, &now) {
            *held = Arc::new(Held(arc_swap::Guard::into_inner(now)));
        }
        held.clone()
    }
}

/// Reloads the certificate when its files change.
async fn watch_certificates(certs: Arc<CertStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let certs = certs.clone();
        // File reads and PEM parsing off the worker.
        let _ = tokio::task::spawn_blocking(move || certs.reload(false)).await;
    }
}

/// SIGHUP re-reads the configuration and the certificate. (Installing the
/// handler also means SIGHUP never terminates the process.)
async fn on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return tracing::warn!("cannot listen for SIGHUP; reload with POST /reload on the admin listener");
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let _ = reloader.reload().await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
        std::future::pending::<()>().await
    }
}

/// The certificate store's reloads and expiry, as metrics.
impl CertEvents for Metrics {
    fn reloaded(&self, ok: bool) {
        self.tls_reloads.with_label_values(&[if ok { "success" } else { "error" }]).inc();
    }

    fn expires_at(&self, not_after: i64) {
        self.tls_expiry.set(not_after);
    }
}

/// The request-handling state a configuration describes, for a public
/// listener that terminates TLS or not (fixed at start, whatever a
/// reloaded file says).
async fn build_gateway(
    config: &Config,
    listener_tls: bool,
    store: &Arc<dyn Store>,
    metrics: &Arc<Metrics>,
    clock: &Arc<dyn Clock>,
) -> Result<Gateway, StartError> {
    // Clients registered with `portcullis clients add` live in the store,
    // which the file's own check cannot see (RFC 9700 §4.15.1, as there).
    for client in store.list_clients().await? {
        if let Some(user) = config.users.iter().find(|u| crate::config::same_subject(&client.client_id, &u.username)) {
            return Err(StartError::Conflict(format!(
                "user {:?} has the name of the client {:?} registered in the store; a user may not share a client's subject",
                user.username, client.client_id
            )));
        }
    }
    let tokens = Arc::new(TokenService::load(&config.authorization_server, store.clone(), clock.clone()).await?);
    let validator = Arc::new(TokenValidator::new(tokens.clone(), &config.cache, metrics.clone()));
    let clients = Arc::new(ClientRegistry::new(&config.clients, Some(store.clone())));
    let revocations = Arc::new(replicas::CacheEviction {
        validator: validator.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
    });
    let users = config.users.iter().map(|u| u.username.clone());
    let server = AuthorizationServer::new(config.authorization_server.clone(), users, clients, tokens, revocations);
    let authz = AuthzEndpoints::new(config, server, metrics.clone());
    let routes = RouteTable::new(config.routes.iter().map(|r| Route::new(r.clone(), metrics)).collect());
    let mut gateway = Gateway::new(
        config.server.realm.clone(),
        routes,
        authz,
        validator,
        metrics.clone(),
        config.server.trusted_proxies.clone(),
        config.server.form_reader(),
    );
    if listener_tls {
        gateway.forwarded_proto = "https";
    }
    gateway.access_log = config.log.access;
    gateway.allowed_hosts = config.server.allowed_hosts.clone();
    gateway.underscores = config.server.headers_with_underscores;
    let authz = &config.authorization_server;
    gateway.dedicated_host = authz.dedicated_host.then(|| HostPattern::Exact(authz.issuer_host.clone()));
    Ok(gateway)
}

/// Binds `count` sockets to `addr`, sharing it with `SO_REUSEPORT` when
/// there is more than one. With port 0, the first picks the port and the
/// rest join it.
fn bind(what: &'static str, addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if count > 1 && addr.port() != 0 {
        // SO_REUSEPORT lets any process of the same user that sets it too
        // join the port, and the kernel would then split the connections
        // between the two silently. A socket without it cannot bind a port
        // that anyone listens on: bound (not listened on) and let go first,
        // it tells whether the port is this process's alone.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|s| s.set_reuse_address(true).map(|()| s))
            .map_err(|source| StartError::Bind { what, addr, source })?;
        match probe.bind(&addr.into()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(StartError::Taken { what, addr }),
            Err(source) => return Err(StartError::Bind { what, addr, source }),
            Ok(()) => {}
        }
    }
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let at = listeners.first().and_then(|l| l.local_addr().ok()).unwrap_or(addr);
        let err = |source| StartError::Bind { what, addr, source };
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        socket.set_reuse_address(true).map_err(err)?;
        if count > 1 {
            socket.set_reuse_port(true).map_err(err)?;
        }
        socket.set_nonblocking(true).map_err(err)?;
        socket.bind(&at.into()).map_err(err)?;
        socket.listen(1024).map_err(err)?;
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// Asks the store every second whether it answers (within `wait`), and
/// logs and meters each change: a store that goes away is told once, not
/// by every request that fails on it, and so is its return.
async fn watch_store(store: Arc<dyn Store>, metrics: Arc<Metrics>, wait: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down_since: Option<std::time::Instant> = None;
    metrics.store_up.set(1);
    loop {
        tick.tick().await;
        let answered = match tokio::time::timeout(wait, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {wait:?}")),
        };
        match (answered, down_since) {
            (Err(error), None) => {
                tracing::error!(%error, "the store is unreachable: tokens it must check are refused with 503");
                metrics.store_up.set(0);
                metrics.store_transitions.with_label_values(&["down"]).inc();
                down_since = Some(std::time::Instant::now());
            }
            (Ok(()), Some(since)) => {
                tracing::warn!(down_for = ?since.elapsed(), "the store answers again");
                metrics.store_up.set(1);
                metrics.store_transitions.with_label_values(&["up"]).inc();
                down_since = None;
            }
            _ => {}
        }
    }
}

/// Removes expired tokens and revocations now and then (ory/hydra #1574:
/// tables that only grow).
async fn janitor(store: Arc<dyn Store>, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        match store.purge_expired(clock.unix() as i64).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged expired tokens"),
            Err(e) => tracing::warn!(error = %e, "purging expired tokens failed"),
        }
    }
}

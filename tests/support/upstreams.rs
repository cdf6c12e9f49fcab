//! Real upstream servers for differential tests: nginx (Debian's
//! `nginx-light`), a WSGI app on Python's `wsgiref`, a servlet application
//! on Jetty (Debian's `libjetty9-java`) and an Express app on node, each
//! started on loopback ports of its own and stopped when dropped. Every server stands
//! for one gateway route and answers with that route's name and the
//! location *it* acted on, so a test can hold the upstream's reading of a
//! request against the gateway's decision.
//!
//! Outside CI a machine without the server skips (with a note on stderr);
//! with `CI=true` that panics, since `.ci/run` installs them.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NGINX: &str = "/usr/sbin/nginx";
const PYTHON: &str = "python3";

/// How long a server has to come up (a JVM on two busy cores is slow).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `None` (with a note) when `what` is missing outside CI; a panic in CI.
fn missing<T>(what: &str) -> Option<T> {
    let note = format!("differential tests need {what} (.ci/run installs it)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {note}");
    }
    eprintln!("SKIPPED: {note}");
    None
}

/// A child process, killed and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What an upstream said it acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acted {
    /// The route the server stands for: the gateway's choice.
    pub route: String,
    /// The location the server's own routing chose.
    pub location: String,
    /// The path as the server read it (nginx's `$uri`, WSGI's `PATH_INFO`).
    pub path: String,
}

impl Acted {
    /// Parses the first line of an upstream's answer,
    /// `route=R location=L path=P`; `None` for anything else (the
    /// gateway's refusals, or the server's own error pages).
    pub fn parse(body: &str) -> Option<Acted> {
        let line = body.lines().next()?;
        let rest = line.strip_prefix("route=")?;
        let (route, rest) = rest.split_once(" location=")?;
        let (location, path) = rest.split_once(" path=")?;
        Some(Acted { route: route.into(), location: location.into(), path: path.into() })
    }
}

/// nginx with one `server` per route name, each with a `location` per
/// name (`root` is `location /`).
pub struct Nginx {
    /// Each route's server, in the order given.
    pub servers: Vec<(String, SocketAddr)>,
    _process: Process,
    _dir: tempfile::TempDir,
    /// The sockets that hold the servers' ports (see `start`).
    _ports: Vec<socket2::Socket>,
}

impl Nginx {
    /// Starts nginx; `routes` names both its servers and its locations.
    pub async fn start(routes: &[&str]) -> Option<Nginx> {
        if !std::path::Path::new(NGINX).exists() {
            return missing("nginx (Debian package nginx-light)");
        }
        let dir = tempfile::Builder::new().prefix("portcullis-nginx-").tempdir().expect("temp dir");
        // Each port is taken here with SO_REUSEPORT and kept, never
        // listened on: nginx joins it (`reuseport`), the kernel gives only
        // nginx's listening socket the connections, and no other test can
        // be handed the port in between (picking a free port and releasing
        // it races them).
        let mut ports = Vec::new();
        let mut servers = Vec::new();
        for route in routes {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
            socket.set_reuse_port(true).expect("SO_REUSEPORT");
            socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind a port");
            let addr = socket.local_addr().expect("address").as_socket().expect("an IP address");
            servers.push((route.to_string(), addr));
            ports.push(socket);
        }
        let locations: String = routes
            .iter()
            .map(|l| {
                let at = if *l == "root" { "/".to_string() } else { format!("/{l}/") };
                format!("    location {at} {{ return 200 \"route=$route location={l} path=$uri\\n\"; }}\n")
            })
            .collect();
        let server_blocks: String = servers
            .iter()
            .map(|(route, addr)| {
                format!("  server {{\n    listen {addr} reuseport;\n    set $route {route};\n{locations}  }}\n")
            })
            .collect();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  default_type text/plain;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{server_blocks}}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {NGINX}: {e}"));
        let mut process = Process(child);
        // Ready when every server takes connections (until then the port
        // has no listening socket and refuses them).
        let deadline = Instant::now() + READY_TIMEOUT;
        for (_, addr) in &servers {
            loop {
                if let Ok(Some(status)) = process.0.try_wait() {
                    let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                    panic!("nginx exited with {status}; its log:\n{log}");
                }
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    break;
                }
                assert!(Instant::now() < deadline, "nginx did not listen on {addr} in {READY_TIMEOUT:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(Nginx { servers, _process: process, _dir: dir, _ports: ports })
    }

    pub fn addr(&self, route: &str) -> SocketAddr {
        addr_in(&self.servers, route)
    }
}

/// The address of `route`'s server among `servers`.
fn addr_in(servers: &[(String, SocketAddr)], route: &str) -> SocketAddr {
    servers.iter().find(|(r, _)| r == route).map(|(_, a)| *a).expect("a server for the route")
}

/// Runs `command` with the route names as arguments and reads the "route
/// port" lines it prints once it listens, one per route, within
/// [`READY_TIMEOUT`]; `None` (or a panic in CI) when `program` is missing.
async fn spawn_announcing(
    mut command: Command,
    routes: &[&str],
    what: &str,
    program: &str,
) -> Option<(Vec<(String, SocketAddr)>, Process)> {
    let Ok(child) = command.args(routes).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()
    else {
        return missing(program);
    };
    let mut process = Process(child);
    let servers = announced_ports(&mut process.0, routes.len(), what).await;
    Some((servers, process))
}

/// Reads the "route port" lines a server prints once it listens, one per
/// route, within [`READY_TIMEOUT`].
async fn announced_ports(child: &mut Child, count: usize, what: &str) -> Vec<(String, SocketAddr)> {
    let stdout = child.stdout.take().expect("piped stdout");
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().take(count).collect::<Result<Vec<String>, _>>()
    });
    let lines = tokio::time::timeout(READY_TIMEOUT, lines)
        .await
        .unwrap_or_else(|_| panic!("{what} did not come up in {READY_TIMEOUT:?}"))
        .expect("reading its ports")
        .expect("its ports");
    let servers: Vec<(String, SocketAddr)> = lines
        .iter()
        .map(|line| {
            let (route, port) = line.split_once(' ').unwrap_or_else(|| panic!("not `route port`: {line:?}"));
            (route.to_string(), SocketAddr::from(([127, 0, 0, 1], port.parse().expect("a port"))))
        })
        .collect();
    assert_eq!(servers.len(), count, "{what} named {servers:?}");
    servers
}

/// The servlet application of `tests/upstreams/JettyApp.java` on Jetty
/// 9.4, compiled by the test, one connector per route.
pub struct Jetty {
    pub servers: Vec<(String, SocketAddr)>,
    _process: Process,
    _dir: tempfile::TempDir,
}

/// Debian's Jetty 9.4 and the servlet API, as `libjetty9-java` installs them.
const JETTY_JARS: [&str; 7] = [
    "/usr/share/java/jetty9-server.jar",
    "/usr/share/java/jetty9-servlet.jar",
    "/usr/share/java/jetty9-security.jar",
    "/usr/share/java/jetty9-http.jar",
    "/usr/share/java/jetty9-io.jar",
    "/usr/share/java/jetty9-util.jar",
    "/usr/share/java/servlet-api.jar",
];

impl Jetty {
    /// Compiles and starts the app; `routes` names its connectors and
    /// servlets (`root` is the default servlet).
    pub async fn start(routes: &[&str]) -> Option<Jetty> {
        let javac = Command::new("javac").arg("-version").output().is_ok_and(|o| o.status.success());
        if !javac || JETTY_JARS.iter().any(|jar| !std::path::Path::new(jar).exists()) {
            return missing("javac and Jetty 9.4 (Debian packages default-jdk-headless and libjetty9-java)");
        }
        let dir = tempfile::Builder::new().prefix("portcullis-jetty-").tempdir().expect("temp dir");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams/JettyApp.java");
        let classpath = JETTY_JARS.join(":");
        let compiled = Command::new("javac")
            .args(["-cp", &classpath, "-d"])
            .arg(dir.path())
            .arg(&source)
            .output()
            .expect("javac runs");
        assert!(compiled.status.success(), "javac: {}", String::from_utf8_lossy(&compiled.stderr));
        let mut java = Command::new("java");
        java.arg("-cp").arg(format!("{classpath}:{}", dir.path().display())).arg("JettyApp");
        let (servers, process) = spawn_announcing(java, routes, "Jetty", "java").await?;
        Some(Jetty { servers, _process: process, _dir: dir })
    }

    pub fn addr(&self, route: &str) -> SocketAddr {
        addr_in(&self.servers, route)
    }
}

/// The Express app of `tests/upstreams/express_app.js` on node, one server
/// per route.
pub struct Express {
    pub servers: Vec<(String, SocketAddr)>,
    _process: Process,
}

impl Express {
    /// Starts the app; `routes` names its servers and its Express routes
    /// (`root` takes the rest).
    pub async fn start(routes: &[&str]) -> Option<Express> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams");
        if !dir.join("node_modules/express").exists() {
            return missing("node and express (npm ci --prefix tests/upstreams)");
        }
        let mut node = Command::new("node");
        node.arg(dir.join("express_app.js"));
        let (servers, process) = spawn_announcing(node, routes, "the Express app", "node").await?;
        Some(Express { servers, _process: process })
    }

    pub fn addr(&self, route: &str) -> SocketAddr {
        addr_in(&self.servers, route)
    }
}

/// The WSGI app of `tests/upstreams/wsgi_app.py` on `wsgiref`, one server
/// per route.
pub struct Wsgi {
    pub servers: Vec<(String, SocketAddr)>,
    _process: Process,
}

impl Wsgi {
    /// Starts the app; `routes` names its servers and the first path
    /// segments its router knows (`root` is everything else).
    pub async fn start(routes: &[&str]) -> Option<Wsgi> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstreams/wsgi_app.py");
        let mut python = Command::new(PYTHON);
        python.arg(&script);
        let (servers, process) = spawn_announcing(python, routes, "the WSGI app", "python3").await?;
        Some(Wsgi { servers, _process: process })
    }

    pub fn addr(&self, route: &str) -> SocketAddr {
        addr_in(&self.servers, route)
    }
}

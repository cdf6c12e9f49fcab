//! Test harness: a real Portcullis on `127.0.0.1:0` in front of a real
//! upstream (a small hyper echo server), and an HTTP client to drive it.
//! Every test gets its own ports, store and shutdown, so tests never depend
//! on each other or on the order they run in.

#![allow(dead_code)]

pub mod browser;
pub mod ca;
pub mod demo;
pub mod held;
pub mod link;
pub mod netns;
pub mod postgres;
pub mod served;
pub mod tcp;
pub mod upstreams;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::auth::clock::Clock;
use portcullis::config::Config;
use portcullis::server::Server;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Secret of the `app` client ("app-secret").
pub const APP_SECRET_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$JY630gxMHjUwUo/PH7g4ZA$b69xjb6VhafcJlAoNpheoVnQvGqIftr3hG6qJ7iPi6A";
/// Secret of the `other` client ("other-secret").
pub const OTHER_SECRET_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$DDJ+6B13rzB3hrWpaug9KA$8GLM0OZzhoT6Baez03vvpdLBJILakXFMchhHAAKMWjs";

/// [`config_toml`] with `line` added to its `[server]` section.
pub fn with_server_line(upstream: SocketAddr, line: &str, extra: &str) -> String {
    let toml = config_toml(upstream, extra);
    let replaced = toml.replacen("drain_timeout = \"5s\"", &format!("drain_timeout = \"5s\"\n{line}"), 1);
    assert_ne!(replaced, toml, "the [server] anchor line is gone");
    replaced
}

/// The standard test configuration, in front of `upstream`:
/// - client `app` / `app-secret`: scopes `calendar.read calendar.write admin`
/// - client `other` / `other-secret`: scope `calendar.read`
/// - `/calendar/`: GET needs `calendar.read`, `*` needs `calendar.write`
/// - `/admin/`: GET and DELETE only, both need `admin`; query tokens off
/// - `/forward/`: forwards the bearer header; `/public/`: no token needed
/// - `/slow/`: a 300 ms upstream timeout; `/static/`: the built-in demo
pub fn config_toml(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_form_body_bytes = 4096
allowed_hosts = ["gw.example", "app.example", "127.0.0.1", "localhost", "[::1]"]
drain_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[storage]
url = "sqlite::memory:"
[authorization_server]
issuer = "http://127.0.0.1:8080"
access_token_ttl = "15m"
[cache]
ttl = "30s"
max_entries = 1000

[[clients]]
client_id = "app"
client_secret_hash = "{APP_SECRET_HASH}"
scopes = ["calendar.read", "calendar.write", "admin"]
grant_types = ["client_credentials"]

[[clients]]
client_id = "other"
client_secret_hash = "{OTHER_SECRET_HASH}"
scopes = ["calendar.read"]
grant_types = ["client_credentials"]

[[routes]]
name = "calendar"
path_prefix = "/calendar/"
upstream = "http://{upstream}"
[routes.scopes]
GET = ["calendar.read"]
"*" = ["calendar.write"]

[[routes]]
name = "admin"
path_prefix = "/admin/"
upstream = "http://{upstream}"
allow_query_token = false
[routes.scopes]
GET = ["admin"]
DELETE = ["admin"]

[[routes]]
name = "forward"
path_prefix = "/forward/"
upstream = "http://{upstream}"
forward_bearer = true
[routes.scopes]
"*" = []

[[routes]]
name = "public"
path_prefix = "/public/"
upstream = "http://{upstream}"
public = true

[[routes]]
name = "slow"
path_prefix = "/slow/"
upstream = "http://{upstream}"
timeout = "300ms"
public = true

[[routes]]
name = "static"
path_prefix = "/static/"
upstream = "static://"
[routes.scopes]
"*" = ["calendar.read"]
{extra}
"#
    )
}

/// The store × token-format matrix: with `PORTCULLIS_TEST_STORE=postgres`,
/// a gateway the standard configuration puts on an in-memory SQLite
/// database gets a new PostgreSQL database of the test cluster instead;
/// with `PORTCULLIS_TEST_TOKEN_FORMAT=opaque` (or `jwt`), one whose
/// configuration names no token format issues that one. `.ci/run` runs the
/// protocol suites every way. A test that names its own store or format
/// keeps it.
async fn on_the_store_under_test(toml: &str) -> String {
    const IN_MEMORY: &str = "url = \"sqlite::memory:\"";
    let mut toml = toml.to_string();
    if let Ok(format) = std::env::var("PORTCULLIS_TEST_TOKEN_FORMAT")
        && !toml.contains("token_format")
    {
        let section = "[authorization_server]\n";
        assert!(toml.contains(section), "no [authorization_server] section to set the token format in");
        toml = toml.replacen(section, &format!("{section}token_format = \"{format}\"\n"), 1);
    }
    if std::env::var("PORTCULLIS_TEST_STORE").as_deref() != Ok("postgres") || !toml.contains(IN_MEMORY) {
        return toml;
    }
    let url = postgres::database().await.expect("PORTCULLIS_TEST_STORE=postgres needs the test cluster");
    toml.replacen(IN_MEMORY, &format!("url = \"{url}\""), 1)
}

/// `toml` issuing JWTs whatever the matrix says: for a test of what only a
/// JWT has (its header, its claims, its signature).
pub fn issuing_jwts(toml: &str) -> String {
    assert!(!toml.contains("token_format"), "the format is set already");
    let section = "[authorization_server]\n";
    assert!(toml.contains(section), "no [authorization_server] section");
    toml.replacen(section, &format!("{section}token_format = \"jwt\"\n"), 1)
}

/// A running gateway; shut down (and awaited) on `stop`, aborted on drop.
pub struct Gateway {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(toml: &str) -> Gateway {
        let toml = on_the_store_under_test(toml).await;
        let config = Config::parse(&toml, "test.toml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Gateway::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Gateway {
        Gateway::start_server(Server::start(config).await.expect("gateway starts")).await
    }

    /// A gateway whose tokens, codes and sessions live on `clock`, which
    /// the test moves forward instead of sleeping.
    pub async fn start_with_clock(toml: &str, clock: Arc<dyn Clock>) -> Gateway {
        let config = Config::parse(toml, "test.toml", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Gateway::start_server(Server::start_with_clock(config, clock).await.expect("gateway starts")).await
    }

    /// Starts from a config file that `POST /reload` on the admin listener
    /// re-reads.
    pub async fn start_file(path: &std::path::Path) -> Gateway {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::start(config).await.expect("gateway starts");
        server.reload_from(path.to_path_buf());
        Gateway::start_server(server).await
    }

    async fn start_server(server: Server) -> Gateway {
        let (public, admin) = (server.public_addr(), server.admin_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Gateway { public, admin, shutdown: Some(tx), task: Some(task) }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.public)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    /// A `client_credentials` token request for `client` with `secret`,
    /// as a form, whatever it answers.
    pub async fn client_credentials(&self, client: &str, secret: &str) -> Reply {
        client_credentials_at(&self.url("/oauth/token"), client, secret, None).await
    }

    /// The value of `series` (name and labels) on the admin `/metrics`.
    pub async fn counter(&self, series: &str) -> u64 {
        counter(&get(&self.admin_url("/metrics"), &[]).await.text(), series)
    }

    /// A `client_credentials` token for `client` (its secret is
    /// `<client>-secret`) with `scope`.
    pub async fn token(&self, client: &str, scope: &str) -> String {
        let secret = format!("{client}-secret");
        access_token(&client_credentials_at(&self.url("/oauth/token"), client, &secret, Some(scope)).await)
    }
}

/// A `client_credentials` token request to the token endpoint at
/// `token_url` for `client` with `secret` (and `scope`), as a form,
/// whatever it answers.
pub async fn client_credentials_at(token_url: &str, client: &str, secret: &str, scope: Option<&str>) -> Reply {
    let scope = scope.map(|s| format!("&scope={s}")).unwrap_or_default();
    send(
        Method::POST,
        token_url,
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("grant_type=client_credentials&client_id={client}&client_secret={secret}{scope}"),
    )
    .await
}

/// The access token of a successful token response.
pub fn access_token(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "token request failed: {}", reply.text());
    reply.json()["access_token"].as_str().expect("access_token").to_string()
}

/// The `kid` a JWT's header names.
pub fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().expect("a header");
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).expect("base64url");
    serde_json::from_slice::<serde_json::Value>(&header).expect("JSON")["kid"].as_str().expect("kid").to_owned()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Runs `portcullis <args> --config <config>`: its exit code, stdout and
/// stderr.
pub fn cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of one sample (`series`: the name and its labels, exactly) in
/// Prometheus text; 0 when there is none.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ').map(|v| v.trim().parse().expect("a number")))
        .unwrap_or(0)
}

/// What the echo upstream saw.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real upstream on a loopback port. It answers every request with a JSON
/// echo of the request (method, uri, headers, body). Headers drive test
/// behaviour:
/// - `x-test-delay-ms: N`: wait N ms before answering;
/// - `x-test-status: N`: answer with status N.
///
/// Its responses also carry hop-by-hop headers (`Connection: x-upstream-hop`,
/// `x-upstream-hop`, `Keep-Alive`) for the gateway to strip, and
/// `cache-control: public, max-age=60`.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let tx = tx.clone();
                        async move { Ok::<_, Infallible>(echo(req, tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    /// The next request the upstream received.
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("the upstream saw a request")
            .expect("upstream running")
    }

    /// Whether the upstream has received nothing (more).
    pub fn saw_nothing(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Incoming>, tx: tokio::sync::mpsc::UnboundedSender<Seen>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if let Some(ms) = parts.headers.get("x-test-delay-ms").and_then(|v| v.to_str().ok()?.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = parts
        .headers
        .get("x-test-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let _ =
        tx.send(Seen { method: parts.method.to_string(), uri: parts.uri.to_string(), headers: parts.headers, body });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "public, max-age=60")
        .header("connection", "x-upstream-hop")
        .header("x-upstream-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("valid response")
}

/// A response as a client sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ASCII header"))
    }
}

/// Sends one request on a fresh connection and reads the whole response.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    try_send(method, url, headers, body).await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// [`send`], for a test in which the gateway may be gone: why there was
/// no whole answer within 10 s.
pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("valid request");
    let exchange = async {
        let res = client.request(req).await.map_err(|e| format!("the request failed: {e}"))?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| format!("the body broke off: {e}"))?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.map_err(|_| "no answer in 10 s".to_string())?
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// Writes raw bytes to `addr` and reads until the server closes the
/// connection or 5 s pass; returns what was read.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Names lower-cased, in the order they arrived.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Parses the one HTTP/1.x response in `text` (as `support::raw` returns it),
/// decoding a chunked body.
pub fn parse_raw(text: &str) -> RawReply {
    let status = raw_status(text);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut body = String::new();
        let mut rest = rest;
        loop {
            let (size, after) = rest.split_once("\r\n").expect("chunk size line");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        body
    } else {
        rest.to_string()
    };
    RawReply { status, headers, body }
}

/// Sends `head` (request line and header lines, each ending in CRLF, without
/// the blank line) plus `Connection: close`, and parses the answer.
pub async fn raw_request(gw: &Gateway, head: &str, body: &str) -> RawReply {
    let text = raw(gw.public, format!("{head}Connection: close\r\n\r\n{body}").as_bytes()).await;
    parse_raw(&text)
}

/// `GET path` with `Host: gw.example` and the given extra header lines.
pub async fn raw_get(gw: &Gateway, path: &str, extra: &str) -> RawReply {
    raw_request(gw, &format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\n{extra}"), "").await
}

/// The status code of the first response in raw HTTP/1.1 text.
pub fn raw_status(response: &str) -> u16 {
    response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// A loopback address nothing listens on (bound, then released).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

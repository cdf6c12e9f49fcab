//! A tiny W3C WebDriver client that drives Debian's headless Chromium through
//! `chromedriver`, so integration tests can log in and click buttons in a real
//! browser.
//!
//! Each [`Browser`] is its own `chromedriver` on a loopback port it picks with its
//! own Chromium session and empty profile, with a phone's viewport
//! ([`VIEWPORT`], mobile emulation: like a real phone, a page lays out at
//! 412 px only with `<meta name=viewport content="width=device-width">`,
//! else at 980). Dropping it ends the session and kills both processes.
//! Every command and every wait is bounded.
//!
//! Outside CI a machine without `/usr/bin/chromedriver` or `/usr/bin/chromium`
//! makes [`Browser::start`] return `None`, so tests can skip; with `CI=true`
//! it panics instead, so a browser test can never pass by not running.
//! (`.ci/run` installs the Debian packages `chromium` and `chromium-driver`.)
//!
//! Navigating to a server that refuses connections (a client's `redirect_uri`
//! on a dead port, after a click or a redirect) leaves Chromium on its error
//! page, but [`Browser::current_url`] still reports the URL it tried, so a
//! test can read an authorization `code` out of it with
//! [`Browser::wait_for_url`]. (`goto` such a URL itself returns an error,
//! [`Error::is_net_error`], and leaves the browser there just the same.)

#![allow(dead_code)]

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's flags: headless as root, and silent on the network (without
/// the background-networking flags it calls out to Google and those
/// connections are refused here).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The phone-sized viewport, CSS pixels (a Pixel 7's); `--window-size` too.
pub const VIEWPORT: (u32, u32) = (412, 915);
/// How long `chromedriver` may take to answer `/status` as ready.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long creating a session (starting Chromium) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Chromium's page-load timeout, in ms: `goto` and navigating clicks fail
/// after it.
const PAGE_LOAD_TIMEOUT_MS: u64 = 15_000;
/// The bound on one WebDriver command, above the page-load timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The interval of every polling wait.
const POLL: Duration = Duration::from_millis(50);
/// The W3C key of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver command that failed: the error code chromedriver answered
/// (`"no such element"`, `"timeout"`, ...) or `"harness"` for a transport
/// failure or a bounded wait that ran out.
#[derive(Debug, Clone)]
pub struct Error {
    pub command: String,
    pub error: String,
    pub message: String,
}

impl Error {
    fn harness(command: &str, message: impl Into<String>) -> Error {
        Error { command: command.to_string(), error: "harness".to_string(), message: message.into() }
    }

    pub fn is_no_such_element(&self) -> bool {
        self.error == "no such element"
    }

    /// Whether a navigation failed at the network level, e.g.
    /// `net::ERR_CONNECTION_REFUSED` from `goto` to a dead port.
    pub fn is_net_error(&self) -> bool {
        self.message.contains("net::ERR_")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first_line = self.message.lines().next().unwrap_or("");
        write!(f, "WebDriver {}: {}: {}", self.command, self.error, first_line)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// One headless Chromium session behind its own `chromedriver`.
pub struct Browser {
    http: Client<HttpConnector, Full<Bytes>>,
    /// `http://127.0.0.1:<port>/session/<id>`
    session_url: String,
    session_id: String,
    port: u16,
    // Dropped in this order after `Drop::drop` deleted the session: the
    // processes first, then the profile they used.
    driver: Driver,
    _profile: TempDir,
}

/// The `chromedriver` process; killed (with Chromium, if it outlived the
/// session) when dropped.
struct Driver {
    child: Child,
    browser_pid: Option<u32>,
}

impl Browser {
    /// Starts `chromedriver` and a Chromium session. `None` (with a note on
    /// stderr) when the machine lacks the browser, outside CI only: with
    /// `CI=true` that panics. Panics too when the browser is installed but
    /// fails to start.
    pub async fn start() -> Option<Browser> {
        let missing: Vec<&str> =
            [CHROMEDRIVER, CHROMIUM].into_iter().filter(|p| !std::path::Path::new(p).exists()).collect();
        if !missing.is_empty() {
            let note = format!(
                "browser tests need {} (Debian packages `chromium` and `chromium-driver`; .ci/run installs them)",
                missing.join(" and ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and {note}");
            }
            eprintln!("SKIPPED: {note}");
            return None;
        }
        let started = Instant::now();
        let profile = tempfile::Builder::new().prefix("portcullis-chromium-").tempdir().expect("profile dir");
        // `--port=0`: chromedriver binds a port the kernel picks and names it
        // on stdout. (Picking a free port here and passing it on races the
        // other tests binding `127.0.0.1:0` in between, and lost in CI.)
        let log = profile.path().join("chromedriver.log");
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut driver = Driver { child, browser_pid: None };
        let (port_tx, mut port_rx) = tokio::sync::oneshot::channel::<u16>();
        std::thread::spawn(move || announced_port(stdout, port_tx));
        let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

        // Ready when it names its port and /status says so; bounded, and
        // failing early if the driver exits.
        let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
        let mut port = None;
        loop {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!("chromedriver exited with {status} before it was ready; log:\n{}", log_tail(&log));
            }
            if port.is_none() {
                port = port_rx.try_recv().ok();
            }
            if let Some(port) = port {
                let status = format!("http://127.0.0.1:{port}/status");
                let ready = request(&http, Method::GET, &status, None, Duration::from_secs(1))
                    .await
                    .is_ok_and(|(_, v)| v["value"]["ready"] == json!(true));
                if ready {
                    break;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver (port {port:?}) not ready after {DRIVER_READY_TIMEOUT:?}; log:\n{}",
                    log_tail(&log)
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let port = port.expect("the loop breaks only with a port");
        let base = format!("http://127.0.0.1:{port}");

        let driver_ready = started.elapsed();

        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().join("profile").display()));
        args.push(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "implicit": 0, "pageLoad": PAGE_LOAD_TIMEOUT_MS, "script": 10_000 },
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": args,
                        // Desktop Chromium keeps a window at least 500 px
                        // wide: emulate the phone's viewport as well.
                        "mobileEmulation": { "deviceMetrics": {
                            "width": VIEWPORT.0, "height": VIEWPORT.1, "pixelRatio": 1.0
                        } },
                    },
                }
            }
        });
        let created = request(&http, Method::POST, &format!("{base}/session"), Some(capabilities), SESSION_TIMEOUT)
            .await
            .map_err(|e| Error::harness("new session", e))
            .and_then(|(status, v)| check("new session", status, v));
        let value = match created {
            Ok(value) => value,
            Err(e) => panic!("cannot start Chromium: {e}\n{}\nchromedriver log:\n{}", e.message, log_tail(&log)),
        };
        let session_id = value["sessionId"].as_str().expect("sessionId").to_string();
        driver.browser_pid = value["capabilities"]["goog:processID"].as_u64().map(|p| p as u32);
        eprintln!(
            "browser: chromedriver on :{port} ready in {} ms, Chromium session in {} ms more",
            driver_ready.as_millis(),
            (started.elapsed() - driver_ready).as_millis()
        );
        Some(Browser {
            http,
            session_url: format!("{base}/session/{session_id}"),
            session_id,
            port,
            driver,
            _profile: profile,
        })
    }

    /// The pid of `chromedriver`.
    pub fn driver_pid(&self) -> u32 {
        self.driver.child.id()
    }

    /// The pid of the Chromium browser process, as chromedriver reported it.
    pub fn browser_pid(&self) -> Option<u32> {
        self.driver.browser_pid
    }

    /// Sends one command of this session; `path` is relative to
    /// `/session/<id>` ("" for the session itself).
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let name = format!("{method} {}", if path.is_empty() { "/" } else { path });
        let (status, v) = request(&self.http, method, &format!("{}{path}", self.session_url), body, COMMAND_TIMEOUT)
            .await
            .map_err(|e| Error::harness(&name, e))?;
        check(&name, status, v)
    }

    /// Navigates to `url` and waits for the page to load (bounded by the
    /// page-load timeout). A refused connection is an error
    /// ([`Error::is_net_error`], `net::ERR_CONNECTION_REFUSED`), but the
    /// browser stays usable on Chromium's error page and `current_url` is
    /// `url`. (A click or redirect that lands on a refused URL is no error.)
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command(Method::POST, "/url", Some(json!({ "url": url }))).await.map(drop)
    }

    /// The URL of the page; after a failed navigation, the URL that failed.
    pub async fn current_url(&self) -> Result<String> {
        as_string("current url", self.command(Method::GET, "/url", None).await?)
    }

    pub async fn title(&self) -> Result<String> {
        as_string("title", self.command(Method::GET, "/title", None).await?)
    }

    /// The serialised DOM of the page.
    pub async fn page_source(&self) -> Result<String> {
        as_string("page source", self.command(Method::GET, "/source", None).await?)
    }

    /// The first element matching the CSS `selector`; an error
    /// ([`Error::is_no_such_element`]) when there is none. Does not wait.
    pub async fn find_css(&self, selector: &str) -> Result<Element<'_>> {
        let v =
            self.command(Method::POST, "/element", Some(json!({ "using": "css selector", "value": selector }))).await;
        let v = v.map_err(|mut e| {
            e.command = format!("find_css({selector:?})");
            e
        })?;
        Ok(Element { browser: self, id: element_id(&v)? })
    }

    /// Every element matching the CSS `selector`, in document order.
    pub async fn find_all_css(&self, selector: &str) -> Result<Vec<Element<'_>>> {
        let v = self
            .command(Method::POST, "/elements", Some(json!({ "using": "css selector", "value": selector })))
            .await?;
        let list = v.as_array().ok_or_else(|| Error::harness("find_all_css", format!("not a list: {v}")))?;
        list.iter().map(|e| Ok(Element { browser: self, id: element_id(e)? })).collect()
    }

    /// Polls (every 50 ms, at most `timeout`) until an element matches.
    pub async fn wait_for_css(&self, selector: &str, timeout: Duration) -> Result<Element<'_>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find_css(selector).await {
                Err(e) if e.is_no_such_element() && Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) if e.is_no_such_element() => {
                    let url = self.current_url().await.unwrap_or_default();
                    return Err(Error::harness(
                        &format!("wait_for_css({selector:?})"),
                        format!("no element after {timeout:?} on {url}"),
                    ));
                }
                other => return other,
            }
        }
    }

    /// Polls `current_url` (every 50 ms, at most `timeout`) until `predicate`
    /// holds, e.g. after a click that submits a form and redirects; returns
    /// that URL.
    pub async fn wait_for_url(&self, predicate: impl Fn(&str) -> bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.current_url().await?;
            if predicate(&url) {
                return Ok(url);
            }
            if Instant::now() >= deadline {
                return Err(Error::harness("wait_for_url", format!("still on {url} after {timeout:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.command(Method::POST, "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>> {
        let b64 = as_string("screenshot", self.command(Method::GET, "/screenshot", None).await?)?;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| Error::harness("screenshot", format!("bad base64: {e}")))
    }

    /// Saves a screenshot as a test artifact,
    /// `target/browser-screenshots/<name>.png` under the crate root, and
    /// returns its path. `name` is a file name: letters, digits, `-`, `_`, `.`.
    pub async fn save_screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.screenshot_png().await?;
        let safe = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !safe {
            return Err(Error::harness("save_screenshot", format!("not a plain file name: {name:?}")));
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("browser-screenshots");
        let path = dir.join(format!("{name}.png"));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, &png))
            .map_err(|e| Error::harness("save_screenshot", format!("{}: {e}", path.display())))?;
        Ok(path)
    }
}

impl Drop for Browser {
    /// Deletes the session (Chromium quits) with a blocking request, so it
    /// works in any context, then `Driver` kills chromedriver.
    fn drop(&mut self) {
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            self.session_id, self.port
        );
        let deleted = (|| -> std::io::Result<bool> {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_write_timeout(Some(Duration::from_secs(2)))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            // chromedriver answers once Chromium has quit, and may keep the
            // connection open: the status line is all we wait for.
            let mut reply = Vec::new();
            let mut chunk = [0u8; 512];
            while !reply.contains(&b'\n') {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&chunk[..n]);
            }
            Ok(reply.starts_with(b"HTTP/1.1 200"))
        })();
        if !matches!(deleted, Ok(true)) {
            eprintln!("browser: deleting the WebDriver session failed ({deleted:?}); killing Chromium");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium normally quit with the session; if it did not, it is
        // still chromedriver's child (checked, against pid reuse): end it.
        if let Some(pid) = self.browser_pid
            && let Some(ppid) = live_parent(pid)
            && ppid == self.child.id()
        {
            signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while live_parent(pid).is_some() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if live_parent(pid) == Some(self.child.id()) {
                signal(pid, "KILL");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An element of the page, valid until the page changes.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Element<'_> {
    async fn command(&self, method: Method, what: &str, body: Option<Value>) -> Result<Value> {
        self.browser.command(method, &format!("/element/{}{what}", self.id), body).await
    }

    /// Types `text` into the element (focusing it first).
    pub async fn send_keys(&self, text: &str) -> Result<()> {
        self.command(Method::POST, "/value", Some(json!({ "text": text }))).await.map(drop)
    }

    /// Clears an input or textarea.
    pub async fn clear(&self) -> Result<()> {
        self.command(Method::POST, "/clear", Some(json!({}))).await.map(drop)
    }

    /// Clicks the element's centre, as a user would (fails if something
    /// covers it). A click that submits a form returns once the next page
    /// has loaded or failed to; see [`Browser::wait_for_url`].
    pub async fn click(&self) -> Result<()> {
        self.command(Method::POST, "/click", Some(json!({}))).await.map(drop)
    }

    /// The rendered, visible text.
    pub async fn text(&self) -> Result<String> {
        as_string("element text", self.command(Method::GET, "/text", None).await?)
    }

    /// The HTML attribute `name` as written in the markup (`None` if absent).
    /// `name` goes into the URL path as is: use plain attribute names.
    pub async fn attribute(&self, name: &str) -> Result<Option<String>> {
        let v = self.command(Method::GET, &format!("/attribute/{name}"), None).await?;
        Ok(v.as_str().map(str::to_string))
    }

    /// The DOM property `name` (e.g. `value` of an input as typed, `checked`).
    pub async fn property(&self, name: &str) -> Result<Value> {
        self.command(Method::GET, &format!("/property/{name}"), None).await
    }

    pub async fn tag_name(&self) -> Result<String> {
        as_string("tag name", self.command(Method::GET, "/name", None).await?)
    }

    pub async fn is_displayed(&self) -> Result<bool> {
        let v = self.command(Method::GET, "/displayed", None).await?;
        v.as_bool().ok_or_else(|| Error::harness("is_displayed", format!("not a bool: {v}")))
    }
}

/// One HTTP request to chromedriver, bounded by `timeout`; the status and
/// the JSON body.
async fn request(
    http: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    body: Option<Value>,
    timeout: Duration,
) -> std::result::Result<(StatusCode, Value), String> {
    let mut req = Request::builder().method(method).uri(url);
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json; charset=utf-8");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let exchange = async {
        let res = http.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let bytes = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let json = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{status}, not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))?;
        Ok((status, json))
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer in {timeout:?}"))?
}

/// The `value` of a WebDriver reply, or its error.
fn check(command: &str, status: StatusCode, mut v: Value) -> Result<Value> {
    let value = v["value"].take();
    match value.get("error").and_then(Value::as_str) {
        Some(error) => Err(Error {
            command: command.to_string(),
            error: error.to_string(),
            message: value["message"].as_str().unwrap_or_default().to_string(),
        }),
        None if !status.is_success() => Err(Error::harness(command, format!("{status}: {value}"))),
        None => Ok(value),
    }
}

fn as_string(command: &str, v: Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(Error::harness(command, format!("not a string: {other}"))),
    }
}

fn element_id(v: &Value) -> Result<String> {
    v[ELEMENT_KEY]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::harness("find element", format!("not an element reference: {v}")))
}

/// Reads chromedriver's stdout: sends the port of its "ChromeDriver was
/// started successfully on port N." line, then drains the rest so the driver
/// never blocks on a full pipe.
fn announced_port(stdout: std::process::ChildStdout, port: tokio::sync::oneshot::Sender<u16>) {
    use std::io::BufRead as _;
    let mut port = Some(port);
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        let announced = line
            .strip_prefix("ChromeDriver was started successfully on port ")
            .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok());
        if let Some(n) = announced
            && let Some(tx) = port.take()
        {
            let _ = tx.send(n);
        }
    }
}

/// The parent pid of `pid` if it is alive (not a zombie).
fn live_parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Sends `SIGNAL` to one process by pid (std has no `kill(2)`).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn log_tail(path: &std::path::Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

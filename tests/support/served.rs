//! A `portcullis serve` child process: the real binary, started as a user
//! would start it (or under `unshare`, `sh -c 'ulimit …'`, a preloaded
//! library), with its stderr collected line by line, its listeners read
//! from its "serving" line and its health awaited.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// How long a child gets to start, answer or exit.
pub const BOUND: Duration = Duration::from_secs(10);

pub struct Served {
    pub child: std::process::Child,
    pub lines: mpsc::UnboundedReceiver<String>,
    pub log: Arc<Mutex<String>>,
    pub reader: Option<std::thread::JoinHandle<()>>,
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

impl Served {
    /// Starts `serve --config config` and waits (bounded) until it reports
    /// its listeners and answers `/healthz`.
    pub async fn start(config: &Path, envs: &[(&str, &str)]) -> Served {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("serve").arg("--config").arg(config);
        Served::start_command(cmd, envs).await
    }

    /// [`Served::start`] in a process that may open `fds` file descriptors
    /// at most (`ulimit -n`, by the shell that then becomes it).
    pub async fn start_with_fd_limit(config: &Path, fds: u32) -> Served {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!("ulimit -n {fds} && exec \"$0\" serve --config \"$1\"")).arg(BIN).arg(config);
        Served::start_command(cmd, &[]).await
    }

    /// [`Served::start`] in a mount namespace of its own, where
    /// `/etc/hosts` is `hosts` (bind-mounted: the test rewrites it in
    /// place). `None` where namespaces cannot be made, outside CI.
    pub async fn start_with_hosts(config: &Path, hosts: &Path) -> Option<Served> {
        let probe = std::process::Command::new("unshare").args(["--mount", "true"]).output();
        if !probe.is_ok_and(|o| o.status.success()) {
            let note = "resolution tests need `unshare --mount` (root, util-linux)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and {note}");
            eprintln!("SKIPPED: {note}");
            return None;
        }
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/hosts && exec \"$0\" serve --config \"$2\"")
            .arg(BIN)
            .arg(hosts)
            .arg(config);
        Some(Served::start_command(cmd, &[]).await)
    }

    pub async fn start_command(mut cmd: std::process::Command, envs: &[(&str, &str)]) -> Served {
        cmd.env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let reader = std::thread::spawn({
            let log = log.clone();
            move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut all = log.lock().expect("log lock");
                    all.push_str(&line);
                    all.push('\n');
                    drop(all);
                    let _ = tx.send(line);
                }
            }
        });
        let mut served = Served {
            child,
            lines,
            log,
            reader: Some(reader),
            public: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let line = served.wait_for_line("portcullis is serving").await;
        served.public = field_addr(&line, "public");
        served.admin = field_addr(&line, "admin");
        wait_healthy(served.admin, &served.log).await;
        served
    }

    /// Waits (bounded) for a stderr line containing `needle`.
    pub async fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => continue,
                Ok(None) => panic!(
                    "serve ended its stderr before logging {needle:?} (exit: {:?}):\n{}",
                    self.child.try_wait(),
                    self.log()
                ),
                Err(_) => panic!("no {needle:?} log line within {BOUND:?}:\n{}", self.log()),
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Polls every 50 ms until the process exits (bounded); panics if it
    /// does not.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit within {BOUND:?} of SIGTERM:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process wrote to stderr, once it has exited.
    pub async fn full_log(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + BOUND;
            while !reader.is_finished() {
                assert!(Instant::now() < deadline, "stderr never reached EOF");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            reader.join().expect("stderr reader");
        }
        self.log()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Only when a test failed midway: do not leave the gateway behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The socket address logged for `key` in the "portcullis is serving" line,
/// in either log format (`public=Some(127.0.0.1:1)` in text, possibly with
/// ANSI colours; `"public":"Some(127.0.0.1:1)"` in JSON) or without the
/// `Some(..)`.
pub fn field_addr(line: &str, key: &str) -> SocketAddr {
    let at = line.find(key).unwrap_or_else(|| panic!("no {key:?} in the serving line: {line:?}"));
    let rest = &line[at + key.len()..];
    let is_addr_char = |c: char| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']');
    for (i, c) in rest.char_indices() {
        if c.is_ascii_digit() || c == '[' {
            let candidate: String = rest[i..].chars().take_while(|c| is_addr_char(*c)).collect();
            if let Ok(addr) = candidate.parse::<SocketAddr>() {
                return addr;
            }
        }
    }
    panic!("no {key} address in the serving line: {line:?}")
}

/// One raw HTTP/1.1 exchange on a fresh connection; `None` when the
/// connection fails or no complete answer arrives within 2 s.
pub async fn try_raw(addr: SocketAddr, request: &str) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}

/// Polls the admin `/healthz` every 50 ms until it answers 200 (bounded).
pub async fn wait_healthy(admin: SocketAddr, log: &Mutex<String>) {
    let deadline = Instant::now() + BOUND;
    loop {
        let reply = try_raw(admin, "GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await;
        if reply.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz on {admin} never answered 200:\n{}",
            log.lock().expect("log lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until a TCP connect to `addr` is refused (bounded); panics if the
/// listener keeps accepting.
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + BOUND;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(Instant::now() < deadline, "{addr} still accepts connections {BOUND:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

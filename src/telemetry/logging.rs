//! Structured logs through `tracing`: human-readable text by default, one
//! JSON object per line with `[log] format = "json"`. `RUST_LOG` overrides
//! the configured level. Tokens and secrets are never passed to a log call.
//!
//! The audit log (`crate::telemetry::audit`) is a second layer with a destination of
//! its own (`[log] audit`): always JSON, never filtered by the level, and
//! kept out of the main log so each is read whole by whoever reads it.
//!
//! Lines are handed to background threads that write them ([`LogWriter`]),
//! so request handling never blocks on the terminal, a pipe or a disk; the
//! threads apply backpressure rather than drop lines when they fall far
//! behind, and write what has queued up in one go.

use std::io::{IsTerminal as _, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{AuditSink, LogConfig, LogFormat};
use crate::telemetry::audit;

/// How much may wait for a log thread before writers wait for it
/// (backpressure rather than lost lines).
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// A log destination written by a thread of its own: a write appends to
/// what is pending and wakes the thread only if it sleeps; the thread
/// takes everything pending at once and writes it in one go. Unlike a
/// channel per line, a busy gateway costs it no wake-up per line, and it
/// never spins waiting for the next one.
#[derive(Clone)]
pub struct LogWriter(Arc<Shared>);

struct Shared {
    state: Mutex<Pending>,
    /// Wakes the thread (something to write, or closing).
    work: Condvar,
    /// Wakes writers waiting for room.
    room: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    sleeping: bool,
    /// Writers waiting for room.
    waiting: usize,
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, Pending> {
        // Appending bytes leaves nothing half-done that matters.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LogWriter {
    /// Starts the thread that writes to `sink`; it ends when the guard is
    /// dropped, after writing what is pending.
    fn start(name: &str, mut sink: impl Write + Send + 'static) -> (LogWriter, LogGuard) {
        let shared =
            Arc::new(Shared { state: Mutex::new(Pending::default()), work: Condvar::new(), room: Condvar::new() });
        let inner = shared.clone();
        let thread = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            let mut batch = Vec::new();
            loop {
                let (closed, waiting) = {
                    let mut state = inner.state();
                    while state.bytes.is_empty() && !state.closed {
                        state.sleeping = true;
                        state = inner.work.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    state.sleeping = false;
                    std::mem::swap(&mut batch, &mut state.bytes);
                    (state.closed, state.waiting)
                };
                if waiting > 0 {
                    inner.room.notify_all();
                }
                let _ = sink.write_all(&batch).and_then(|()| sink.flush());
                batch.clear();
                if closed && inner.state().bytes.is_empty() {
                    return;
                }
            }
        });
        let writer = LogWriter(shared);
        (writer.clone(), LogGuard { writer, thread: thread.ok() })
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.state();
        while state.bytes.len() > MAX_PENDING && !state.closed {
            state.waiting += 1;
            state = self.0.room.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            state.waiting -= 1;
        }
        state.bytes.extend_from_slice(buf);
        if state.sleeping {
            state.sleeping = false;
            self.0.work.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

/// Ends a log thread, after it has written what is pending.
pub struct LogGuard {
    writer: LogWriter,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.writer.0.state().closed = true;
        self.writer.0.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Keep this alive until exit: dropping it writes what is queued.
pub struct LogGuards(#[allow(dead_code)] Vec<LogGuard>);

/// The configured level, with rustls's own warnings kept to errors unless
/// the level names rustls: it warns about what clients send (an IP
/// address as SNI, from wrk and some load balancers' probes), once per
/// handshake, which would let any client fill the log. Handshakes that
/// fail are logged by the gateway itself.
fn directives(level: &str) -> String {
    if level.contains("rustls") { level.to_string() } else { format!("{level},rustls=error") }
}

/// Opens the audit file for appending, readable by its owner only (it
/// names users and clients).
fn open_audit_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)
}

/// Why the logs could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the audit log {} (log.audit): {source}", path.display())]
    AuditFile { path: std::path::PathBuf, source: std::io::Error },
}

/// Installs the global subscriber (a second call is a no-op). Fails only
/// when the audit file cannot be opened. Without `main_log`, only the
/// audit log is written: the store-changing commands use that, so what
/// they change is audited while their output stays what they print.
pub fn init(config: &LogConfig, main_log: bool) -> Result<LogGuards, LogError> {
    // The audit target is kept out of the main log by the level filter
    // itself, not by a filter closure beside it: a closure cannot say ahead
    // of time which call sites it refuses, so every `trace!` in every
    // dependency would be evaluated on every call, on the request path.
    let audit_off = format!("{}=off", audit::TARGET).parse().expect("a valid directive");
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(directives(&config.level)))
        .add_directive(audit_off);
    let (stderr, stderr_guard) = LogWriter::start("portcullis-log", std::io::stderr());
    let mut guards = vec![stderr_guard];

    let main = tracing_subscriber::fmt::layer().with_writer(stderr.clone()).with_ansi(std::io::stderr().is_terminal());
    let main = match config.format {
        LogFormat::Json => main.json().flatten_event(true).with_current_span(false).boxed(),
        LogFormat::Text => main.boxed(),
    };
    let main = main_log.then(|| main.with_filter(filter));
    if main_log {
        // Access lines are written by `crate::telemetry::access` itself, to the same
        // writer, after the same level check.
        crate::telemetry::access::set_sink(stderr.clone(), config.format);
    }

    let audit_writer = match &config.audit {
        AuditSink::Off => None,
        AuditSink::Stderr => Some(stderr),
        AuditSink::File(path) => {
            let file = open_audit_file(path).map_err(|source| LogError::AuditFile { path: path.clone(), source })?;
            let (writer, guard) = LogWriter::start("portcullis-audit", file);
            guards.push(guard);
            Some(writer)
        }
    };
    let audit = audit_writer.map(|writer| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_ansi(false)
            .with_writer(writer)
            // INFO: the level of audit events and of their `oauth` span, so
            // the hint of the most verbose layer stays INFO and `debug!` and
            // `trace!` call sites are skipped by one comparison.
            .with_filter(Targets::new().with_target(audit::TARGET, tracing::Level::INFO))
    });
    let _ = tracing_subscriber::registry().with(main).with(audit).try_init();
    Ok(LogGuards(guards))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_warnings_are_quieted_unless_asked_for() {
        assert_eq!(directives("info"), "info,rustls=error");
        assert_eq!(directives("info,rustls=debug"), "info,rustls=debug");
        for level in ["warn", "info,portcullis=debug"] {
            let _ = EnvFilter::try_new(directives(level)).expect("a valid filter");
        }
    }

    /// A sink that keeps what it is given, and counts its writes.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut kept = self.0.lock().unwrap();
            kept.0.extend_from_slice(buf);
            kept.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_and_the_guard_writes_what_is_pending() {
        let kept = Kept::default();
        let (writer, guard) = LogWriter::start("test-log", kept.clone());
        std::thread::scope(|s| {
            for t in 0..4 {
                let mut writer = writer.clone();
                s.spawn(move || {
                    for i in 0..2500 {
                        writer.write_all(format!("thread {t} line {i}\n").as_bytes()).unwrap();
                    }
                });
            }
        });
        drop(guard);
        let (bytes, _) = kept.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000, "none lost");
        for t in 0..4 {
            let own: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with(&format!("thread {t} "))).collect();
            let expected: Vec<String> = (0..2500).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(own, expected, "thread {t}'s lines, whole and in order");
        }
    }

    /// A sink whose first write waits until it is let go.
    struct Gated {
        kept: Kept,
        entered: std::sync::mpsc::Sender<()>,
        release: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(release) = self.release.take() {
                self.entered.send(()).unwrap();
                release.recv().unwrap();
            }
            self.kept.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A writer whose thread has taken a first line and is stuck writing
    /// it until `release` is sent to.
    fn stuck_writer() -> (Kept, LogWriter, LogGuard, std::sync::mpsc::Sender<()>) {
        let kept = Kept::default();
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let gated = Gated { kept: kept.clone(), entered: entered_tx, release: Some(release_rx) };
        let (mut writer, guard) = LogWriter::start("test-log", gated);
        writer.write_all(b"first\n").unwrap();
        entered.recv().unwrap();
        (kept, writer, guard, release)
    }

    #[test]
    fn a_writer_waits_for_room_rather_than_lose_lines() {
        let (kept, mut writer, guard, release) = stuck_writer();
        // The log thread is stuck in its sink: fill past the bound.
        let chunk = vec![b'x'; MAX_PENDING / 2 + 1];
        writer.write_all(&chunk).unwrap();
        writer.write_all(&chunk).unwrap();
        let mut blocked = writer.clone();
        let third = std::thread::spawn(move || blocked.write_all(b"third\n").unwrap());
        while writer.0.state().waiting == 0 {
            std::thread::yield_now();
        }
        assert!(!third.is_finished(), "waiting for room");
        release.send(()).unwrap();
        third.join().unwrap();
        drop(guard);
        let (bytes, _) = kept.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), 6 + 2 * chunk.len() + 6, "nothing lost");
        assert!(bytes.ends_with(b"third\n"));
    }

    #[test]
    fn what_queues_up_during_a_write_goes_out_in_one() {
        let (kept, mut writer, guard, release) = stuck_writer();
        for i in 0..100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        release.send(()).unwrap();
        drop(guard);
        let (bytes, writes) = kept.0.lock().unwrap().clone();
        assert_eq!(writes, 2, "the first line, then the hundred queued behind it");
        assert_eq!(String::from_utf8(bytes).unwrap().lines().count(), 101);
    }
}

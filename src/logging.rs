//! Structured logs through `tracing`: human-readable text by default, one
//! JSON object per line with `[log] format = "json"`. `RUST_LOG` overrides
//! the configured level. Tokens and secrets are never passed to a log call.
//!
//! The audit log (`crate::audit`) is a second layer with a destination of
//! its own (`[log] audit`): always JSON, never filtered by the level, and
//! kept out of the main log so each is read whole by whoever reads it.
//!
//! Lines are handed to background threads that write them, so request
//! handling never blocks on the terminal, a pipe or a disk; the threads
//! apply backpressure rather than drop lines when they fall far behind,
//! and write what has queued up in one go.

use std::io::IsTerminal as _;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::audit;
use crate::config::{AuditSink, LogConfig, LogFormat};

/// Keep this alive until exit: dropping it flushes what is queued.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

/// A writer that hands lines to a thread of its own, which writes them to
/// `sink` through a buffer: whatever queued up while it wrote goes out in
/// one write(2), and the buffer is flushed whenever the queue runs dry.
fn background(name: &str, sink: impl std::io::Write + Send + 'static) -> (NonBlocking, WorkerGuard) {
    let sink = std::io::BufWriter::with_capacity(64 * 1024, sink);
    NonBlockingBuilder::default().lossy(false).thread_name(name).finish(sink)
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

/// Installs the global subscriber (a second call is a no-op). Fails only
/// when the audit file cannot be opened. Without `main_log`, only the
/// audit log is written: the store-changing commands use that, so what
/// they change is audited while their output stays what they print.
pub fn init(config: &LogConfig, main_log: bool) -> Result<LogGuards, String> {
    // The audit target is kept out of the main log by the level filter
    // itself, not by a filter closure beside it: a closure cannot say ahead
    // of time which call sites it refuses, so every `trace!` in every
    // dependency would be evaluated on every call, on the request path.
    let audit_off = format!("{}=off", audit::TARGET).parse().expect("a valid directive");
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level)).add_directive(audit_off);
    let (stderr, stderr_guard) = background("portcullis-log", std::io::stderr());
    let mut guards = vec![stderr_guard];

    let main = tracing_subscriber::fmt::layer().with_writer(stderr.clone()).with_ansi(std::io::stderr().is_terminal());
    let main = match config.format {
        LogFormat::Json => main.json().flatten_event(true).with_current_span(false).boxed(),
        LogFormat::Text => main.boxed(),
    };
    let main = main_log.then(|| main.with_filter(filter));
    if main_log {
        // Access lines are written by `crate::access` itself, to the same
        // writer, after the same level check.
        crate::access::set_sink(stderr.clone(), config.format);
    }

    let audit_writer = match &config.audit {
        AuditSink::Off => None,
        AuditSink::Stderr => Some(stderr),
        AuditSink::File(path) => {
            let file = open_audit_file(path)
                .map_err(|e| format!("cannot open the audit log {} (log.audit): {e}", path.display()))?;
            let (writer, guard) = background("portcullis-audit", file);
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

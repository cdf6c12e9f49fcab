//! Structured logs through `tracing`: human-readable text by default, one
//! JSON object per line with `[log] format = "json"`. `RUST_LOG` overrides
//! the configured level. Tokens and secrets are never passed to a log call.
//!
//! Lines are handed to a background thread that writes stderr, so request
//! handling never blocks on the terminal or a pipe; the thread applies
//! backpressure rather than drop lines when it falls far behind.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (a second call is a no-op). Keep the
/// returned guard alive until exit: dropping it flushes what is queued.
pub fn init(config: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

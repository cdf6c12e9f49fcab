//! Reloading the configuration while serving (SIGHUP, `POST /reload`,
//! `portcullis reload`): the file is read and validated again, a new
//! gateway is built beside the one in force and swapped in atomically, so
//! a request sees the old routes or the new ones, never a mix. What only a
//! restart can change is reported, not applied.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{StartError, build_gateway};
use crate::auth::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::store::Store;
use crate::telemetry::metrics::Metrics;
use crate::tls::listener::CertStore;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this gateway has no config file to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file is valid, but the gateway it describes could not be built.
    #[error(transparent)]
    Build(#[from] StartError),
}

/// Everything a configuration change can replace while serving: routes,
/// clients, users, token and cache settings. Listeners, the store and TLS
/// files are fixed at start; changing them is reported as needing a
/// restart.
pub struct Reloader {
    pub(super) path: std::sync::Mutex<Option<std::path::PathBuf>>,
    pub(super) current: Arc<ArcSwap<Gateway>>,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) started: Config,
    pub(super) clock: Arc<dyn Clock>,
    /// The listener's certificate, re-read at every reload too.
    pub(super) certs: Option<Arc<CertStore>>,
    /// One reload at a time.
    pub(super) busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Re-reads and validates the file, then swaps the new gateway in.
    /// An invalid file changes nothing; the error lists why. The TLS
    /// certificate is re-read as well, whatever became of the file (its
    /// outcome is logged and counted on its own).
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _one = self.busy.lock().await;
        let result = self.try_reload().await;
        let label = if result.is_ok() { "success" } else { "error" };
        self.metrics.config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => tracing::error!(error = %e, "configuration reload failed; nothing changed"),
        }
        if let Some(certs) = self.certs.clone() {
            let _ = tokio::task::spawn_blocking(move || certs.reload(true)).await;
        }
        result
    }

    async fn try_reload(&self) -> Result<(), ReloadError> {
        let path = self.path.lock().ok().and_then(|p| p.clone()).ok_or(ReloadError::NoFile)?;
        let config = Config::load(&path)?;
        let old = &self.started;
        for (what, changed) in [
            ("server.listen", config.server.listen != old.server.listen),
            ("admin.listen", config.admin.listen != old.admin.listen),
            ("server.workers", config.server.workers != old.server.workers),
            ("server.pin_workers", config.server.pin_workers != old.server.pin_workers),
            // The connection settings live with the listeners.
            ("server.header_read_timeout", config.server.header_read_timeout != old.server.header_read_timeout),
            ("server.keep_alive_timeout", config.server.keep_alive_timeout != old.server.keep_alive_timeout),
            ("server.max_header_bytes", config.server.max_header_bytes != old.server.max_header_bytes),
            ("server.max_connections", config.server.max_connections != old.server.max_connections),
            ("server.stream_idle_timeout", config.server.stream_idle_timeout != old.server.stream_idle_timeout),
            (
                "server.http2_max_concurrent_streams",
                config.server.http2_max_concurrent_streams != old.server.http2_max_concurrent_streams,
            ),
            (
                "server.max_upstream_exchanges",
                config.server.max_upstream_exchanges != old.server.max_upstream_exchanges,
            ),
            (
                "server.max_upstream_exchanges_per_connection",
                config.server.max_upstream_exchanges_per_connection != old.server.max_upstream_exchanges_per_connection,
            ),
            ("server.drain_timeout", config.server.drain_timeout != old.server.drain_timeout),
            ("server.shutdown_delay", config.server.shutdown_delay != old.server.shutdown_delay),
            ("storage.url", config.storage.url != old.storage.url),
            // The listener's TLS, HSTS header and file watch are set up
            // with it; so is what upstreams are told of the client's
            // scheme (`X-Forwarded-Proto`), which follows the listener.
            (
                "server.tls",
                config.server.tls.as_ref().map(|t| (&t.cert, &t.key, t.hsts_max_age, t.watch_interval))
                    != old.server.tls.as_ref().map(|t| (&t.cert, &t.key, t.hsts_max_age, t.watch_interval)),
            ),
        ] {
            if changed {
                tracing::warn!(field = what, "changed in the config file; this takes a restart to apply");
            }
        }
        log_notes(&config);
        let listener_tls = self.started.server.tls.is_some();
        let gateway = build_gateway(&config, listener_tls, &self.store, &self.metrics, &self.clock).await?;
        let previous = self.current.load_full();
        previous.validator.hand_over_to(&gateway.validator);
        self.current.store(Arc::new(gateway));
        // Users the new file no longer has: what they were granted ends on
        // every replica (this one tells the others), not when it expires.
        let server = self.current.load().authz.server().clone();
        for removed in previous.authz.server().users().filter(|u| !server.is_user(u)) {
            match server.forget_user(removed).await {
                Ok(grants) => {
                    tracing::info!(user = removed, grants, "user removed: their grants are revoked and sessions ended")
                }
                Err(e) => {
                    tracing::error!(error = %e, user = removed, "user removed, but their grants could not be revoked; they are refused meanwhile")
                }
            }
        }
        Ok(())
    }
}

/// What a valid configuration still deserves a word about, at every start
/// and reload.
pub(super) fn log_notes(config: &Config) {
    for note in config.route_notes() {
        tracing::info!(%note, "overlapping routes");
    }
    for warning in config.warnings() {
        tracing::warn!(%warning, "unsafe setting");
    }
}

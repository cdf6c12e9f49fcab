//! What operators and SREs read: Prometheus metrics (`metrics`), the main
//! log and its set-up (`logging`), request ids and the access log
//! (`access`), and the audit log of security events (`audit`).
//!
//! Every other room may record here; this room imports only `config` (for
//! the log settings) and `http` (the metered body type). It never holds a
//! token or a secret: callers pass what may be written.

pub mod access;
pub mod audit;
pub mod logging;
pub mod metrics;

//! Certificates and rustls configurations: the listener's certificate and
//! key, read from PEM files and reloaded without a restart (`listener`),
//! and the trust the gateway places in `https://` upstreams (`upstream`).
//!
//! Reading certificate files is this room's job alone; `config` calls it
//! to refuse a missing or mismatched pair before anything binds. It imports
//! no other room: what a reload did is told to whoever asks
//! (`listener::CertEvents`), not written to metrics from here.

pub mod listener;
pub mod upstream;

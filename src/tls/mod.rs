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

use std::path::PathBuf;

/// Why certificate material cannot be used. Every message names the file,
/// and is what the operator reads (`check`, start-up, reload).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// `what`: "certificate chain" (the listener's) or "certificate file"
    /// (an upstream's CAs).
    #[error("{} is not a PEM {what}: {reason}", path.display())]
    NotPem { path: PathBuf, what: &'static str, reason: String },
    #[error("{} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read a PEM private key from {}: {reason}", path.display())]
    NoPrivateKey { path: PathBuf, reason: String },
    #[error("{} does not fit the certificate in {}: {reason}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf, reason: String },
    #[error("{} holds a certificate that cannot be a CA: {reason}", path.display())]
    NotACa { path: PathBuf, reason: String },
    /// `why`: the first error the system's store gave, in parentheses.
    #[error(
        "the system has no CA certificates to verify an https upstream with{why}; install them (Debian: ca-certificates) or set this route's ca"
    )]
    NoSystemRoots { why: String },
    /// rustls refused the protocol versions (not with the ring provider).
    #[error("{0}")]
    Rustls(String),
}

impl TlsError {
    /// Which of a listener's two files is at fault: `"key"` or `"cert"`.
    pub fn file(&self) -> &'static str {
        match self {
            TlsError::NoPrivateKey { .. } | TlsError::KeyMismatch { .. } => "key",
            _ => "cert",
        }
    }
}

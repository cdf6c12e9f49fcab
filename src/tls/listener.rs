//! TLS termination with rustls: TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`,
//! and certificates that reload without a restart.
//!
//! The certificate lives behind an `ArcSwap` that the resolver reads on
//! every handshake, so a reload changes what new handshakes get and leaves
//! connections in flight alone. A reload that fails (unreadable file, bad
//! PEM, key not matching the certificate) keeps the old certificate and
//! says why in the log and in `portcullis_tls_reload_total{result="error"}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::TlsError;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key and checks that they
/// belong together. The error names which file is wrong and why.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Unreadable { path: cert.to_path_buf(), reason: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem { path: cert.to_path_buf(), what: "certificate chain", reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::NoPrivateKey { path: key.to_path_buf(), reason: e.to_string() })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| TlsError::KeyMismatch {
        key: key.to_path_buf(),
        cert: cert.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Who hears what the certificate store does: the metrics, wired by
/// `server` (this room writes to no metric itself).
pub trait CertEvents: Send + Sync {
    /// A reload was tried, and worked or not.
    fn reloaded(&self, ok: bool);
    /// The certificate now in use expires at `not_after` (Unix seconds).
    fn expires_at(&self, not_after: i64);
}

/// The current certificate, swapped atomically on reload.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// Modification times and lengths of the files last loaded (or tried).
    loaded: Mutex<(Stamp, Stamp)>,
    events: Arc<dyn CertEvents>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.cert_path).finish()
    }
}

/// What tells a file's versions apart: its modification time, and its
/// length, since a time can be coarser than the write that follows a
/// truncation (`cat new.pem > cert.pem` read between the two looks
/// unchanged afterwards by time alone).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    std::fs::metadata(p).and_then(|m| Ok((m.modified()?, m.len()))).ok()
}

impl CertStore {
    pub fn open(cert: &Path, key: &Path, events: Arc<dyn CertEvents>) -> Result<CertStore, TlsError> {
        let loaded = (stamp(cert), stamp(key));
        let certified = load_certified_key(cert, key)?;
        let store = CertStore {
            current: ArcSwap::from_pointee(certified),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            loaded: Mutex::new(loaded),
            events,
        };
        store.publish_expiry();
        Ok(store)
    }

    /// Reloads when either file changed since the last load (or always,
    /// with `force`, as on SIGHUP). Returns whether a new certificate is in
    /// use.
    pub fn reload(&self, force: bool) -> bool {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        let Ok(mut loaded) = self.loaded.lock() else { return false };
        if !force && *loaded == now {
            return false;
        }
        // Remember the attempt either way: a broken file is reported once,
        // not on every poll, and retried when it changes again.
        *loaded = now;
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(certified) => {
                self.current.store(Arc::new(certified));
                self.events.reloaded(true);
                self.publish_expiry();
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(reason) => {
                self.events.reloaded(false);
                tracing::error!(%reason, "TLS certificate reload failed; keeping the current certificate");
                false
            }
        }
    }

    fn publish_expiry(&self) {
        let current = self.current.load();
        if let Some(not_after) = current.cert.first().and_then(|c| not_after(c.as_ref())) {
            self.events.expires_at(not_after);
        }
    }

    /// The end-entity certificate in use (DER).
    pub fn current_certificate(&self) -> Vec<u8> {
        self.current.load().cert.first().map(|c| c.as_ref().to_vec()).unwrap_or_default()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls configuration of the public listener.
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// --- notAfter, for the expiry gauge ---------------------------------------
// A certificate's validity is at a fixed place in its DER (RFC 5280 §4.1):
// Certificate > TBSCertificate > [version] serial signature issuer validity.

/// One DER element at the start of `der`: (tag, contents, rest).
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| acc << 8 | usize::from(*b)), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's notAfter as Unix seconds.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der_element(cert)?;
    let (_, tbs, _) = der_element(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der_element(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        rest = der_element(rest)?.2; // serial, signature, issuer
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, after_not_before) = der_element(validity).map(|(_, _, r)| ((), r))?;
    let (tag, time, _) = der_element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if digits.len() == 12 => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        0x18 if digits.len() == 14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2).and_then(|s| s.parse::<i64>().ok());
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 23), 20_780);
    }

    #[test]
    fn not_after_of_generated_certificates() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 6, 15);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(days_from_civil(2031, 6, 15) * 86_400));
        params.not_after = rcgen::date_time_ymd(2051, 1, 2);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(days_from_civil(2051, 1, 2) * 86_400));
        assert_eq!(not_after(b"garbage"), None);
    }

    /// Nobody listening, as in a test of the store alone.
    struct Unheard;

    impl CertEvents for Unheard {
        fn reloaded(&self, _: bool) {}
        fn expires_at(&self, _: i64) {}
    }

    /// `cat new.pem > cert.pem`, polled between the truncation and the
    /// write: the failed attempt is remembered, and the complete file,
    /// though its time is the same, is loaded at the next poll.
    #[test]
    fn a_file_rewritten_within_one_time_tick_is_loaded_after_a_failed_poll() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let pair = |host: &str| {
            let params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            (params.self_signed(&key).unwrap(), key)
        };
        let (first, first_key) = pair("first.example");
        std::fs::write(&cert, first.pem()).unwrap();
        std::fs::write(&key, first_key.serialize_pem()).unwrap();
        let store = CertStore::open(&cert, &key, Arc::new(Unheard)).unwrap();
        let when = std::fs::metadata(&cert).unwrap().modified().unwrap();
        let set_time =
            |path: &Path| std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();

        let (second, second_key) = pair("second.example");
        std::fs::write(&key, second_key.serialize_pem()).unwrap();
        std::fs::write(&cert, "").unwrap();
        set_time(&key);
        set_time(&cert);
        assert!(!store.reload(false), "half a rotation is refused");
        assert!(!store.reload(false), "and not tried again while nothing changes");
        assert_eq!(store.current_certificate(), first.der().to_vec());

        std::fs::write(&cert, second.pem()).unwrap();
        set_time(&cert);
        assert!(store.reload(false), "the finished file is noticed by its length");
        assert_eq!(store.current_certificate(), second.der().to_vec());
    }
}

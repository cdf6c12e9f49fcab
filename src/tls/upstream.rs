//! TLS towards `https://` upstreams: which certificates the gateway trusts,
//! built once per configuration into a rustls `ClientConfig`.
//!
//! An upstream is verified against the system's CA store by default, or
//! against only the CAs of a route's `ca` file: chain, validity dates and
//! host name (SNI and the certificate's SAN), as a browser would. An
//! expired, self-signed or wrong-host certificate fails the handshake, and
//! the request gets `502`. `tls_skip_verify` turns verification off for
//! one route; it exists for a staging upstream with a throwaway
//! certificate, and every start and reload says so in the log.
//!
//! Each distinct trust setting gets one `ClientConfig`, so routes that
//! trust the same CAs share its TLS session cache (resumption), and a
//! route that skips verification never shares pooled connections with one
//! that does not (the proxy pools per `ClientConfig`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::TlsError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How an `https://` upstream's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// The system's CA store (`/etc/ssl/certs` and friends).
    System,
    /// Only the CAs in this PEM file.
    Ca(PathBuf),
    /// Nothing is checked (`tls_skip_verify = true`).
    SkipVerify,
}

/// The TLS settings of one `https://` route.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub trust: Trust,
    /// Shared by every route with the same `trust`. It offers no ALPN
    /// protocol, so the upstream speaks HTTP/1.1: what a WebSocket
    /// handshake needs, and what an upstream known not to speak HTTP/2 is
    /// reached with.
    pub client: Arc<ClientConfig>,
    /// The same trust, offering `h2` and `http/1.1` in ALPN: how the
    /// gateway learns whether an upstream speaks HTTP/2 (RFC 9113 §3.2),
    /// and how it reaches one that does. It shares `client`'s session
    /// cache.
    pub client_h2: Arc<ClientConfig>,
}

impl UpstreamTls {
    pub fn new(trust: Trust) -> Result<UpstreamTls, TlsError> {
        let client = client_config(&trust)?;
        let mut h2 = (*client).clone();
        h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(UpstreamTls { trust, client, client_h2: Arc::new(h2) })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's CA certificates, read once per process: the files do not
/// change under a running gateway often enough to re-read them per reload,
/// and reading them costs milliseconds.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, TlsError>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(TlsError::NoSystemRoots { why });
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// The CAs of a PEM file; an unreadable file or one without a usable CA
/// certificate is an error naming the file.
fn file_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem { path: path.to_path_buf(), what: "certificate file", reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_path_buf() });
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::NotACa { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// Builds the client configuration for `trust`: TLS 1.2 and 1.3, ring, and
/// rustls's default in-memory session cache for resumption.
pub fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let config = match trust {
        Trust::System => builder.with_root_certificates(system_roots()?).with_no_client_auth(),
        Trust::Ca(path) => builder.with_root_certificates(file_roots(path)?).with_no_client_auth(),
        Trust::SkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `tls_skip_verify`: accepts any certificate for any name. The handshake
/// signatures are still checked, so the peer must at least hold the key of
/// the certificate it shows; that proves nothing about who it is.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        assert!(client_config(&Trust::Ca(missing)).unwrap_err().to_string().contains("cannot read"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(client_config(&Trust::Ca(empty)).unwrap_err().to_string().contains("holds no certificate"));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()]).unwrap().self_signed(&key).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert.pem()).unwrap();
        assert!(client_config(&Trust::Ca(good)).is_ok());
        assert!(client_config(&Trust::SkipVerify).is_ok());
    }
}

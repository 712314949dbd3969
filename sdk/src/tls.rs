//! Which server certificates the client trusts.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::ClientError;

/// How the client decides to trust the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's root store (for a certificate from a public CA).
    SystemRoots,
    /// The platform's own certificate verifier (rustls-platform-verifier): the Android and
    /// Apple trust stores and policies (user-installed CAs, revocation) on phones, the system
    /// roots with WebPKI elsewhere. What a mobile app should use. On Android the app must
    /// initialise it once from Java/Kotlin (see docs/architecture.md).
    Platform,
    /// CA certificates (or a self-signed server certificate) in the PEM file at this path.
    CaFile(String),
    /// Exactly this server certificate (PEM or DER file at this path), whatever its name or
    /// dates: for development against a node's self-signed `dev-cert.pem`.
    Pinned(String),
}

impl Trust {
    /// [`Trust::Pinned`] from a path.
    pub fn pinned(path: impl AsRef<Path>) -> Trust {
        Trust::Pinned(path.as_ref().display().to_string())
    }

    /// [`Trust::CaFile`] from a path.
    pub fn ca_file(path: impl AsRef<Path>) -> Trust {
        Trust::CaFile(path.as_ref().display().to_string())
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let bytes = std::fs::read(path).map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?;
    if bytes.starts_with(b"-----") {
        rustls_pemfile::certs(&mut &bytes[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))
    } else {
        Ok(vec![CertificateDer::from(bytes)])
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration: TLS 1.3, ALPN `tether/1`.
pub fn client_crypto(trust: &Trust) -> Result<rustls::ClientConfig, ClientError> {
    let mut cfg = crypto(trust, &[&rustls::version::TLS13])?;
    cfg.alpn_protocols = vec![tether_proto::ALPN.to_vec()];
    Ok(cfg)
}

/// The rustls configuration for `https://` registries: the same trust as for the nodes, TLS 1.2
/// or 1.3, no ALPN (the HTTP connector sets it).
pub(crate) fn http_crypto(trust: &Trust) -> Result<rustls::ClientConfig, ClientError> {
    crypto(trust, &[&rustls::version::TLS13, &rustls::version::TLS12])
}

/// A rustls configuration that trusts no server: for an HTTP client that only ever speaks plain
/// `http://` (it needs some configuration, and the trust store may be unavailable).
pub(crate) fn http_crypto_trusting_nothing() -> Result<rustls::ClientConfig, ClientError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

fn crypto(
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ClientConfig, ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let cfg = match trust {
        Trust::Platform => {
            let verifier = rustls_platform_verifier::Verifier::new(provider())
                .map_err(|e| ClientError::Tls(format!("platform verifier: {e}")))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        Trust::SystemRoots => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(ClientError::Tls("no system root certificates found".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(p) => {
            let p = Path::new(p);
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(p)? {
                roots.add(c).map_err(|e| ClientError::Tls(format!("{}: {e}", p.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(p) => {
            let p = Path::new(p);
            let pinned = read_certs(p)?
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::Tls(format!("{}: no certificate", p.display())))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert { cert: pinned, provider: provider() }))
                .with_no_client_auth()
        }
    };
    Ok(cfg)
}

/// Accepts exactly one certificate, byte for byte, and checks the handshake signature with it.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("server certificate does not match the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

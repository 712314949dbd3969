//! TLS material for the QUIC listener: a configured certificate, or a self-signed dev one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// TLS setup failure.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Reading or writing a PEM file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The PEM file holds no certificate or no key.
    #[error("{0}: no certificate or private key found")]
    Empty(PathBuf),
    /// Generating the dev certificate failed.
    #[error("dev certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the crypto configuration.
    #[error("quic crypto: {0}")]
    Quic(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

/// Loads a PEM certificate chain and private key.
pub fn load_pem(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read(cert)?[..])
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Io { path: cert.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(cert.to_owned()));
    }
    let key_der = rustls_pemfile::private_key(&mut &read(key)?[..])
        .map_err(|source| TlsError::Io { path: key.to_owned(), source })?
        .ok_or_else(|| TlsError::Empty(key.to_owned()))?;
    Ok((certs, key_der))
}

/// Paths of the dev certificate and key in a data dir.
pub fn dev_cert_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("dev-cert.pem"), data_dir.join("dev-key.pem"))
}

/// Returns the dev certificate of `data_dir`, creating it for `names` (plus localhost and
/// 127.0.0.1) if it does not exist yet.
pub fn ensure_dev_cert(data_dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let (cert, key) = dev_cert_paths(data_dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    all.extend(names.iter().cloned());
    let ck = rcgen::generate_simple_self_signed(all)?;
    let write =
        |p: &Path, s: String| std::fs::write(p, s).map_err(|source| TlsError::Io { path: p.to_owned(), source });
    write(&cert, ck.cert.pem())?;
    write(&key, ck.signing_key.serialize_pem())?;
    tracing::warn!(cert = %cert.display(), "no TLS certificate configured: wrote a self-signed dev certificate; clients must pin or trust it");
    Ok((cert, key))
}

/// The quinn crypto config: TLS 1.3 only, ALPN `tether/1`, ring provider.
pub fn quic_server_crypto(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![tether_proto::ALPN.to_vec()];
    // No session tickets: resumption buys nothing for one long-lived connection per device,
    // and each ticket costs the server memory and CPU.
    tls.send_tls13_tickets = 0;
    let q = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(Arc::new(q))
}

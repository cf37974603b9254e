//! TLS for the QUIC shipper: the agent verifies the processor against the project CA and
//! presents its own certificate (mutual TLS). There is no way to turn verification off.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("invalid CA certificate in {path}: {source}")]
    BadCa { path: String, source: rustls::Error },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |source| TlsError::Pem {
        what,
        path: path.display().to_string(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Build the QUIC client configuration from PEM files.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    idle_timeout: std::time::Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca, "CA certificate")? {
        roots.add(c).map_err(|source| TlsError::BadCa {
            path: ca.display().to_string(),
            source,
        })?;
    }
    let chain = certs(cert, "agent certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        what: "agent private key",
        path: key.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![sluice_protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(idle_timeout / 5));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle_timeout) {
        transport.max_idle_timeout(Some(idle));
    }
    // Batches are megabytes; give the stream and connection windows room for a full window.
    transport.stream_receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(256 * 1024 * 1024));
    transport.send_window(256 * 1024 * 1024);
    client.transport_config(Arc::new(transport));
    Ok(client)
}

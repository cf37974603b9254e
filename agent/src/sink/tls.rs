//! TLS for the QUIC shipper: the agent verifies the processor against the project CA and
//! presents its own certificate (mutual TLS). There is no way to turn verification off.
//! Over Kafka, where the broker authenticates no one to the processor, the same key signs
//! each batch ([`BatchSigner`]).

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {cause}")]
    Pem {
        what: &'static str,
        path: String,
        cause: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("invalid CA certificate in {path}: {cause}")]
    BadCa { path: String, cause: rustls::Error },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    #[error("the key in {path} cannot sign batches: {reason}")]
    Signing { path: String, reason: String },
}

/// Signs the batches the agent produces to Kafka with its certificate's key.
pub struct BatchSigner {
    chain: Vec<Vec<u8>>,
    signer: Box<dyn rustls::sign::Signer>,
}

impl BatchSigner {
    /// The signer of `cert`'s holder, with its `key` (ECDSA P-256/P-384, Ed25519 or RSA).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = certs(cert, "agent certificate")?;
        let path = key.display().to_string();
        let der = PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Pem {
            what: "agent private key",
            path: path.clone(),
            cause,
        })?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
            TlsError::Signing {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        use rustls::SignatureScheme as S;
        let signer = signing
            .choose_scheme(&[
                S::ECDSA_NISTP256_SHA256,
                S::ECDSA_NISTP384_SHA384,
                S::ED25519,
                S::RSA_PSS_SHA256,
            ])
            .ok_or_else(|| TlsError::Signing {
                path,
                reason: "no supported signature scheme".into(),
            })?;
        Ok(Self {
            chain: chain.into_iter().map(|c| c.to_vec()).collect(),
            signer,
        })
    }

    /// The signature of a batch: its envelope and payload.
    pub fn sign(
        &self,
        envelope: &sluice_protocol::Envelope,
        payload: &[u8],
    ) -> Result<sluice_protocol::kafka::Signature, rustls::Error> {
        Ok(sluice_protocol::kafka::Signature {
            chain: self.chain.clone(),
            scheme: format!("{:?}", self.signer.scheme()),
            signature: self.signer.sign(&envelope.signed_bytes(payload))?,
        })
    }
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |cause| TlsError::Pem {
        what,
        path: path.display().to_string(),
        cause,
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
        roots.add(c).map_err(|cause| TlsError::BadCa {
            path: ca.display().to_string(),
            cause,
        })?;
    }
    let chain = certs(cert, "agent certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Pem {
        what: "agent private key",
        path: key.display().to_string(),
        cause,
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

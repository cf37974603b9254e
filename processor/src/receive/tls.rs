//! TLS for the QUIC receiver: TLS 1.3 only, and every agent must present a certificate
//! signed by the configured CA (mutual TLS). There is no option to turn this off.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read {what} from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// The CA certificates in `ca` (PEM), as trust roots.
pub fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca, "CA certificate")? {
        roots
            .add(c)
            .with_context(|| format!("invalid CA certificate in {}", ca.display()))?;
    }
    Ok(roots)
}

/// A verifier of agent certificates: chained to the CA in `ca`, valid now, and not in the
/// revocation list `crl` (PEM) when one is given.
pub fn agent_verifier(
    ca: &Path,
    crl: Option<&Path>,
) -> anyhow::Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
    if let Some(crl) = crl {
        let crls = rustls_pki_types::CertificateRevocationListDer::pem_file_iter(crl)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("cannot read the revocation list {}", crl.display()))?;
        anyhow::ensure!(
            !crls.is_empty(),
            "{} holds no revocation list",
            crl.display()
        );
        builder = builder.with_crls(crls);
    }
    builder
        .build()
        .context("cannot build the agent certificate verifier")
}

/// Build the QUIC server configuration from PEM files.
pub fn server_config(
    ca: &Path,
    crl: Option<&Path>,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = agent_verifier(ca, crl)?;
    let chain = certs(cert, "server certificate")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the server key from {}", key.display()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("server certificate and key do not match")?;
    tls.alpn_protocols = vec![sluice_protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| anyhow::anyhow!("TLS configuration unusable for QUIC: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(1024));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.stream_receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    transport.receive_window(quinn::VarInt::from_u32(256 * 1024 * 1024));
    transport.send_window(16 * 1024 * 1024);
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(30)) {
        transport.max_idle_timeout(Some(idle));
    }
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// The common name of the agent certificate a connection presented, if any.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    common_name(chain.first()?)
}

/// The common name of a certificate (DER): an agent's id.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

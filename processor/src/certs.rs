//! `sluice-processor certs`: a small private CA for development and test setups.
//!
//! `init` creates the CA, the processor's server certificate and any agent certificates;
//! `issue` adds agent certificates later from the same CA. Keys are ECDSA P-256.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// File names inside a certs directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

/// Paths of an agent's certificate and key.
pub fn agent_files(dir: &Path, agent: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("agent-{agent}.pem")),
        dir.join(format!("agent-{agent}.key")),
    )
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Sluice");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict permissions of {}", path.display()))?;
    }
    Ok(())
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

/// Create a CA, a server certificate for `server_names` and one certificate per agent.
/// Refuses to overwrite an existing CA unless `force`.
pub fn init(
    dir: &Path,
    server_names: &[String],
    agents: &[String],
    force: bool,
) -> anyhow::Result<()> {
    if dir.join(CA_KEY).exists() && !force {
        bail!(
            "{} already holds a CA; pass --force to replace it (every issued certificate becomes invalid)",
            dir.display()
        );
    }
    for a in agents {
        sluice_protocol::validate_name("agent", a).context("invalid agent id")?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("Sluice development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_public(&dir.join(CA_CERT), &ca_cert.pem())?;
    write_private(&dir.join(CA_KEY), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(server_names.to_vec())?;
    params.distinguished_name = dn("sluice-processor");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&server_key, &issuer)?;
    write_public(&dir.join(SERVER_CERT), &cert.pem())?;
    write_private(&dir.join(SERVER_KEY), &server_key.serialize_pem())?;

    for agent in agents {
        issue_with(dir, &issuer, agent)?;
    }
    Ok(())
}

/// Issue a certificate for `agent` from the CA in `dir`.
pub fn issue(dir: &Path, agent: &str) -> anyhow::Result<()> {
    sluice_protocol::validate_name("agent", agent).context("invalid agent id")?;
    let ca_pem = fs::read_to_string(dir.join(CA_CERT))
        .with_context(|| format!("cannot read {}", dir.join(CA_CERT).display()))?;
    let key_pem = fs::read_to_string(dir.join(CA_KEY))
        .with_context(|| format!("cannot read {}", dir.join(CA_KEY).display()))?;
    let ca_key = KeyPair::from_pem(&key_pem).context("invalid CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("invalid CA certificate")?;
    issue_with(dir, &issuer, agent)
}

fn issue_with(dir: &Path, issuer: &Issuer<'_, KeyPair>, agent: &str) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![agent.to_string()])?;
    params.distinguished_name = dn(agent);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, issuer)?;
    let (cert_path, key_path) = agent_files(dir, agent);
    write_public(&cert_path, &cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(())
}

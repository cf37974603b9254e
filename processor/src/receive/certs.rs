//! `sluice-processor certs`: a small private CA for development and test setups.
//!
//! `init` creates the CA, the processor's server certificate and any agent certificates;
//! `issue` adds agent certificates later from the same CA; `revoke` lists an agent's
//! certificate in the CA's revocation list (`crl.pem`), which the processor honours
//! (`quic.crl`, `kafka.crl`). Keys are ECDSA P-256, written owner-only from the moment they
//! exist. Certificates are valid for a bounded time (a year by default; the CA ten).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use time::{Duration, OffsetDateTime};

/// File names inside a certs directory: the CA's certificate, which agents and processors
/// trust (`quic.ca`, `kafka.ca`).
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key, which `certs issue` and `revoke` sign with.
pub const CA_KEY: &str = "ca.key";
/// The processor's server certificate (`quic.cert`).
pub const SERVER_CERT: &str = "server.pem";
/// The server certificate's private key (`quic.key`).
pub const SERVER_KEY: &str = "server.key";
/// The CA's certificate revocation list.
pub const CRL: &str = "crl.pem";

/// How long server and agent certificates are valid when not told.
pub const DEFAULT_DAYS: u32 = 365;
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;
/// A certificate is valid from an hour before it was made: clocks differ.
const CLOCK_SKEW: Duration = Duration::hours(1);
/// The revocation list says when to fetch the next one; processors read the file.
const CRL_DAYS: i64 = 30;

fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + Duration::days(days);
}

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

/// Write `contents` to `path` through a new file of mode `mode` beside it, renamed over
/// `path`: a key is never readable by others, not even for an instant, and a reader never
/// sees half a file.
fn write_file(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written = options
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_file(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_file(path, contents, 0o644)
}

/// Create a CA, a server certificate for `server_names` and one certificate per agent,
/// valid for `days`. Refuses to overwrite an existing CA unless `force`.
pub fn init(
    dir: &Path,
    server_names: &[String],
    agents: &[String],
    days: u32,
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
    valid_for(&mut ca_params, CA_DAYS);
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
    valid_for(&mut params, days.into());
    let cert = params.signed_by(&server_key, &issuer)?;
    write_public(&dir.join(SERVER_CERT), &cert.pem())?;
    write_private(&dir.join(SERVER_KEY), &server_key.serialize_pem())?;

    for agent in agents {
        issue_with(dir, &issuer, agent, days)?;
    }
    // An empty revocation list from the start, so a processor can be pointed at it.
    write_crl(dir, &issuer, Vec::new())?;
    Ok(())
}

fn load_issuer(dir: &Path) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let ca_pem = fs::read_to_string(dir.join(CA_CERT))
        .with_context(|| format!("cannot read {}", dir.join(CA_CERT).display()))?;
    let key_pem = fs::read_to_string(dir.join(CA_KEY))
        .with_context(|| format!("cannot read {}", dir.join(CA_KEY).display()))?;
    let ca_key = KeyPair::from_pem(&key_pem).context("invalid CA key")?;
    Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("invalid CA certificate")
}

/// Issue a certificate for `agent`, valid for `days`, from the CA in `dir`.
pub fn issue(dir: &Path, agent: &str, days: u32) -> anyhow::Result<()> {
    sluice_protocol::validate_name("agent", agent).context("invalid agent id")?;
    issue_with(dir, &load_issuer(dir)?, agent, days)
}

/// List `agent`'s current certificate in the CA's revocation list; returns its serial
/// number and how many certificates the list now holds.
pub fn revoke(dir: &Path, agent: &str) -> anyhow::Result<(String, usize)> {
    let issuer = load_issuer(dir)?;
    let (cert, _) = agent_files(dir, agent);
    let der = rustls_pki_types::CertificateDer::from_pem_file(&cert)
        .with_context(|| format!("cannot read {}", cert.display()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{} is not a certificate: {e}", cert.display()))?;
    let serial = parsed.raw_serial().to_vec();
    let mut revoked = revoked_serials(dir)?;
    if !revoked.iter().any(|(s, _)| *s == serial) {
        revoked.push((serial.clone(), OffsetDateTime::now_utc()));
    }
    let count = revoked.len();
    write_crl(dir, &issuer, revoked)?;
    Ok((serial.iter().map(|b| format!("{b:02x}")).collect(), count))
}

/// The serial numbers (and revocation times) the CA's list holds now.
fn revoked_serials(dir: &Path) -> anyhow::Result<Vec<(Vec<u8>, OffsetDateTime)>> {
    let path = dir.join(CRL);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_file(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| anyhow::anyhow!("{} is not a revocation list: {e}", path.display()))?;
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| {
            let at = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or_else(|_| OffsetDateTime::now_utc());
            (r.raw_serial().to_vec(), at)
        })
        .collect())
}

fn write_crl(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    revoked: Vec<(Vec<u8>, OffsetDateTime)>,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::days(CRL_DAYS),
        // Increasing with each list: seconds since the epoch.
        crl_number: SerialNumber::from(u64::try_from(now.unix_timestamp()).unwrap_or(1)),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .into_iter()
            .map(|(serial, at)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: at,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)?;
    write_public(&dir.join(CRL), &crl.pem()?)
}

fn issue_with(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    agent: &str,
    days: u32,
) -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![agent.to_string()])?;
    params.distinguished_name = dn(agent);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    valid_for(&mut params, days.into());
    let cert = params.signed_by(&key, issuer)?;
    let (cert_path, key_path) = agent_files(dir, agent);
    write_public(&cert_path, &cert.pem())?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(unsafe_code, reason = "std cannot set the umask")]
    fn keys_are_owner_only_and_certificates_expire_within_their_days() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A permissive umask must not leak into a key, not even before a chmod.
        #[cfg(unix)]
        // SAFETY: umask only sets this process's file creation mask.
        let old = unsafe { libc::umask(0o000) };
        let made = init(
            dir.path(),
            &["localhost".into()],
            &["edge-01".into()],
            30,
            false,
        );
        #[cfg(unix)]
        // SAFETY: as above, restoring it.
        unsafe {
            libc::umask(old);
        }
        made.expect("init");
        #[cfg(unix)]
        for key in [CA_KEY, SERVER_KEY, "agent-edge-01.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(key))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let pem = fs::read(dir.path().join("agent-edge-01.pem")).expect("cert");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        let days = (cert.validity().not_after.timestamp()
            - OffsetDateTime::now_utc().unix_timestamp())
            / 86_400;
        assert!((29..=30).contains(&days), "{days} days");
        // Revoking lists the certificate once, however often it is asked.
        let (serial, n) = revoke(dir.path(), "edge-01").expect("revoke");
        assert_eq!(n, 1);
        assert_eq!(revoke(dir.path(), "edge-01").expect("again"), (serial, 1));
        issue(dir.path(), "edge-02", 10).expect("issue");
        assert_eq!(revoke(dir.path(), "edge-02").expect("second").1, 2);
    }
}

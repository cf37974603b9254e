//! Batches over Kafka carry their agent's signature: a broker authenticates no one to the
//! processor, so without it any producer could write as any agent, raise its marks, and
//! have its genuine batches dropped as duplicates. A batch is taken only when its
//! certificate chains to the CA (as an agent's on QUIC must), names the agent the envelope
//! claims, and its key signed the envelope and the payload's digest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::Digest as _;
use sluice_protocol::Envelope;
use sluice_protocol::kafka::Signature;

/// How long a verified certificate is trusted before its chain (and validity period) is
/// checked again.
const RECHECK_AFTER: Duration = Duration::from_secs(60);
/// Certificates remembered at most; the memory is cleared when it is full.
const MAX_KNOWN: usize = 4096;

/// Why a message's batch is not taken as its agent's.
#[derive(Debug, thiserror::Error)]
pub enum Unverified {
    /// The message carries no signature, and `kafka.require_signed` asks for one.
    #[error("the message is not signed (no sluice-cert and sluice-signature headers)")]
    Unsigned,
    /// The certificate does not chain to the CA (or is revoked, expired, or names no
    /// agent); why, as the check said.
    #[error("the signing certificate is not an agent certificate of the CA: {0}")]
    Untrusted(String),
    /// The certificate is sound, but another agent's than the envelope names.
    #[error("the signing certificate names agent {cert:?}, the message claims {claimed:?}")]
    WrongAgent {
        /// The agent the certificate names (its common name).
        cert: String,
        /// The agent the envelope names.
        claimed: String,
    },
    /// The signature scheme, named here, is not one the processor checks.
    #[error("signature scheme {0:?} is not accepted")]
    Scheme(String),
    /// The signature is not the certificate key's over the envelope and the payload.
    #[error("the signature does not match the batch")]
    BadSignature,
}

impl Unverified {
    /// Whether the same message may pass later: never, it is what it is.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The metric reason. None is worth retrying: the message is what it is.
    pub fn reason(&self) -> &'static str {
        match self {
            Unverified::Unsigned => "unsigned",
            Unverified::Untrusted(_) => "untrusted_certificate",
            Unverified::WrongAgent { .. } => "wrong_agent",
            Unverified::Scheme(_) => "unsupported_scheme",
            Unverified::BadSignature => "bad_signature",
        }
    }
}

/// Checks batch signatures against the CA.
pub struct Verifier {
    chains: Arc<dyn ClientCertVerifier>,
    /// Chain digest → the agent it names and when the chain was last checked.
    known: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl Verifier {
    /// A verifier for agents of the CA in `ca` (PEM), less those revoked in `crl`.
    pub fn new(ca: &Path, crl: Option<&Path>) -> anyhow::Result<Self> {
        let chains = crate::receive::tls::agent_verifier(ca, crl)
            .context("cannot check the signatures of Kafka batches")?;
        Ok(Self {
            chains,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Ok when `signature` is by the agent `envelope` names, over it and `payload`.
    pub fn verify(
        &self,
        envelope: &Envelope,
        signature: Option<&Signature>,
        payload: &[u8],
    ) -> Result<(), Unverified> {
        let signature = signature.ok_or(Unverified::Unsigned)?;
        let leaf = signature
            .chain
            .first()
            .ok_or_else(|| Unverified::Untrusted("no certificate".into()))?;
        let agent = self.agent_of(&signature.chain)?;
        if agent != envelope.agent {
            return Err(Unverified::WrongAgent {
                cert: agent,
                claimed: envelope.agent.clone(),
            });
        }
        let algorithm = match signature.scheme.as_str() {
            "ECDSA_NISTP256_SHA256" => webpki::ring::ECDSA_P256_SHA256,
            "ECDSA_NISTP384_SHA384" => webpki::ring::ECDSA_P384_SHA384,
            "ED25519" => webpki::ring::ED25519,
            "RSA_PSS_SHA256" => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            other => return Err(Unverified::Scheme(other.to_string())),
        };
        let der = CertificateDer::from(leaf.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| Unverified::Untrusted(e.to_string()))?;
        cert.verify_signature(
            algorithm,
            &envelope.signed_bytes(payload),
            &signature.signature,
        )
        .map_err(|_| Unverified::BadSignature)
    }

    /// The agent a chain names, once it is known to chain to the CA.
    fn agent_of(&self, chain: &[Vec<u8>]) -> Result<String, Unverified> {
        let mut digest = sha2::Sha256::new();
        for c in chain {
            digest.update((c.len() as u64).to_le_bytes());
            digest.update(c);
        }
        let key: [u8; 32] = digest.finalize().into();
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((agent, at)) = known.get(&key)
            && at.elapsed() < RECHECK_AFTER
        {
            return Ok(agent.clone());
        }
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Unverified::Untrusted("no certificate".into()))?;
        let leaf = CertificateDer::from(leaf.clone());
        let intermediates: Vec<CertificateDer<'static>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        self.chains
            .verify_client_cert(&leaf, &intermediates, UnixTime::now())
            .map_err(|e| Unverified::Untrusted(e.to_string()))?;
        let agent = crate::receive::tls::common_name(&leaf)
            .ok_or_else(|| Unverified::Untrusted("the certificate has no common name".into()))?;
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(key, (agent.clone(), Instant::now()));
        Ok(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;

    fn ca(dir: &Path) {
        crate::receive::certs::init(
            dir,
            &["localhost".into()],
            &["edge-01".into(), "edge-02".into()],
            crate::receive::certs::DEFAULT_DAYS,
            false,
        )
        .expect("certs");
    }

    /// Sign as the holder of `agent`'s certificate in `dir`, independently of the agent's
    /// own signer.
    fn sign(dir: &Path, agent: &str, envelope: &Envelope, payload: &[u8]) -> Signature {
        let (cert, key) = crate::receive::certs::agent_files(dir, agent);
        let chain = CertificateDer::pem_file_iter(&cert)
            .expect("cert")
            .map(|c| c.expect("cert").to_vec())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).expect("key");
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .expect("key type")
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .expect("scheme");
        Signature {
            chain,
            scheme: format!("{:?}", signer.scheme()),
            signature: signer.sign(&envelope.signed_bytes(payload)).expect("sign"),
        }
    }

    fn envelope(agent: &str, seq: u64) -> Envelope {
        Envelope {
            agent: agent.into(),
            stream: "cpu".into(),
            seq,
            schema_fingerprint: 7,
            created_at_us: 1,
            rows: 3,
            checkpoint: None,
        }
    }

    #[test]
    fn only_a_batch_its_agent_signed_with_a_certificate_of_the_ca_is_taken() {
        let ours = tempfile::tempdir().expect("tempdir");
        let theirs = tempfile::tempdir().expect("tempdir");
        ca(ours.path());
        ca(theirs.path());
        let v = Verifier::new(&ours.path().join(crate::receive::certs::CA_CERT), None)
            .expect("verifier");
        let payload = b"arrow ipc".to_vec();
        let genuine = envelope("edge-01", 5);
        let sig = sign(ours.path(), "edge-01", &genuine, &payload);
        v.verify(&genuine, Some(&sig), &payload).expect("genuine");
        // Again, from the remembered chain.
        v.verify(&genuine, Some(&sig), &payload)
            .expect("genuine, remembered");

        let reason = |e: &Envelope, s: Option<&Signature>, p: &[u8]| {
            v.verify(e, s, p).expect_err("refused").reason()
        };
        assert_eq!(reason(&genuine, None, &payload), "unsigned");
        // The mark-raising forgery: the same signature on a bigger sequence number.
        assert_eq!(
            reason(&envelope("edge-01", i64::MAX as u64), Some(&sig), &payload),
            "bad_signature"
        );
        assert_eq!(reason(&genuine, Some(&sig), b"other rows"), "bad_signature");
        // edge-02 signing a batch that claims to be edge-01's.
        let as_other = sign(ours.path(), "edge-02", &genuine, &payload);
        assert_eq!(reason(&genuine, Some(&as_other), &payload), "wrong_agent");
        // A certificate for edge-01 from another CA.
        let foreign = sign(theirs.path(), "edge-01", &genuine, &payload);
        assert_eq!(
            reason(&genuine, Some(&foreign), &payload),
            "untrusted_certificate"
        );
        // The CA's own certificate is not an agent's.
        let mut ca_signed = sig.clone();
        ca_signed.chain = vec![
            CertificateDer::pem_file_iter(ours.path().join(crate::receive::certs::CA_CERT))
                .expect("ca")
                .next()
                .expect("one")
                .expect("ca cert")
                .to_vec(),
        ];
        assert_eq!(
            reason(&genuine, Some(&ca_signed), &payload),
            "untrusted_certificate"
        );
        let mut scheme = sig.clone();
        scheme.scheme = "RSA_PKCS1_SHA1".into();
        assert_eq!(
            reason(&genuine, Some(&scheme), &payload),
            "unsupported_scheme"
        );
    }
}

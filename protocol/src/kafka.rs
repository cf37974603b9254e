//! The Kafka form of a batch: one message per batch, the Arrow IPC stream as its value and
//! the [`Envelope`] in its headers (UTF-8 text, so `kcat -f '%h'` shows them).
//!
//! The message key is the agent id, so one agent's batches stay in one partition, in
//! order.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::{Envelope, ProtocolError};

/// Header names, in the order the agent writes them.
pub const HEADER_VERSION: &str = "sluice-version";
/// [`Envelope::agent`].
pub const HEADER_AGENT: &str = "sluice-agent";
/// [`Envelope::stream`].
pub const HEADER_STREAM: &str = "sluice-stream";
/// [`Envelope::seq`], in decimal.
pub const HEADER_SEQ: &str = "sluice-seq";
/// [`Envelope::schema_fingerprint`], 16 lowercase hex digits.
pub const HEADER_SCHEMA: &str = "sluice-schema";
/// [`Envelope::created_at_us`], in decimal microseconds since the Unix epoch.
pub const HEADER_CREATED_AT: &str = "sluice-created-at-us";
/// [`Envelope::rows`], in decimal.
pub const HEADER_ROWS: &str = "sluice-rows";
/// [`Envelope::checkpoint`]; absent when the batch has none.
pub const HEADER_CHECKPOINT: &str = "sluice-checkpoint";
/// The signing agent's certificate chain: base64 DER, leaf first, comma-separated.
pub const HEADER_CERT: &str = "sluice-cert";
/// `SCHEME:base64 signature` over [`Envelope::signed_bytes`].
pub const HEADER_SIGNATURE: &str = "sluice-signature";

/// The largest certificate chain header accepted.
const MAX_CERT_HEADER: usize = 16 * 1024;
/// The largest signature header accepted.
const MAX_SIGNATURE_HEADER: usize = 1024;

/// The version of this message layout.
pub const KAFKA_VERSION: &str = "1";

/// A message's signature: who signed (their certificate chain) and the signature itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// DER certificates, the signer's first.
    pub chain: Vec<Vec<u8>>,
    /// The TLS name of the signature scheme (`ECDSA_NISTP256_SHA256`, `ED25519`, ...).
    pub scheme: String,
    /// The raw signature bytes over [`Envelope::signed_bytes`], as that scheme makes them.
    pub signature: Vec<u8>,
}

impl Signature {
    /// The two headers that carry it.
    pub fn to_kafka_headers(&self) -> [(&'static str, String); 2] {
        let chain = self
            .chain
            .iter()
            .map(|c| BASE64.encode(c))
            .collect::<Vec<_>>()
            .join(",");
        [
            (HEADER_CERT, chain),
            (
                HEADER_SIGNATURE,
                format!("{}:{}", self.scheme, BASE64.encode(&self.signature)),
            ),
        ]
    }

    /// The signature in a message's headers; `None` when it has neither header.
    pub fn from_kafka_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Option<Self>, ProtocolError> {
        let (mut cert, mut sig) = (None, None);
        for (name, value) in headers {
            match name {
                HEADER_CERT => cert = Some(value.unwrap_or_default()),
                HEADER_SIGNATURE => sig = Some(value.unwrap_or_default()),
                _ => {}
            }
        }
        let invalid = |field, reason: &str| ProtocolError::InvalidField {
            field,
            reason: reason.into(),
        };
        let (cert, sig) = match (cert, sig) {
            (None, None) => return Ok(None),
            (Some(c), Some(s)) => (c, s),
            _ => {
                return Err(invalid(
                    "sluice-signature",
                    "a signed message carries both sluice-cert and sluice-signature",
                ));
            }
        };
        if cert.len() > MAX_CERT_HEADER || sig.len() > MAX_SIGNATURE_HEADER {
            return Err(invalid("sluice-cert", "signature headers too large"));
        }
        let chain = cert
            .split(|b| *b == b',')
            .map(|c| BASE64.decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid("sluice-cert", "not base64 DER certificates"))?;
        let sig =
            std::str::from_utf8(sig).map_err(|_| ProtocolError::InvalidUtf8 { what: "header" })?;
        let (scheme, signature) = sig
            .split_once(':')
            .ok_or_else(|| invalid("sluice-signature", "expected SCHEME:BASE64"))?;
        let signature = BASE64
            .decode(signature)
            .map_err(|_| invalid("sluice-signature", "not base64"))?;
        Ok(Some(Self {
            chain,
            scheme: scheme.to_string(),
            signature,
        }))
    }
}

impl Envelope {
    /// What an agent signs for a Kafka message: a tag, every field of this envelope
    /// (length-prefixed, so no two envelopes give the same bytes) and the SHA-256 of the
    /// payload.
    pub fn signed_bytes(&self, payload: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"sluice-kafka-batch/1\n");
        let headers = self.to_kafka_headers();
        let digest = sha2::Sha256::digest(payload);
        let payload = ("payload-sha256", hex(&digest));
        for (name, value) in headers
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain([(payload.0, payload.1.as_str())])
        {
            out.extend_from_slice(format!("{name}:{}:", value.len()).as_bytes());
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// The headers that carry this envelope.
    pub fn to_kafka_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (HEADER_VERSION, KAFKA_VERSION.to_string()),
            (HEADER_AGENT, self.agent.clone()),
            (HEADER_STREAM, self.stream.clone()),
            (HEADER_SEQ, self.seq.to_string()),
            (HEADER_SCHEMA, format!("{:016x}", self.schema_fingerprint)),
            (HEADER_CREATED_AT, self.created_at_us.to_string()),
            (HEADER_ROWS, self.rows.to_string()),
        ];
        if let Some(c) = &self.checkpoint {
            h.push((HEADER_CHECKPOINT, c.clone()));
        }
        h
    }

    /// Read an envelope back from a message's headers (unknown headers are ignored).
    pub fn from_kafka_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, ProtocolError> {
        let mut version = None;
        let mut agent = None;
        let mut stream = None;
        let mut seq = None;
        let mut schema = None;
        let mut created = None;
        let mut rows = None;
        let mut checkpoint = None;
        for (name, value) in headers {
            let slot = match name {
                HEADER_VERSION => &mut version,
                HEADER_AGENT => &mut agent,
                HEADER_STREAM => &mut stream,
                HEADER_SEQ => &mut seq,
                HEADER_SCHEMA => &mut schema,
                HEADER_CREATED_AT => &mut created,
                HEADER_ROWS => &mut rows,
                HEADER_CHECKPOINT => &mut checkpoint,
                _ => continue,
            };
            let text = std::str::from_utf8(value.unwrap_or_default())
                .map_err(|_| ProtocolError::InvalidUtf8 { what: "header" })?;
            *slot = Some(text.to_string());
        }
        let need = |v: Option<String>, field: &'static str| {
            v.ok_or_else(|| ProtocolError::InvalidField {
                field,
                reason: "header missing: not a sluice batch".into(),
            })
        };
        let version = need(version, "sluice-version")?;
        if version != KAFKA_VERSION {
            return Err(ProtocolError::InvalidField {
                field: "sluice-version",
                reason: format!(
                    "unsupported message version {version:?} (this build reads {KAFKA_VERSION})"
                ),
            });
        }
        fn number<T: std::str::FromStr>(
            text: &str,
            field: &'static str,
        ) -> Result<T, ProtocolError> {
            text.parse().map_err(|_| ProtocolError::InvalidField {
                field,
                reason: format!("{text:?} is not a number"),
            })
        }
        let schema = need(schema, "sluice-schema")?;
        let env = Envelope {
            agent: need(agent, "sluice-agent")?,
            stream: need(stream, "sluice-stream")?,
            seq: number(&need(seq, "sluice-seq")?, "sluice-seq")?,
            schema_fingerprint: u64::from_str_radix(&schema, 16).map_err(|_| {
                ProtocolError::InvalidField {
                    field: "sluice-schema",
                    reason: format!("{schema:?} is not a hexadecimal fingerprint"),
                }
            })?,
            created_at_us: number(
                &need(created, "sluice-created-at-us")?,
                "sluice-created-at-us",
            )?,
            rows: number(&need(rows, "sluice-rows")?, "sluice-rows")?,
            checkpoint,
        };
        env.validate()?;
        Ok(env)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(checkpoint: Option<&str>) -> Envelope {
        Envelope {
            agent: "edge-1".into(),
            stream: "cpu".into(),
            seq: 1_763_000_000_000_001,
            schema_fingerprint: 0x00ab_cdef_0123_4567,
            created_at_us: 1_763_000_000_000_000,
            rows: 8192,
            checkpoint: checkpoint.map(str::to_string),
        }
    }

    fn round_trip(e: &Envelope) -> Result<Envelope, ProtocolError> {
        let h = e.to_kafka_headers();
        Envelope::from_kafka_headers(h.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
    }

    #[test]
    fn headers_round_trip() {
        for e in [env(None), env(Some(r#"{"rows":5}"#))] {
            assert_eq!(round_trip(&e).expect("decodes"), e);
        }
    }

    #[test]
    fn bad_headers_are_named() {
        let mut h = env(None).to_kafka_headers();
        h.retain(|(k, _)| *k != HEADER_SEQ);
        let err = Envelope::from_kafka_headers(h.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
            .unwrap_err();
        assert!(err.to_string().contains("sluice-seq"), "{err}");
        let none = Envelope::from_kafka_headers([]).unwrap_err();
        assert!(none.to_string().contains("not a sluice batch"), "{none}");
        let mut bad = env(None);
        bad.stream = "no spaces".into();
        assert!(round_trip(&bad).is_err());
        bad = env(None);
        bad.seq = 0;
        assert!(round_trip(&bad).is_err());
    }

    #[test]
    fn a_checkpoint_over_4_kib_is_refused() {
        let e = env(Some(&"x".repeat(crate::MAX_CHECKPOINT_BYTES + 1)));
        let err = round_trip(&e).unwrap_err();
        assert!(err.to_string().contains("at most 4096"), "{err}");
        assert!(round_trip(&env(Some(&"x".repeat(crate::MAX_CHECKPOINT_BYTES)))).is_ok());
    }

    #[test]
    fn signed_bytes_change_with_every_field_and_the_payload() {
        let base = env(Some("c"));
        let payload = b"arrow";
        let mut variants = vec![base.signed_bytes(b"arrow!")];
        for change in 0..7 {
            let mut e = base.clone();
            match change {
                0 => e.agent.push('x'),
                1 => e.stream.push('x'),
                2 => e.seq += 1,
                3 => e.schema_fingerprint ^= 1,
                4 => e.created_at_us += 1,
                5 => e.rows += 1,
                _ => e.checkpoint = None,
            }
            variants.push(e.signed_bytes(payload));
        }
        let signed = base.signed_bytes(payload);
        assert!(variants.iter().all(|v| *v != signed));
        // Fields are length-prefixed: moving a character between two does not collide.
        let mut a = base.clone();
        a.agent = "ab".into();
        a.stream = "c".into();
        let mut b = base.clone();
        b.agent = "a".into();
        b.stream = "bc".into();
        assert_ne!(a.signed_bytes(payload), b.signed_bytes(payload));
    }

    #[test]
    fn signature_headers_round_trip_and_half_a_signature_is_an_error() {
        let sig = Signature {
            chain: vec![vec![1, 2, 3], vec![4, 5]],
            scheme: "ECDSA_NISTP256_SHA256".into(),
            signature: vec![9; 70],
        };
        let h = sig.to_kafka_headers();
        let back = Signature::from_kafka_headers(h.iter().map(|(k, v)| (*k, Some(v.as_bytes()))));
        assert_eq!(back.expect("decodes"), Some(sig));
        assert_eq!(Signature::from_kafka_headers([]).expect("none"), None);
        let half = [(HEADER_SIGNATURE, Some(&b"ED25519:AAAA"[..]))];
        assert!(Signature::from_kafka_headers(half).is_err());
        let huge = "A".repeat(MAX_CERT_HEADER + 4);
        let big = [
            (HEADER_CERT, Some(huge.as_bytes())),
            (HEADER_SIGNATURE, Some(&b"ED25519:AAAA"[..])),
        ];
        assert!(Signature::from_kafka_headers(big).is_err());
    }
}

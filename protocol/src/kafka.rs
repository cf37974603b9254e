//! The Kafka form of a batch: one message per batch, the Arrow IPC stream as its value and
//! the [`Envelope`] in its headers (UTF-8 text, so `kcat -f '%h'` shows them).
//!
//! The message key is the agent id, so one agent's batches stay in one partition, in
//! order.

use crate::{Envelope, ProtocolError};

/// Header names, in the order the agent writes them.
pub const HEADER_VERSION: &str = "sluice-version";
pub const HEADER_AGENT: &str = "sluice-agent";
pub const HEADER_STREAM: &str = "sluice-stream";
pub const HEADER_SEQ: &str = "sluice-seq";
pub const HEADER_SCHEMA: &str = "sluice-schema";
pub const HEADER_CREATED_AT: &str = "sluice-created-at-us";
pub const HEADER_ROWS: &str = "sluice-rows";
pub const HEADER_CHECKPOINT: &str = "sluice-checkpoint";

/// The version of this message layout.
pub const KAFKA_VERSION: &str = "1";

impl Envelope {
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
}

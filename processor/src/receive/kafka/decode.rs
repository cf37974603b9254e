//! An agent's batch from a Kafka message: the envelope from its headers, then the checks in
//! the order that spends least on a forgery (signature, the agent's permission) before the
//! payload is decoded.

use rdkafka::message::{Headers, Message, OwnedMessage};
use sluice_protocol::{Envelope, ProtocolError};

use super::consume::ConsumeLoop;
use crate::receive::admission::NotAdmitted;
use crate::receive::batch::{BatchError, validate};

/// Why a message does not hold a batch that may land; the message goes to the dead-letter
/// table with this as its reason. No retry helps: the message is what it is.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The headers do not hold a valid envelope.
    #[error("{0}")]
    Envelope(#[source] ProtocolError),
    /// The signature headers do not parse.
    #[error("{0}")]
    Signature(#[source] ProtocolError),
    /// The signature does not prove the agent, or the agent may not write the stream.
    #[error(transparent)]
    NotAdmitted(#[from] NotAdmitted),
    /// The payload does not match the envelope.
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl DecodeError {
    /// Whether reading the message again may succeed: never.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Envelope(e) | Self::Signature(e) => e.reason(),
            Self::NotAdmitted(e) => e.reason(),
            Self::Batch(e) => e.reason(),
        }
    }
}

impl ConsumeLoop {
    /// A message's envelope (from its headers) and batch (its value), checked in the order
    /// that spends least on a forgery: the headers, the signature, the agent's permission,
    /// and only then the payload.
    pub(super) fn decode(
        &self,
        msg: &OwnedMessage,
    ) -> Result<(Envelope, arrow_array::RecordBatch, usize), DecodeError> {
        let headers: Vec<(&str, Option<&[u8]>)> = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let envelope =
            Envelope::from_kafka_headers(headers.iter().copied()).map_err(DecodeError::Envelope)?;
        let signature = sluice_protocol::kafka::Signature::from_kafka_headers(headers)
            .map_err(DecodeError::Signature)?;
        let payload = msg.payload().unwrap_or_default();
        self.admission
            .admit(&envelope, signature.as_ref(), payload, &self.metrics)?;
        let batch = validate(&envelope, bytes::Bytes::copy_from_slice(payload))?;
        Ok((envelope, batch, payload.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Fixture, agent_message, cpu_rows, envelope, message};
    use super::*;
    use crate::receive::access::Denied;
    use crate::receive::signed::Unverified;

    #[test]
    fn a_batch_its_agent_signed_decodes_to_its_envelope_and_rows() {
        let f = Fixture::new();
        let (env, batch, msg) = f.genuine("edge-01", 7, 0);
        let (got_env, got_batch, wire_bytes) = f.lp.decode(&msg).expect("a genuine batch");
        assert_eq!(got_env, env);
        assert_eq!(got_batch, batch);
        assert_eq!(wire_bytes, msg.payload().expect("payload").len());
        assert_eq!(
            f.counter("kafka_unverified_batches_total{reason=\"unsigned\"}"),
            0
        );
    }

    #[test]
    fn each_refused_message_gives_its_typed_error_and_the_reason_it_is_counted_under() {
        let f = Fixture::new();
        let batch = cpu_rows(3);
        let payload = sluice_protocol::encode_batch(&batch).expect("ipc");
        let env = envelope("edge-01", "cpu", 1, &batch);
        let sig = f.signed("edge-01", &env, &payload);

        let unsigned = agent_message(&env, payload.clone(), None, 0);
        // edge-02 signs a batch that claims to be edge-01's.
        let as_other = f.signed("edge-02", &env, &payload);
        let wrong_agent = agent_message(&env, payload.clone(), Some(&as_other), 1);
        // edge-01's signature moved onto a higher sequence number, to raise its mark.
        let mut forged = env.clone();
        forged.seq = 1_000_000;
        let bad_signature = agent_message(&forged, payload.clone(), Some(&sig), 2);
        // edge-01 may write `cpu` only.
        let mem = envelope("edge-01", "mem", 1, &batch);
        let mem_sig = f.signed("edge-01", &mem, &payload);
        let not_granted = agent_message(&mem, payload.clone(), Some(&mem_sig), 3);
        // Signed as sent, but the payload is no Arrow IPC stream.
        let mut damaged = payload.clone();
        damaged.truncate(payload.len() / 2);
        let damaged_sig = f.signed("edge-01", &env, &damaged);
        let damaged_ipc = agent_message(&env, damaged, Some(&damaged_sig), 4);
        // Signed as sent, but the envelope claims more rows than the payload holds.
        let mut more = env.clone();
        more.rows = 4;
        let more_sig = f.signed("edge-01", &more, &payload);
        let row_count = agent_message(&more, payload.clone(), Some(&more_sig), 5);

        let refused = |msg: &OwnedMessage| f.lp.decode(msg).expect_err("refused");
        let e = refused(&unsigned);
        assert!(
            matches!(
                e,
                DecodeError::NotAdmitted(NotAdmitted::Unverified(Unverified::Unsigned))
            ),
            "{e:?}"
        );
        assert_eq!(e.reason(), "unsigned");
        let e = refused(&wrong_agent);
        assert!(
            matches!(
                &e,
                DecodeError::NotAdmitted(NotAdmitted::Unverified(Unverified::WrongAgent { cert, claimed }))
                    if cert == "edge-02" && claimed == "edge-01"
            ),
            "{e:?}"
        );
        assert_eq!(e.reason(), "wrong_agent");
        let e = refused(&bad_signature);
        assert!(
            matches!(
                e,
                DecodeError::NotAdmitted(NotAdmitted::Unverified(Unverified::BadSignature))
            ),
            "{e:?}"
        );
        assert_eq!(e.reason(), "bad_signature");
        let e = refused(&not_granted);
        assert!(
            matches!(
                &e,
                DecodeError::NotAdmitted(NotAdmitted::Denied(Denied::Stream { agent, stream }))
                    if agent == "edge-01" && stream == "mem"
            ),
            "{e:?}"
        );
        assert_eq!(e.reason(), "stream_not_allowed");
        let e = refused(&damaged_ipc);
        assert!(
            matches!(e, DecodeError::Batch(BatchError::InvalidIpc(_))),
            "{e:?}"
        );
        assert_eq!(e.reason(), "invalid_ipc");
        let e = refused(&row_count);
        assert!(
            matches!(
                e,
                DecodeError::Batch(BatchError::RowCount {
                    envelope: 4,
                    payload: 3
                })
            ),
            "{e:?}"
        );
        assert_eq!(e.reason(), "row_count_mismatch");

        // The signature's refusals and the access refusals are counted under those reasons.
        for line in [
            "kafka_unverified_batches_total{reason=\"unsigned\"}",
            "kafka_unverified_batches_total{reason=\"wrong_agent\"}",
            "kafka_unverified_batches_total{reason=\"bad_signature\"}",
            "lanes_refused_total{reason=\"stream_not_allowed\"}",
        ] {
            assert_eq!(f.counter(line), 1, "{line}");
        }
        // No retry helps: the message is what it is.
        for msg in [&unsigned, &not_granted, &damaged_ipc, &row_count] {
            assert!(!refused(msg).retryable());
        }
    }

    #[test]
    fn a_forgery_is_refused_before_its_payload_is_read() {
        let f = Fixture::new();
        let garbage = b"not arrow at all".to_vec();
        let env = envelope("edge-01", "cpu", 1, &cpu_rows(3));
        let e =
            f.lp.decode(&agent_message(&env, garbage.clone(), None, 0))
                .expect_err("unsigned");
        assert_eq!(e.reason(), "unsigned", "{e}");
        let mem = envelope("edge-01", "mem", 1, &cpu_rows(3));
        let sig = f.signed("edge-01", &mem, &garbage);
        let e =
            f.lp.decode(&agent_message(&mem, garbage, Some(&sig), 1))
                .expect_err("not granted");
        assert_eq!(e.reason(), "stream_not_allowed", "{e}");
    }

    #[test]
    fn a_message_that_is_no_sluice_batch_is_refused_by_its_headers() {
        let f = Fixture::new();
        let (env, _, _) = f.genuine("edge-01", 1, 0);
        let payload = b"{}".to_vec();
        let e =
            f.lp.decode(&message(
                super::super::testing::AGENTS,
                0,
                None,
                payload.clone(),
                None,
            ))
            .expect_err("no headers");
        assert!(matches!(e, DecodeError::Envelope(_)), "{e:?}");
        assert_eq!(e.reason(), "invalid_field");
        assert!(e.to_string().contains("not a sluice batch"), "{e}");
        // Half a signature: a certificate without the signature.
        let sig = f.signed("edge-01", &env, &payload);
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (key, value) in env
            .to_kafka_headers()
            .into_iter()
            .chain(sig.to_kafka_headers().into_iter().take(1))
        {
            headers = headers.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let e =
            f.lp.decode(&message(
                super::super::testing::AGENTS,
                1,
                None,
                payload,
                Some(headers),
            ))
            .expect_err("half signed");
        assert!(matches!(e, DecodeError::Signature(_)), "{e:?}");
        assert_eq!(e.reason(), "invalid_field");
    }
}

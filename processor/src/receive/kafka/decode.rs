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

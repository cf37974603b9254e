//! A batch's Arrow IPC payload decoded and checked against its envelope: what QUIC and
//! Kafka batches alike pass before they reach the lander.

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use sluice_protocol::{Envelope, decode_batch, schema_fingerprint};

/// Why a batch's payload does not match its envelope. No retry helps: the bytes are what
/// the agent sent.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The payload is not Arrow IPC.
    #[error("invalid Arrow IPC payload: {0}")]
    InvalidIpc(#[source] ArrowError),
    /// The payload holds another number of rows than the envelope says.
    #[error("envelope says {envelope} rows, payload holds {payload}")]
    RowCount {
        /// Rows the envelope says.
        envelope: u32,
        /// Rows the payload holds.
        payload: usize,
    },
    /// The payload's schema is not the one the envelope names.
    #[error(
        "envelope schema fingerprint {envelope:016x} does not match the payload's {payload:016x}"
    )]
    Fingerprint {
        /// The fingerprint the envelope carries.
        envelope: u64,
        /// [`sluice_protocol::schema_fingerprint`] of the payload's schema.
        payload: u64,
    },
}

impl BatchError {
    /// Whether sending the same batch again may succeed: never.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The metric reason (`frames_rejected{reason}`, `batches_rejected{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidIpc(_) => "invalid_ipc",
            Self::RowCount { .. } => "row_count_mismatch",
            Self::Fingerprint { .. } => "fingerprint_mismatch",
        }
    }
}

/// Decode and check a batch against its envelope.
pub fn validate(env: &Envelope, ipc: bytes::Bytes) -> Result<RecordBatch, BatchError> {
    let batch = decode_batch(ipc).map_err(BatchError::InvalidIpc)?;
    if batch.num_rows() != env.rows as usize {
        return Err(BatchError::RowCount {
            envelope: env.rows,
            payload: batch.num_rows(),
        });
    }
    let fp = schema_fingerprint(&batch.schema());
    if fp != env.schema_fingerprint {
        return Err(BatchError::Fingerprint {
            envelope: env.schema_fingerprint,
            payload: fp,
        });
    }
    Ok(batch)
}

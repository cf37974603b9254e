use bytes::BufMut;

use crate::ProtocolError;
use crate::codec::{Reader, put_opt_long_str, put_str};

/// The largest source checkpoint a batch may carry: each table keeps its agents'
/// checkpoints in every snapshot's summary, so a large one would be copied forever.
pub const MAX_CHECKPOINT_BYTES: usize = 4096;

/// Metadata that travels with every batch.
///
/// `seq` is assigned by the agent per (agent, stream) and increases by one per batch; the
/// processor stores the highest committed `seq` in the Iceberg snapshot summary and uses it
/// to drop redelivered batches, which is what makes landing exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Agent identity (`[agent] id` in the agent config).
    pub agent: String,
    /// Logical stream name; lands in `bronze.<stream>`.
    pub stream: String,
    /// Sequence number of this batch within (agent, stream), starting at 1.
    pub seq: u64,
    /// [`crate::schema_fingerprint`] of the batch schema.
    pub schema_fingerprint: u64,
    /// When the batch was cut by the agent, microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// Number of rows in the batch.
    pub rows: u32,
    /// The source's checkpoint after this batch (opaque), if its source checkpoints. The
    /// processor commits it with the batch and hands it back in `Welcome`, so a restarted
    /// source resumes exactly after what the lake holds.
    pub checkpoint: Option<String>,
}

impl Envelope {
    pub(crate) fn encode(&self, buf: &mut Vec<u8>) {
        put_str(buf, &self.agent);
        put_str(buf, &self.stream);
        buf.put_u64(self.seq);
        buf.put_u64(self.schema_fingerprint);
        buf.put_i64(self.created_at_us);
        buf.put_u32(self.rows);
        put_opt_long_str(buf, self.checkpoint.as_deref());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let env = Self {
            agent: r.str("envelope agent")?,
            stream: r.str("envelope stream")?,
            seq: r.u64("envelope seq")?,
            schema_fingerprint: r.u64("envelope schema fingerprint")?,
            created_at_us: r.i64("envelope created_at")?,
            rows: r.u32("envelope rows")?,
            checkpoint: r.opt_long_str("envelope checkpoint")?,
        };
        env.validate()?;
        Ok(env)
    }

    /// Checks every decoder applies: names in the safe alphabet, sequences from 1 and
    /// within the lake's `_seq` column (a signed 64-bit integer), a checkpoint of at most
    /// [`MAX_CHECKPOINT_BYTES`] (it is kept in every later snapshot's summary).
    pub(crate) fn validate(&self) -> Result<(), ProtocolError> {
        validate_name("agent", &self.agent)?;
        validate_name("stream", &self.stream)?;
        if let Some(c) = &self.checkpoint
            && c.len() > MAX_CHECKPOINT_BYTES
        {
            return Err(ProtocolError::InvalidField {
                field: "checkpoint",
                reason: format!("{} bytes; at most {MAX_CHECKPOINT_BYTES} are kept", c.len()),
            });
        }
        if self.seq == 0 || self.seq > i64::MAX as u64 {
            return Err(ProtocolError::InvalidField {
                field: "seq",
                reason: format!("{} is not within 1..=2^63-1", self.seq),
            });
        }
        Ok(())
    }
}

/// Agent ids and stream names become table names and summary keys, so they are restricted
/// to a conservative alphabet: ASCII letters, digits, `_` and `-`, 1 to 128 characters.
pub fn validate_name(field: &'static str, name: &str) -> Result<(), ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::InvalidField {
            field,
            reason: format!(
                "{name:?} must be 1-128 characters of ASCII letters, digits, '_' or '-'"
            ),
        })
    }
}

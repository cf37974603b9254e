//! Quarantine: a batch that cannot land in its bronze table under the stream's schema
//! policy is kept whole in `quarantine.bronze_<stream>` (its rows as Arrow IPC bytes, with
//! the reason, the agent, the sequence and the times) and acknowledged. Nothing is dropped:
//! `sluice-processor quarantine replay` lands the rows once the table or config is fixed.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};

use super::lander::{LandRequest, Origin};

/// The namespace of quarantine tables.
pub const NAMESPACE: &str = "quarantine";

/// The quarantine table of a bronze stream: `bronze_<stream>`.
pub fn table_name(stream: &str) -> String {
    format!("bronze_{stream}")
}

/// The lander's key of a stream's quarantine table (stream names have no dot, so it
/// never is a stream's).
pub(super) fn key(stream: &str) -> String {
    format!("{NAMESPACE}.{}", table_name(stream))
}

/// The format of `payload`: one Arrow IPC stream holding the batch as it arrived.
pub const ARROW_IPC: &str = "arrow-ipc";

/// A quarantine table's own columns (the lake adds `_agent`, `_seq`, `_ingested_at`).
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()));
    Arc::new(ArrowSchema::new(vec![
        Field::new("stream", DataType::Utf8, false),
        Field::new("agent", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("reason_code", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("created_at", ts, false),
        Field::new("checkpoint", DataType::Utf8, true),
        Field::new("kafka_topic", DataType::Utf8, true),
        Field::new("kafka_partition", DataType::Int32, true),
        Field::new("kafka_offset", DataType::Int64, true),
        Field::new("columns", DataType::Utf8, false),
        Field::new("format", DataType::Utf8, false),
        Field::new("payload", DataType::LargeBinary, false),
    ]))
}

/// `req`'s batch as one quarantine row, kept for `reason` (`code` is its metric reason).
pub(super) fn record(
    req: &LandRequest,
    reason: &str,
    code: &str,
) -> Result<RecordBatch, ArrowError> {
    let env = &req.envelope;
    let payload = sluice_protocol::encode_batch(&req.batch)?;
    let (topic, partition, offset) = match &req.origin {
        Some(Origin::Message { partition, offset }) => {
            (Some(partition.0.as_str()), Some(partition.1), Some(*offset))
        }
        Some(Origin::Rows { partition, offsets }) => (
            Some(partition.0.as_str()),
            Some(partition.1),
            offsets.first().copied(),
        ),
        None => (None, None, None),
    };
    let columns = req
        .batch
        .schema()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ");
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![env.stream.as_str()])),
            Arc::new(StringArray::from(vec![env.agent.as_str()])),
            Arc::new(Int64Array::from(vec![env.seq as i64])),
            Arc::new(StringArray::from(vec![reason])),
            Arc::new(StringArray::from(vec![code])),
            Arc::new(Int64Array::from(vec![req.batch.num_rows() as i64])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![env.created_at_us])
                    .with_timezone(sluice_protocol::UTC),
            ),
            Arc::new(StringArray::from(vec![env.checkpoint.as_deref()])),
            Arc::new(StringArray::from(vec![topic])),
            Arc::new(Int32Array::from(vec![partition])),
            Arc::new(Int64Array::from(vec![offset])),
            Arc::new(StringArray::from(vec![columns])),
            Arc::new(StringArray::from(vec![ARROW_IPC])),
            Arc::new(LargeBinaryArray::from_vec(vec![&payload])),
        ],
    )
}

/// One quarantined batch, read back for replay. Its rows stay encoded until
/// [`Quarantined::batch`] is asked for them, so a listing never decodes a payload.
#[derive(Debug)]
pub struct Quarantined {
    /// The agent that sent it (or, for a Kafka JSON run, its topic partition).
    pub agent: String,
    /// Its sequence number.
    pub seq: u64,
    /// Why it was quarantined.
    pub reason: String,
    /// How many rows it holds.
    pub rows: u64,
    /// When the agent made it, µs since the epoch.
    pub created_at_us: i64,
    /// The source checkpoint it carried.
    pub checkpoint: Option<String>,
    /// Its rows as they arrived: one Arrow IPC stream.
    pub payload: bytes::Bytes,
}

impl Quarantined {
    /// Its rows, decoded (and checked as bytes from a peer are).
    pub fn batch(&self) -> Result<RecordBatch, QuarantineError> {
        sluice_protocol::decode_batch(self.payload.clone()).map_err(|source| {
            QuarantineError::Payload {
                agent: self.agent.clone(),
                seq: self.seq,
                source,
            }
        })
    }
}

/// Why a quarantine row cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// A column is missing or of another type: not a quarantine table of this version.
    #[error("not a quarantine table: {0}")]
    Shape(String),
    /// The payload is not one Arrow IPC batch.
    #[error("the payload of {agent} #{seq} is not an Arrow IPC batch: {source}")]
    Payload {
        /// The agent of the row.
        agent: String,
        /// The sequence of the row.
        seq: u64,
        /// What Arrow said.
        source: ArrowError,
    },
}

/// The quarantined batches in rows of a quarantine table.
pub fn read(rows: &RecordBatch) -> Result<Vec<Quarantined>, QuarantineError> {
    let col = |name: &str| {
        rows.column_by_name(name)
            .ok_or_else(|| QuarantineError::Shape(format!("no column {name:?}")))
    };
    let shape = |name: &str| QuarantineError::Shape(format!("column {name:?} has another type"));
    let agent = col("agent")?
        .as_string_opt::<i32>()
        .ok_or_else(|| shape("agent"))?;
    let seq = col("seq")?
        .as_primitive_opt::<arrow_array::types::Int64Type>()
        .ok_or_else(|| shape("seq"))?;
    let reason = col("reason")?
        .as_string_opt::<i32>()
        .ok_or_else(|| shape("reason"))?;
    let count = col("rows")?
        .as_primitive_opt::<arrow_array::types::Int64Type>()
        .ok_or_else(|| shape("rows"))?;
    let created = col("created_at")?
        .as_primitive_opt::<arrow_array::types::TimestampMicrosecondType>()
        .ok_or_else(|| shape("created_at"))?;
    let checkpoint = col("checkpoint")?
        .as_string_opt::<i32>()
        .ok_or_else(|| shape("checkpoint"))?;
    let payload = col("payload")?
        .as_binary_opt::<i64>()
        .ok_or_else(|| shape("payload"))?;
    Ok((0..rows.num_rows())
        .map(|i| Quarantined {
            agent: agent.value(i).to_string(),
            seq: seq.value(i).max(0) as u64,
            reason: reason.value(i).to_string(),
            rows: count.value(i).max(0) as u64,
            created_at_us: created.value(i),
            checkpoint: (!checkpoint.is_null(i)).then(|| checkpoint.value(i).to_string()),
            payload: bytes::Bytes::copy_from_slice(payload.value(i)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_batch_reads_back_as_it_arrived() {
        let batch = RecordBatch::try_from_iter(vec![(
            "v",
            Arc::new(StringArray::from(vec!["x", "y"])) as arrow_array::ArrayRef,
        )])
        .expect("batch");
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let req = LandRequest {
            envelope: sluice_protocol::Envelope {
                agent: "edge-1".into(),
                stream: "cpu".into(),
                seq: 7,
                created_at_us: 1_000,
                schema_fingerprint: 0,
                rows: 2,
                checkpoint: Some("c7".into()),
            },
            batch: batch.clone(),
            wire_bytes: 0,
            received_at_us: 2_000,
            origin: Some(Origin::Message {
                partition: ("sluice.cpu".into(), 3),
                offset: 41,
            }),
            quarantine: true,
            reply,
        };
        let row = record(&req, "column \"v\" has type Utf8", "type_change").expect("row");
        assert_eq!(row.schema(), schema());
        assert_eq!(
            row.column_by_name("kafka_offset")
                .expect("offset")
                .as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
            41
        );
        let back = read(&row).expect("reads");
        assert_eq!(back.len(), 1);
        let q = &back[0];
        assert_eq!((q.agent.as_str(), q.seq), ("edge-1", 7));
        assert_eq!(q.checkpoint.as_deref(), Some("c7"));
        assert_eq!(q.created_at_us, 1_000);
        assert_eq!(q.rows, 2);
        assert_eq!(q.batch().expect("decodes"), batch);
        assert!(q.reason.contains("Utf8"));
    }
}

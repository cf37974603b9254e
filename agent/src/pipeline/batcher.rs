//! Cuts a stream's chunks into batches by row count, size and age, and encodes them for
//! the wire.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::telemetry::Metrics;

/// Rows from a source, with the source's checkpoint after them (if it checkpoints).
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The rows; every chunk of a stream must have the stream's schema.
    pub batch: RecordBatch,
    /// Where the source resumes to produce exactly the rows after these; `None` when it
    /// does not checkpoint. A chunk that has one is never split across batches.
    pub checkpoint: Option<String>,
}

impl From<RecordBatch> for Chunk {
    fn from(batch: RecordBatch) -> Self {
        Chunk {
            batch,
            checkpoint: None,
        }
    }
}

/// A batch ready to ship: Arrow IPC bytes plus what the envelope needs.
#[derive(Debug, Clone)]
pub struct ReadyBatch {
    /// The rows as one Arrow IPC stream, shipped as they are.
    pub ipc: Bytes,
    /// Rows in the batch.
    pub rows: u32,
    /// [`sluice_protocol::schema_fingerprint`] of the batch's schema.
    pub schema_fingerprint: u64,
    /// When the batch was cut, microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// Checkpoint of the last chunk in the batch: resuming from it yields exactly the rows
    /// after this batch.
    pub checkpoint: Option<String>,
}

/// Limits at which a batch is cut; the first one reached wins.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows at which a batch is cut (`batch.max_rows`); only a checkpointed chunk taken
    /// whole makes a batch larger.
    pub max_rows: usize,
    /// Buffered Arrow memory, in bytes, at which a batch is cut (`batch.max_bytes`, lowered
    /// to fit a Kafka message).
    pub max_bytes: usize,
    /// Age of the oldest buffered row at which a batch is cut (`batch.max_age`).
    pub max_age: Duration,
}

/// Accumulates chunks and hands out batches within [`Limits`].
struct Accumulator {
    /// Schema of the stream, from its first chunk.
    schema: Option<SchemaRef>,
    limits: Limits,
    /// Buffered chunks with their estimated size: a slice reports its whole parent's
    /// buffers, so the size of a split chunk's rest is carried, not measured again.
    chunks: VecDeque<(Chunk, usize)>,
    rows: usize,
    bytes: usize,
    /// When the oldest buffered row arrived.
    oldest: Option<Instant>,
}

impl Accumulator {
    fn new(limits: Limits) -> Self {
        Accumulator {
            schema: None,
            limits,
            chunks: VecDeque::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
        }
    }

    /// Whether `chunk` has other columns than the chunks buffered.
    fn changes_schema(&self, chunk: &Chunk) -> bool {
        chunk.batch.num_rows() > 0
            && self
                .schema
                .as_ref()
                .is_some_and(|s| *s != chunk.batch.schema())
    }

    /// Buffer a chunk of the buffered chunks' schema (or of any, when none is buffered).
    fn push(&mut self, chunk: Chunk) {
        if chunk.batch.num_rows() == 0 {
            return;
        }
        if self.rows == 0 || self.schema.is_none() {
            self.schema = Some(chunk.batch.schema());
        }
        let size = chunk.batch.get_array_memory_size();
        self.rows += chunk.batch.num_rows();
        self.bytes += size;
        self.oldest.get_or_insert_with(Instant::now);
        self.chunks.push_back((chunk, size));
    }

    /// A batch is due by size (age is the caller's timer).
    fn full(&self) -> bool {
        self.rows >= self.limits.max_rows || self.bytes >= self.limits.max_bytes
    }

    /// Take a batch from the front within both the row and the byte limit. A chunk that
    /// carries a checkpoint is never split: its checkpoint is only true after its last
    /// row, so the batch is cut before it instead (or takes it whole, when it is the first
    /// chunk). Other chunks are split where a limit falls, by their average row size.
    fn take(&mut self) -> Result<Option<(RecordBatch, Option<String>)>, ArrowError> {
        if self.rows == 0 {
            return Ok(None);
        }
        let (mut rows_left, mut bytes_left) = (self.limits.max_rows, self.limits.max_bytes);
        let mut parts = Vec::new();
        let mut checkpoint = None;
        while rows_left > 0 {
            let Some((chunk, size)) = self.chunks.pop_front() else {
                break;
            };
            let n = chunk.batch.num_rows();
            let fits = n <= rows_left && size <= bytes_left;
            if fits || (chunk.checkpoint.is_some() && parts.is_empty()) {
                rows_left = rows_left.saturating_sub(n);
                bytes_left = bytes_left.saturating_sub(size);
                self.rows -= n;
                self.bytes = self.bytes.saturating_sub(size);
                if chunk.checkpoint.is_some() {
                    checkpoint = chunk.checkpoint;
                }
                parts.push(chunk.batch);
                continue;
            }
            // Rows of this chunk that fit what is left; at least one row per batch.
            let by_bytes = bytes_left.saturating_mul(n) / size.max(1);
            let k = rows_left.min(by_bytes).min(n);
            let k = if parts.is_empty() { k.max(1) } else { k };
            if chunk.checkpoint.is_some() || k == 0 {
                self.chunks.push_front((chunk, size));
                break;
            }
            let moved = size * k / n;
            parts.push(chunk.batch.slice(0, k));
            self.rows -= k;
            self.bytes = self.bytes.saturating_sub(moved);
            let rest = Chunk {
                batch: chunk.batch.slice(k, n - k),
                checkpoint: None,
            };
            self.chunks.push_front((rest, size - moved));
            break;
        }
        if self.rows == 0 {
            self.oldest = None;
            self.bytes = 0;
        } else {
            // The remainder arrived with or after the batch just cut; restart its clock.
            self.oldest = Some(Instant::now());
        }
        let batch = match (parts.len(), &self.schema) {
            (1, _) | (_, None) => match parts.pop() {
                Some(b) => b,
                None => return Ok(None),
            },
            (_, Some(schema)) => arrow_select::concat::concat_batches(schema, &parts)?,
        };
        Ok(Some((batch, checkpoint)))
    }
}

/// Run the batcher for one stream until its input closes; everything buffered is flushed.
pub async fn run(
    stream: Arc<str>,
    limits: Limits,
    mut input: mpsc::Receiver<Chunk>,
    output: mpsc::Sender<ReadyBatch>,
    metrics: Arc<Metrics>,
    tap: Option<crate::telemetry::Tap>,
) -> Result<(), ArrowError> {
    let mut acc = Accumulator::new(limits);
    let emit =
        |(batch, checkpoint): (RecordBatch, Option<String>)| -> Result<ReadyBatch, ArrowError> {
            let ipc = sluice_protocol::encode_batch(&batch)?;
            let fingerprint = sluice_protocol::schema_fingerprint(&batch.schema());
            let rows = batch.num_rows() as u32;
            metrics.batch_cut(&stream, rows, ipc.len());
            Ok(ReadyBatch {
                ipc: Bytes::from(ipc),
                rows,
                schema_fingerprint: fingerprint,
                created_at_us: chrono::Utc::now().timestamp_micros(),
                checkpoint,
            })
        };
    loop {
        let deadline = acc.oldest.map(|t| t + limits.max_age);
        tokio::select! {
            chunk = input.recv() => match chunk {
                Some(chunk) => {
                    // A source reopened with other columns (its table gained one): what
                    // is buffered goes out in its own batches, then the stream goes on in
                    // the new schema, which the processor evolves the table to.
                    if acc.changes_schema(&chunk) {
                        tracing::info!(
                            stream = %stream,
                            columns = chunk.batch.num_columns(),
                            "the stream's columns changed; batches carry the new schema from here"
                        );
                        while let Some(batch) = acc.take()? {
                            if output.send(emit(batch)?).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    let tapped = tap.as_ref().map(|t| (t, chunk.batch.clone()));
                    acc.push(chunk);
                    if let Some((tap, batch)) = tapped {
                        tap.offer(&batch);
                    }
                    while acc.full() {
                        let Some(batch) = acc.take()? else { break };
                        if output.send(emit(batch)?).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                None => {
                    while let Some(batch) = acc.take()? {
                        if output.send(emit(batch)?).await.is_err() {
                            return Ok(());
                        }
                    }
                    return Ok(());
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => {
                if let Some(batch) = acc.take()?
                    && output.send(emit(batch)?).await.is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Int64Array;
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
    }

    fn chunk(from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .expect("batch")
    }

    /// Row and byte limits, with an age limit no test reaches.
    fn limits(max_rows: usize, max_bytes: usize) -> Limits {
        Limits {
            max_rows,
            max_bytes,
            max_age: Duration::from_secs(3600),
        }
    }

    fn values(b: &ReadyBatch) -> Vec<i64> {
        let batch = sluice_protocol::decode_batch(b.ipc.clone()).expect("decode");
        batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("i64")
            .values()
            .to_vec()
    }

    async fn drive(limits: Limits, chunks: Vec<Chunk>) -> Vec<ReadyBatch> {
        let (tx, rx) = mpsc::channel(16);
        let (otx, mut orx) = mpsc::channel(1024);
        let task = tokio::spawn(run(
            "s".into(),
            limits,
            rx,
            otx,
            Arc::new(Metrics::default()),
            None,
        ));
        for c in chunks {
            tx.send(c).await.expect("send");
        }
        drop(tx);
        task.await.expect("join").expect("batcher");
        let mut out = Vec::new();
        while let Some(b) = orx.recv().await {
            out.push(b);
        }
        out
    }

    #[tokio::test]
    async fn cuts_exactly_at_max_rows_and_keeps_order() {
        let limits = limits(100, usize::MAX);
        let out = drive(
            limits,
            vec![
                chunk(0, 70).into(),
                chunk(70, 70).into(),
                chunk(140, 75).into(),
            ],
        )
        .await;
        let sizes: Vec<u32> = out.iter().map(|b| b.rows).collect();
        assert_eq!(sizes, vec![100, 100, 15]);
        let all: Vec<i64> = out.iter().flat_map(values).collect();
        assert_eq!(all, (0..215).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn cuts_by_bytes() {
        let limits = limits(1_000_000, 4096);
        let out = drive(
            limits,
            (0..10).map(|i| chunk(i * 1000, 1000).into()).collect(),
        )
        .await;
        // Each 1000-row chunk is ~8 KB, twice the limit: it is split by its row size, so
        // no batch holds more than 4 KB of 8-byte values.
        assert!(out.len() >= 20, "{} batches", out.len());
        assert!(out.iter().all(|b| b.rows > 0 && b.rows <= 512));
        let all: Vec<i64> = out.iter().flat_map(values).collect();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_checkpointed_chunk_over_the_byte_limit_goes_whole_and_alone() {
        let limits = limits(1_000_000, 4096);
        let out = drive(
            limits,
            vec![
                chunk(0, 100).into(),
                Chunk {
                    batch: chunk(100, 1000),
                    checkpoint: Some("big".into()),
                },
                chunk(1100, 100).into(),
            ],
        )
        .await;
        let cut: Vec<(u32, Option<&str>)> = out
            .iter()
            .map(|b| (b.rows, b.checkpoint.as_deref()))
            .collect();
        assert_eq!(cut, vec![(100, None), (1000, Some("big")), (100, None)]);
        let all: Vec<i64> = out.iter().flat_map(values).collect();
        assert_eq!(all, (0..1200).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn never_splits_a_checkpointed_chunk() {
        let limits = limits(100, usize::MAX);
        let with = |from, n, c: &str| Chunk {
            batch: chunk(from, n),
            checkpoint: Some(c.to_string()),
        };
        let out = drive(
            limits,
            vec![
                with(0, 60, "a"),
                with(60, 60, "b"),
                with(120, 150, "c"),
                with(270, 10, "d"),
            ],
        )
        .await;
        let cut: Vec<(u32, Option<&str>)> = out
            .iter()
            .map(|b| (b.rows, b.checkpoint.as_deref()))
            .collect();
        // "b" would overflow the first batch, so it starts the second; "c" is bigger than a
        // batch and goes whole; every batch ends on a chunk boundary with its checkpoint.
        assert_eq!(
            cut,
            vec![
                (60, Some("a")),
                (60, Some("b")),
                (150, Some("c")),
                (10, Some("d"))
            ]
        );
        let all: Vec<i64> = out.iter().flat_map(values).collect();
        assert_eq!(all, (0..280).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_chunk_with_new_columns_cuts_the_buffered_rows_and_the_stream_goes_on_in_its_schema()
    {
        let wider = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Int64, false),
            Field::new("w", DataType::Int64, true),
        ]));
        let widened = |from: i64, n: i64| -> Chunk {
            RecordBatch::try_new(
                wider.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + n)),
                    Arc::new(Int64Array::from_iter_values(0..n)),
                ],
            )
            .expect("batch")
            .into()
        };
        let out = drive(
            limits(1000, usize::MAX),
            vec![
                chunk(0, 70).into(),
                chunk(70, 5).into(),
                widened(75, 30),
                widened(105, 10),
            ],
        )
        .await;
        let cut: Vec<(u32, usize)> = out
            .iter()
            .map(|b| {
                let batch = sluice_protocol::decode_batch(b.ipc.clone()).expect("decode");
                (b.rows, batch.num_columns())
            })
            .collect();
        assert_eq!(
            cut,
            vec![(75, 1), (40, 2)],
            "nothing dropped, one schema per batch"
        );
        let all: Vec<i64> = out.iter().flat_map(values).collect();
        assert_eq!(all, (0..115).collect::<Vec<_>>());
        assert_ne!(out[0].schema_fingerprint, out[1].schema_fingerprint);
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_by_age() {
        let limits = Limits {
            max_rows: 1_000_000,
            max_bytes: usize::MAX,
            max_age: Duration::from_millis(200),
        };
        let (tx, rx) = mpsc::channel(16);
        let (otx, mut orx) = mpsc::channel(16);
        let task = tokio::spawn(run(
            "s".into(),
            limits,
            rx,
            otx,
            Arc::new(Metrics::default()),
            None,
        ));
        tx.send(chunk(0, 5).into()).await.expect("send");
        let first = tokio::time::timeout(Duration::from_millis(500), orx.recv())
            .await
            .expect("cut by age within the limit")
            .expect("batch");
        assert_eq!(first.rows, 5);
        drop(tx);
        task.await.expect("join").expect("batcher");
        assert!(orx.recv().await.is_none());
    }
}

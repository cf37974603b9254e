//! The bronze lander: buffers accepted batches per table, writes them as Parquet data files
//! and commits them to Iceberg with progress tokens, then acknowledges them.
//!
//! One task owns all table state, so deduplication decisions are never racy. Commits run in
//! their own task, one at a time per table, while new batches keep arriving for the next
//! commit. A commit is retried until it succeeds; nothing it holds is acknowledged before.
//! Each attempt starts from the table as the catalog has it and leaves out what the
//! table's marks show is already landed (by an earlier attempt, or by another processor
//! reading the same Kafka partition), so nothing is ever appended twice. An agent's batch
//! is landed or not as a whole; a run of plain JSON messages is numbered row by row (by
//! offset), so the part of it a table already holds is cut off and the rest landed.

use std::sync::Arc;

use arrow_array::RecordBatch;
use iceberg::Catalog;
use sluice_protocol::Envelope;
use tokio::sync::{mpsc, oneshot};

use crate::lake::CatalogSwap;
use crate::lake::locks::CommitLocks;
use crate::lake::marks::{Marks, Partition, ProgressError};
use crate::land::inflight::InFlight;
use crate::land::{LanderConfig, SchemaPolicy, Streams};
use crate::telemetry::metrics::Metrics;

/// The final word on a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The batch is in its table now (the rows of it the table lacked, if it held some).
    Committed,
    /// The table already held every row of the batch; nothing was added.
    Duplicate,
    /// The batch did not fit its table and is kept in the stream's quarantine table,
    /// for the reason given; `sluice-processor quarantine replay` lands it later.
    Quarantined(String),
    /// The batch will never land (its columns do not fit the table, or cannot make one);
    /// the reason is for the sender. Sending it again does not help.
    Rejected(String),
}

/// A batch handed to the lander.
pub struct LandRequest {
    /// Who sent the batch and where it goes: agent, stream (the table), sequence. A JSON
    /// topic's rows carry one made up from their topic partition and offsets.
    pub envelope: Envelope,
    /// The rows, already checked against the envelope; the lander maps their columns onto
    /// the table's.
    pub batch: RecordBatch,
    /// Size of the batch on the wire (Arrow IPC bytes); drives the commit size threshold.
    pub wire_bytes: usize,
    /// When the processor received it, microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The Kafka message it came in, if it came from Kafka.
    pub origin: Option<Origin>,
    /// Whether a batch that never can land in its table goes to quarantine (what the
    /// receivers ask) or is refused (a replay from quarantine, which must not go there
    /// twice).
    pub quarantine: bool,
    /// Where the verdict goes. Dropped without one when the lander cannot take the batch
    /// now (its table cannot be loaded): the sender must send it again.
    pub reply: oneshot::Sender<Verdict>,
}

impl LandRequest {
    /// The number of the batch's first row: its sequence, unless its rows are numbered
    /// one by one.
    pub(super) fn first_seq(&self) -> u64 {
        match &self.origin {
            Some(Origin::Rows { offsets, .. }) => offsets
                .first()
                .map_or(self.envelope.seq, |o| u64::try_from(*o).unwrap_or(0) + 1),
            _ => self.envelope.seq,
        }
    }
}

/// Where a batch consumed from Kafka was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An agent's batch, carried whole by one message.
    Message {
        /// The topic partition.
        partition: Partition,
        /// The message's offset in it.
        offset: i64,
    },
    /// One row per message, in offset order (plain JSON topics, dead letters). Each row
    /// is numbered by its offset + 1 (the envelope's sequence is the last row's), so the
    /// rows a table already holds are recognised one by one.
    Rows {
        /// The topic partition.
        partition: Partition,
        /// One offset per row of the batch, rising.
        offsets: Vec<i64>,
    },
}

impl Origin {
    /// The topic partition the batch was read from.
    pub fn partition(&self) -> &Partition {
        match self {
            Self::Message { partition, .. } | Self::Rows { partition, .. } => partition,
        }
    }

    /// The offsets of the messages the batch came in.
    pub fn offsets(&self) -> &[i64] {
        match self {
            Self::Message { offset, .. } => std::slice::from_ref(offset),
            Self::Rows { offsets, .. } => offsets,
        }
    }
}

/// Why the lander could not say what a table holds.
#[derive(Debug, thiserror::Error)]
pub enum LanderError {
    /// The lander task is gone: the processor is stopping.
    #[error("lander stopped")]
    Stopped,
    /// The table could not be loaded from the catalog.
    #[error("cannot load table {table}: {source}")]
    Load {
        /// `namespace.table`.
        table: String,
        /// What the catalog said.
        source: iceberg::Error,
    },
    /// The tables of the lander's namespace could not be listed.
    #[error("cannot list the tables of {namespace}: {source}")]
    List {
        /// The lander's namespace (`[lander] namespace`).
        namespace: String,
        /// What the catalog said.
        source: iceberg::Error,
    },
    /// A table's marks could not be read.
    #[error("cannot read the marks of table {table}: {source}")]
    Marks {
        /// `namespace.table`.
        table: String,
        /// Why they could not be read.
        source: ProgressError,
    },
    /// The table loaded, but its marks or its columns could not be read.
    #[error("{0}")]
    Table(#[source] iceberg::Error),
}

impl LanderError {
    /// Whether asking again may succeed: catalog and storage trouble passes, a stopped
    /// lander or a corrupt mark does not.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Stopped => false,
            Self::Load { .. } | Self::List { .. } | Self::Table(_) => true,
            Self::Marks { source, .. } => source.retryable(),
        }
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Load { .. } | Self::List { .. } | Self::Table(_) => "catalog",
            Self::Marks { source, .. } => source.reason(),
        }
    }
}

/// What the lander task is asked to do.
pub(super) enum Msg {
    Land(LandRequest),
    Mark {
        agent: String,
        stream: String,
        reply: oneshot::Sender<Result<(u64, Option<String>), LanderError>>,
    },
    Flush(oneshot::Sender<()>),
    KafkaMarks(oneshot::Sender<Result<Marks, LanderError>>),
}

/// Cheap handle to the lander task.
#[derive(Clone)]
pub struct Lander {
    tx: mpsc::Sender<Msg>,
    streams: Streams,
}

impl Lander {
    /// Start the lander task. `inflight` tells it which consumed Kafka offsets are not
    /// settled yet (empty when the processor reads no Kafka topic).
    pub fn start(
        catalog: Arc<dyn Catalog>,
        swap: CatalogSwap,
        cfg: LanderConfig,
        streams: Streams,
        metrics: Arc<Metrics>,
        locks: CommitLocks,
        inflight: InFlight,
    ) -> Self {
        Self {
            tx: super::task::spawn(
                catalog,
                swap,
                cfg,
                streams.clone(),
                metrics,
                locks,
                inflight,
            ),
            streams,
        }
    }

    /// Whether `stream`'s table takes new columns (`[streams.NAME] schema`).
    pub fn schema_policy(&self, stream: &str) -> SchemaPolicy {
        self.streams.get(stream).schema
    }

    /// Hand a batch over; the verdict arrives on the request's reply channel.
    pub async fn land(&self, req: LandRequest) -> Result<(), LandRequest> {
        self.tx.send(Msg::Land(req)).await.map_err(|e| match e.0 {
            Msg::Land(r) => r,
            _ => unreachable!("sent a Land message"),
        })
    }

    /// Highest committed sequence for an agent's stream (0 if none), and the source
    /// checkpoint committed with it.
    pub async fn committed_mark(
        &self,
        agent: &str,
        stream: &str,
    ) -> Result<(u64, Option<String>), LanderError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Mark {
                agent: agent.into(),
                stream: stream.into(),
                reply,
            })
            .await
            .map_err(|_| LanderError::Stopped)?;
        rx.await.map_err(|_| LanderError::Stopped)?
    }

    /// The Kafka offset marks of every table in the namespace, merged (the highest per
    /// partition), read afresh from the catalog.
    pub async fn kafka_marks(&self) -> Result<Marks, LanderError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::KafkaMarks(reply))
            .await
            .map_err(|_| LanderError::Stopped)?;
        rx.await.map_err(|_| LanderError::Stopped)?
    }

    /// Commit everything buffered now and wait until it is committed.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

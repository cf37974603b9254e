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
use crate::land::LanderConfig;
use crate::land::inflight::InFlight;
use crate::telemetry::metrics::Metrics;

/// The final word on a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Committed,
    Duplicate,
    Rejected(String),
}

/// A batch handed to the lander.
pub struct LandRequest {
    pub envelope: Envelope,
    pub batch: RecordBatch,
    /// Size of the batch on the wire (Arrow IPC bytes); drives the commit size threshold.
    pub wire_bytes: usize,
    /// When the processor received it, microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The Kafka message it came in, if it came from Kafka.
    pub origin: Option<Origin>,
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
    Message { partition: Partition, offset: i64 },
    /// One row per message, in offset order (plain JSON topics, dead letters). Each row
    /// is numbered by its offset + 1 (the envelope's sequence is the last row's), so the
    /// rows a table already holds are recognised one by one.
    Rows {
        partition: Partition,
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
        table: String,
        source: iceberg::Error,
    },
    /// The tables of the lander's namespace could not be listed.
    #[error("cannot list the tables of {namespace}: {source}")]
    List {
        namespace: String,
        source: iceberg::Error,
    },
    /// A table's marks could not be read.
    #[error("cannot read the marks of table {table}: {source}")]
    Marks {
        table: String,
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
}

impl Lander {
    /// Start the lander task. `inflight` tells it which consumed Kafka offsets are not
    /// settled yet (empty when the processor reads no Kafka topic).
    pub fn start(
        catalog: Arc<dyn Catalog>,
        swap: CatalogSwap,
        cfg: LanderConfig,
        metrics: Arc<Metrics>,
        locks: CommitLocks,
        inflight: InFlight,
    ) -> Self {
        Self {
            tx: super::task::spawn(catalog, swap, cfg, metrics, locks, inflight),
        }
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

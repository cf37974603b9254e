//! Replaying quarantine: a stream's quarantined batches landed again, in each agent's order,
//! once the table or the config lets them fit. Each lands exactly once: under the agent's
//! id with [`REPLAY_SUFFIX`], whose marks record what is replayed; a batch that still does
//! not fit stops its agent's replay there, so a later run takes it up in order.

use std::collections::BTreeMap;

use iceberg::Catalog;
use sluice_protocol::Envelope;
use tokio::sync::oneshot;

use super::lander::{LandRequest, Lander, Verdict};
use super::quarantine::{self, QuarantineError, Quarantined};
use crate::lake;

/// Appended to an agent's id in the rows it lands by replay (`_agent`) and in their marks.
pub const REPLAY_SUFFIX: &str = "/replay";

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplayReport {
    /// The quarantine table read.
    pub table: String,
    /// Batches in it.
    pub batches: usize,
    /// Batches landed now, and their rows.
    pub replayed: usize,
    /// Rows of those batches.
    pub rows: u64,
    /// Batches a replay before had landed.
    pub already: usize,
    /// Batches that still do not fit: agent, sequence, why.
    pub refused: Vec<(String, u64, String)>,
    /// Batches left for later behind one that does not fit (same agent).
    pub held_back: usize,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The quarantine table could not be read.
    #[error("cannot read {table}: {source}")]
    Read {
        /// The quarantine table.
        table: String,
        /// What the lake said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A row is no quarantined batch.
    #[error(transparent)]
    Row(#[from] QuarantineError),
    /// The lander stopped.
    #[error("the lander stopped")]
    Stopped,
}

impl ReplayError {
    /// Whether running the replay again may succeed: storage trouble passes.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Stopped)
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Read { .. } => "storage",
            Self::Row(_) => "corrupt",
            Self::Stopped => "stopped",
        }
    }
}

/// The batches kept in `stream`'s quarantine table, in each agent's order.
pub async fn quarantined(
    catalog: &dyn Catalog,
    stream: &str,
) -> Result<Vec<Quarantined>, ReplayError> {
    let name = quarantine::table_name(stream);
    let read = |source: Box<dyn std::error::Error + Send + Sync>| ReplayError::Read {
        table: format!("{}.{name}", quarantine::NAMESPACE),
        source,
    };
    let Some(table) = lake::load_if_exists(catalog, quarantine::NAMESPACE, &name)
        .await
        .map_err(|e| read(e.into()))?
    else {
        return Ok(Vec::new());
    };
    let files = lake::live_files(&table).await.map_err(|e| read(e.into()))?;
    // Keyed by agent and sequence: in order, and each batch once.
    let mut all = BTreeMap::new();
    for rows in lake::read_data_files(&table, &files)
        .await
        .map_err(|e| read(e.into()))?
    {
        for q in quarantine::read(&rows)? {
            all.insert((q.agent.clone(), q.seq), q);
        }
    }
    Ok(all.into_values().collect())
}

/// Land `stream`'s quarantined batches through `lander`, each agent's in order.
pub async fn replay(
    catalog: &dyn Catalog,
    lander: &Lander,
    stream: &str,
) -> Result<ReplayReport, ReplayError> {
    let batches = quarantined(catalog, stream).await?;
    let mut report = ReplayReport {
        table: format!(
            "{}.{}",
            quarantine::NAMESPACE,
            quarantine::table_name(stream)
        ),
        batches: batches.len(),
        ..Default::default()
    };
    let mut verdicts = Vec::with_capacity(batches.len());
    for q in batches {
        let (reply, verdict) = oneshot::channel();
        let rows = q.batch.num_rows();
        let req = LandRequest {
            envelope: Envelope {
                agent: format!("{}{REPLAY_SUFFIX}", q.agent),
                stream: stream.to_string(),
                seq: q.seq,
                schema_fingerprint: sluice_protocol::schema_fingerprint(&q.batch.schema()),
                created_at_us: q.created_at_us,
                rows: u32::try_from(rows).unwrap_or(u32::MAX),
                checkpoint: None,
            },
            wire_bytes: q.batch.get_array_memory_size(),
            batch: q.batch,
            received_at_us: chrono::Utc::now().timestamp_micros(),
            origin: None,
            quarantine: false,
            reply,
        };
        lander.land(req).await.map_err(|_| ReplayError::Stopped)?;
        verdicts.push((q.agent, q.seq, rows, verdict));
    }
    lander.flush().await;
    for (agent, seq, rows, verdict) in verdicts {
        match verdict.await {
            Ok(Verdict::Committed) => {
                report.replayed += 1;
                report.rows += rows as u64;
            }
            Ok(Verdict::Duplicate) => report.already += 1,
            Ok(Verdict::Rejected(why) | Verdict::Quarantined(why)) => {
                report.refused.push((agent, seq, why));
            }
            // Not taken: an earlier batch of the agent still does not fit.
            Err(_) => report.held_back += 1,
        }
    }
    Ok(report)
}

//! Replaying quarantine: a stream's quarantined batches landed again, in each agent's order,
//! once the table or the config lets them fit. Each lands exactly once: under the agent's
//! id with [`REPLAY_SUFFIX`], whose marks record what is replayed; a batch that still does
//! not fit stops its agent's replay there, so a later run takes it up in order.

use std::collections::{BTreeMap, BTreeSet};

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

/// A stream's quarantine table, read one data file at a time: however much it holds, a
/// listing or a replay keeps one file's batches in memory, and a few words per batch.
pub struct QuarantineTable {
    name: String,
    table: iceberg::table::Table,
    files: Vec<iceberg::spec::DataFile>,
}

impl QuarantineTable {
    /// `stream`'s quarantine table as of now, if it has one.
    pub async fn open(catalog: &dyn Catalog, stream: &str) -> Result<Option<Self>, ReplayError> {
        let name = format!(
            "{}.{}",
            quarantine::NAMESPACE,
            quarantine::table_name(stream)
        );
        let Some(table) = lake::load_if_exists(
            catalog,
            quarantine::NAMESPACE,
            &quarantine::table_name(stream),
        )
        .await
        .map_err(|e| read_error(&name, e.into()))?
        else {
            return Ok(None);
        };
        let files = lake::live_files(&table)
            .await
            .map_err(|e| read_error(&name, e.into()))?;
        Ok(Some(Self { name, table, files }))
    }

    /// How many data files it has.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// The batches of data file `i` (below [`Self::files`]), their rows still encoded.
    pub async fn read(&self, i: usize) -> Result<Vec<Quarantined>, ReplayError> {
        let mut out = Vec::new();
        for rows in lake::read_data_files(&self.table, &self.files[i..=i])
            .await
            .map_err(|e| read_error(&self.name, e.into()))?
        {
            out.extend(quarantine::read(&rows)?);
        }
        Ok(out)
    }
}

fn read_error(table: &str, source: Box<dyn std::error::Error + Send + Sync>) -> ReplayError {
    ReplayError::Read {
        table: table.to_string(),
        source,
    }
}

/// Land `stream`'s quarantined batches through `lander`, each agent's in order.
pub async fn replay(
    catalog: &dyn Catalog,
    lander: &Lander,
    stream: &str,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport {
        table: format!(
            "{}.{}",
            quarantine::NAMESPACE,
            quarantine::table_name(stream)
        ),
        ..Default::default()
    };
    let Some(table) = QuarantineTable::open(catalog, stream).await? else {
        return Ok(report);
    };
    let mut verdicts = Vec::new();
    let mut refused = Vec::new();
    let (batches, left) = in_order(
        table.files(),
        async |file| table.read(file).await,
        async |q: Quarantined| {
            let batch = match q.batch() {
                Ok(batch) => batch,
                Err(e) => {
                    refused.push((q.agent, q.seq, e.to_string()));
                    return Ok(false);
                }
            };
            let (reply, verdict) = oneshot::channel();
            let req = LandRequest {
                envelope: Envelope {
                    agent: format!("{}{REPLAY_SUFFIX}", q.agent),
                    stream: stream.to_string(),
                    seq: q.seq,
                    schema_fingerprint: sluice_protocol::schema_fingerprint(&batch.schema()),
                    created_at_us: q.created_at_us,
                    rows: u32::try_from(batch.num_rows()).unwrap_or(u32::MAX),
                    checkpoint: None,
                },
                wire_bytes: q.payload.len(),
                batch,
                received_at_us: chrono::Utc::now().timestamp_micros(),
                origin: None,
                quarantine: false,
                reply,
            };
            lander.land(req).await.map_err(|_| ReplayError::Stopped)?;
            verdicts.push((q.agent, q.seq, q.rows, verdict));
            Ok(true)
        },
    )
    .await?;
    report.batches = batches;
    report.held_back = left;
    report.refused = refused;
    lander.flush().await;
    for (agent, seq, rows, verdict) in verdicts {
        match verdict.await {
            Ok(Verdict::Committed) => {
                report.replayed += 1;
                report.rows += rows;
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

/// Hand the quarantined batches of `files` files to `take`, each agent's in the order of
/// their sequences; `take` answers false for a batch that can never land, and that
/// agent's later batches are then left. Returns how many batches there are and how many
/// were left.
///
/// A first pass over the files learns each agent's sequences and the file of each; then
/// the files holding an agent's next batch are read again, and the batches that come next
/// for their agent are taken. Quarantine is appended in arrival order, so one such pass is
/// the rule; a file is read once more only when an agent's batches lie in files out of
/// their order (after a compaction, say). Memory holds one file's batches, and a few words
/// per batch.
async fn in_order(
    files: usize,
    mut read: impl AsyncFnMut(usize) -> Result<Vec<Quarantined>, ReplayError>,
    mut take: impl AsyncFnMut(Quarantined) -> Result<bool, ReplayError>,
) -> Result<(usize, usize), ReplayError> {
    // Per agent, its sequences and the file each is in, the next one last (a batch kept
    // twice is taken from the first file that holds it).
    let mut order: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    for file in 0..files {
        for q in read(file).await? {
            order.entry(q.agent).or_default().push((q.seq, file));
        }
    }
    for queue in order.values_mut() {
        queue.sort_unstable();
        queue.dedup_by_key(|&mut (seq, _)| seq);
        queue.reverse();
    }
    let total = order.values().map(Vec::len).sum();
    let mut left = 0;
    loop {
        let next: BTreeSet<usize> = order
            .values()
            .filter_map(|q| q.last().map(|&(_, file)| file))
            .collect();
        if next.is_empty() {
            break;
        }
        let mut took_any = false;
        for file in next {
            let mut batches = read(file).await?;
            batches.sort_unstable_by(|a, b| (&a.agent, a.seq).cmp(&(&b.agent, b.seq)));
            for q in batches {
                let Some(queue) = order.get_mut(&q.agent) else {
                    continue;
                };
                if queue.last() != Some(&(q.seq, file)) {
                    continue;
                }
                queue.pop();
                took_any = true;
                let agent = q.agent.clone();
                if !take(q).await?
                    && let Some(queue) = order.get_mut(&agent)
                {
                    left += queue.len();
                    queue.clear();
                }
            }
        }
        if !took_any {
            // The files no longer hold what the first pass read (the table changed under
            // the replay): what is left waits for the next run.
            left += order.values().map(Vec::len).sum::<usize>();
            break;
        }
    }
    Ok((total, left))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(agent: &str, seq: u64) -> Quarantined {
        Quarantined {
            agent: agent.into(),
            seq,
            reason: String::new(),
            rows: 1,
            created_at_us: 0,
            checkpoint: None,
            payload: bytes::Bytes::new(),
        }
    }

    #[tokio::test]
    async fn each_agents_batches_are_taken_in_order_whatever_files_hold_them() {
        // Agent a's batches lie in files against their order, b's along it; c's batch 2
        // can never land, so its 3 is left; a batch kept twice is taken once.
        let files = [
            vec![kept("a", 3), kept("b", 1), kept("c", 2)],
            vec![kept("a", 2), kept("b", 2), kept("c", 3)],
            vec![kept("a", 1), kept("b", 2)],
        ];
        let mut reads = Vec::new();
        let mut taken = Vec::new();
        let (total, left) = in_order(
            files.len(),
            async |i| {
                reads.push(i);
                Ok(files[i].iter().map(|q| kept(&q.agent, q.seq)).collect())
            },
            async |q: Quarantined| {
                taken.push((q.agent.clone(), q.seq));
                Ok(q.agent != "c")
            },
        )
        .await
        .expect("in order");
        assert_eq!((total, left), (7, 1));
        let of = |agent: &str| {
            taken
                .iter()
                .filter(|(a, _)| a == agent)
                .map(|&(_, s)| s)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("a"), [1, 2, 3]);
        assert_eq!(of("b"), [1, 2]);
        assert_eq!(of("c"), [2]);
        // The index pass, then one pass per inversion of a's order.
        assert_eq!(reads, [0, 1, 2, 0, 2, 1, 0]);
    }
}

//! What the processor's status report (`GET /api/status`) shows:
//! - the agents sending to it, with the streams they write, when each was last seen, and its
//!   rows and rate;
//! - the tables of the catalog, with rows, files, snapshots, manifests, metadata size and
//!   freshness;
//! - the landing rate and the worst freshness, sampled every 10 s over the last hour.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::lake::TableStats;

/// How often the tables are read and the history sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: an hour's worth.
const HISTORY: usize = 360;
/// An agent's rate is over this many samples (a minute).
const RATE_SAMPLES: usize = 6;
/// Agents not seen for this long leave the report, so it does not grow with every agent
/// that ever sent.
const FORGET_AGENTS_AFTER_MS: i64 = 3600 * 1000;

/// How a batch reached the processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Straight from the agent, over QUIC.
    Quic,
    /// Through a Kafka topic: an agent's Kafka sink, or a plain JSON topic.
    Kafka,
}

/// The status report's state, fed by the lander (batches) and the sampler (tables).
#[derive(Default)]
pub struct Status(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    agents: BTreeMap<String, Agent>,
    tables: Vec<TableStats>,
    history: VecDeque<Sample>,
    /// Rows committed in all, at the last sample.
    committed_then: Option<(i64, u64)>,
}

struct Agent {
    via: Via,
    streams: BTreeSet<String>,
    last_seen_ms: i64,
    rows: u64,
    bytes: u64,
    /// Rows at the last few samples, oldest first: the rate is over them.
    rows_then: VecDeque<(i64, u64)>,
}

/// One point of the history.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When it was taken, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Rows committed per second, over all tables, since the sample before.
    pub rows_per_second: f64,
    /// The worst freshness of the bronze tables this processor lands, if any.
    pub freshness_seconds: Option<f64>,
}

/// An agent, as the report shows it.
#[derive(Debug, Serialize)]
pub struct AgentReport {
    /// The agent's name (a plain JSON topic's rows: their topic partition).
    pub agent: String,
    /// How its latest batch arrived.
    pub via: Via,
    /// Tables it sent batches to (`namespace.table`), sorted.
    pub streams: Vec<String>,
    /// When its latest batch arrived, milliseconds since the Unix epoch.
    pub last_seen_ms: i64,
    /// Seconds from then to the report.
    pub seconds_since_seen: f64,
    /// Rows received from it since this processor started, redeliveries included (from 0
    /// again once it was silent for an hour and forgotten).
    pub rows: u64,
    /// Arrow IPC bytes received with those rows.
    pub bytes: u64,
    /// Rows received per second over the last minute.
    pub rows_per_second: f64,
}

/// A table, as the report shows it.
#[derive(Debug, Serialize)]
pub struct TableReport {
    /// The table as of the last sample; its fields are the report's own in the JSON.
    #[serde(flatten)]
    pub stats: TableStats,
    /// Now minus the newest committed `_ingested_at` (bronze tables this processor lands).
    pub freshness_seconds: Option<f64>,
}

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// When the report was made, milliseconds since the Unix epoch.
    pub now_ms: i64,
    /// Agents seen in the last hour, by name.
    pub agents: Vec<AgentReport>,
    /// Every table of the catalog, as of the last sample.
    pub tables: Vec<TableReport>,
    /// The samples of the last hour, oldest first.
    pub history: Vec<Sample>,
}

impl Status {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// `agent` sent a batch of `stream` with `rows` rows, `bytes` on the wire.
    pub fn batch(&self, agent: &str, stream: &str, rows: usize, bytes: usize, via: Via) {
        let now = chrono::Utc::now().timestamp_millis();
        self.with(|s| {
            let a = s.agents.entry(agent.to_string()).or_insert_with(|| Agent {
                via,
                streams: BTreeSet::new(),
                last_seen_ms: now,
                rows: 0,
                bytes: 0,
                rows_then: VecDeque::new(),
            });
            if !a.streams.contains(stream) {
                a.streams.insert(stream.to_string());
            }
            a.via = via;
            a.last_seen_ms = now;
            a.rows += rows as u64;
            a.bytes += bytes as u64;
        });
    }

    /// Take a sample: the tables as read now (`None`: they could not be read, keep the
    /// last), rows committed in all so far, the worst freshness now.
    pub fn sample(&self, tables: Option<Vec<TableStats>>, committed: u64, freshness: Option<f64>) {
        let now = chrono::Utc::now().timestamp_millis();
        self.with(|s| {
            let rows_per_second = match s.committed_then {
                Some((at, rows)) if now > at => {
                    committed.saturating_sub(rows) as f64 / ((now - at) as f64 / 1e3)
                }
                _ => 0.0,
            };
            s.committed_then = Some((now, committed));
            if s.history.len() == HISTORY {
                s.history.pop_front();
            }
            s.history.push_back(Sample {
                at_ms: now,
                rows_per_second,
                freshness_seconds: freshness,
            });
            if let Some(tables) = tables {
                s.tables = tables;
            }
            s.agents
                .retain(|_, a| now - a.last_seen_ms < FORGET_AGENTS_AFTER_MS);
            for a in s.agents.values_mut() {
                if a.rows_then.len() == RATE_SAMPLES {
                    a.rows_then.pop_front();
                }
                a.rows_then.push_back((now, a.rows));
            }
        });
    }

    /// The report, with each bronze table's `freshness` (seconds, by qualified name).
    pub fn report(&self, freshness: &[(String, f64)]) -> Report {
        let now = chrono::Utc::now().timestamp_millis();
        self.with(|s| Report {
            now_ms: now,
            agents: s
                .agents
                .iter()
                .map(|(name, a)| AgentReport {
                    agent: name.clone(),
                    via: a.via,
                    streams: a.streams.iter().cloned().collect(),
                    last_seen_ms: a.last_seen_ms,
                    seconds_since_seen: (now - a.last_seen_ms).max(0) as f64 / 1e3,
                    rows: a.rows,
                    bytes: a.bytes,
                    rows_per_second: match a.rows_then.front() {
                        Some(&(at, rows)) if now > at => {
                            a.rows.saturating_sub(rows) as f64 / ((now - at) as f64 / 1e3)
                        }
                        _ => 0.0,
                    },
                })
                .collect(),
            tables: s
                .tables
                .iter()
                .map(|t| TableReport {
                    stats: t.clone(),
                    freshness_seconds: freshness
                        .iter()
                        .find(|(name, _)| *name == t.table)
                        .map(|(_, f)| *f),
                })
                .collect(),
            history: s.history.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, rows: u64) -> TableStats {
        TableStats {
            table: name.into(),
            rows,
            data_files: 1,
            bytes: 10,
            snapshots: 2,
            manifests: 1,
            metadata_files: 4,
            metadata_bytes: 4096,
            current_snapshot_id: Some(7),
            last_commit: None,
            last_commit_ms: None,
        }
    }

    #[test]
    fn agents_tables_and_history() {
        let status = Status::default();
        status.batch("edge-01", "telemetry", 100, 4000, Via::Quic);
        status.batch("edge-01", "logs", 50, 1000, Via::Quic);
        status.batch("app.logs-0", "app_logs", 10, 900, Via::Kafka);
        status.sample(Some(vec![table("bronze.telemetry", 100)]), 150, Some(0.5));
        std::thread::sleep(Duration::from_millis(20));
        status.batch("edge-01", "telemetry", 100, 4000, Via::Quic);
        status.sample(Some(vec![table("bronze.telemetry", 250)]), 250, Some(1.5));
        // A catalog that cannot be read leaves the tables as last read.
        status.sample(None, 250, Some(1.6));
        let r = status.report(&[("bronze.telemetry".into(), 2.0)]);
        assert_eq!(r.agents.len(), 2);
        let edge = r
            .agents
            .iter()
            .find(|a| a.agent == "edge-01")
            .expect("edge");
        assert_eq!(edge.streams, ["logs", "telemetry"]);
        assert_eq!((edge.rows, edge.bytes), (250, 9000));
        assert!(
            edge.rows_per_second > 0.0,
            "100 rows since the first sample"
        );
        assert!(edge.seconds_since_seen < 5.0);
        assert_eq!(r.tables[0].stats.rows, 250);
        assert_eq!(r.tables[0].freshness_seconds, Some(2.0));
        assert_eq!(r.history.len(), 3);
        assert_eq!(r.history[0].rows_per_second, 0.0, "nothing to compare with");
        assert!(r.history[1].rows_per_second > 0.0);
        assert_eq!(r.history[1].freshness_seconds, Some(1.5));
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["tables"][0]["table"], "bronze.telemetry");
        assert_eq!(json["agents"][0]["via"], "kafka");
    }

    #[test]
    fn agents_gone_for_an_hour_leave_the_report() {
        let status = Status::default();
        status.batch("edge-01", "telemetry", 1, 10, Via::Quic);
        status.batch("edge-02", "telemetry", 1, 10, Via::Quic);
        status.with(|s| {
            if let Some(a) = s.agents.get_mut("edge-01") {
                a.last_seen_ms -= FORGET_AGENTS_AFTER_MS;
            }
        });
        status.sample(Some(Vec::new()), 2, None);
        let agents: Vec<String> = status
            .report(&[])
            .agents
            .into_iter()
            .map(|a| a.agent)
            .collect();
        assert_eq!(agents, ["edge-02"]);
    }

    #[test]
    fn the_history_keeps_an_hour() {
        let status = Status::default();
        for i in 0..(HISTORY as u64 + 5) {
            status.sample(Some(Vec::new()), i, None);
        }
        assert_eq!(status.report(&[]).history.len(), HISTORY);
    }
}

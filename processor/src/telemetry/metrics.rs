//! The processor's counters, exposed in Prometheus text format on `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableReasonLabels {
    table: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOutcomeLabels {
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelRuleLabels {
    model: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MaintenanceLabels {
    table: String,
    task: String,
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~60 s in 25% steps: fine enough to read p50/p99 off the buckets.
    Histogram::new(exponential_buckets(0.001, 1.25, 50))
}

/// Every counter the processor keeps.
pub struct Metrics {
    /// What `/health` and `/ready` report: tables whose commits are stuck, the catalog.
    pub health: sluice_ops::Health,
    /// What `/api/status` reports: agents, tables, history.
    pub status: crate::telemetry::status::Status,
    /// Rows committed to all tables, for the status history.
    committed_total: AtomicU64,
    registry: Registry,
    connections: Counter,
    connections_rejected: Family<ReasonLabels, Counter>,
    api_refused: Family<ReasonLabels, Counter>,
    queries: Family<OutcomeLabels, Counter>,
    lanes_refused: Family<ReasonLabels, Counter>,
    connections_open: Gauge,
    frames_rejected: Family<ReasonLabels, Counter>,
    batches_received: Family<TableLabels, Counter>,
    rows_received: Family<TableLabels, Counter>,
    bytes_received: Family<TableLabels, Counter>,
    rows_rejected: Family<TableReasonLabels, Counter>,
    rows_quarantined: Family<TableReasonLabels, Counter>,
    /// Per bronze table, the newest committed `_ingested_at` (µs), for the freshness gauge.
    newest_ingested_us: Mutex<HashMap<String, i64>>,
    freshness: Family<TableLabels, Gauge<f64, AtomicU64>>,
    table_rows: Family<TableLabels, Gauge>,
    table_files: Family<TableLabels, Gauge>,
    table_bytes: Family<TableLabels, Gauge>,
    table_snapshots: Family<TableLabels, Gauge>,
    table_last_commit: Family<TableLabels, Gauge<f64, AtomicU64>>,
    batches_duplicate: Family<TableLabels, Counter>,
    rows_duplicate: Family<TableLabels, Counter>,
    batches_rejected: Family<TableReasonLabels, Counter>,
    batches_quarantined: Family<TableReasonLabels, Counter>,
    rows_committed: Family<TableLabels, Counter>,
    bytes_committed: Family<TableLabels, Counter>,
    commits: Family<TableLabels, Counter>,
    commit_failures: Family<TableReasonLabels, Counter>,
    commit_seconds: Family<TableLabels, Histogram, fn() -> Histogram>,
    batch_latency_seconds: Family<TableLabels, Histogram, fn() -> Histogram>,
    sequence_gaps: Family<TableLabels, Counter>,
    schema_changes: Family<TableLabels, Counter>,
    model_runs: Family<ModelOutcomeLabels, Counter>,
    model_run_seconds: Family<ModelLabels, Histogram, fn() -> Histogram>,
    model_rows: Family<ModelLabels, Counter>,
    model_quarantined_rows: Family<ModelRuleLabels, Counter>,
    maintenance_runs: Family<MaintenanceLabels, Counter>,
    manifests_merged: Family<TableLabels, Counter>,
    snapshots_expired: Family<TableLabels, Counter>,
    expired_files_removed: Family<TableLabels, Counter>,
    table_manifests: Family<TableLabels, Gauge>,
    table_metadata_bytes: Family<TableLabels, Gauge>,
    table_metadata_files: Family<TableLabels, Gauge>,
    storage_read: Counter,
    data_files_opened: Counter,
    storage_written: Counter,
    kafka_messages: Family<TopicLabels, Counter>,
    kafka_rebalances: Family<KindLabels, Counter>,
    kafka_dead_letters: Family<TopicLabels, Counter>,
    kafka_unverified: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            health: sluice_ops::health_for(None),
            status: crate::telemetry::status::Status::default(),
            committed_total: AtomicU64::new(0),
            registry: Registry::default(),
            connections: Counter::default(),
            connections_rejected: Family::default(),
            api_refused: Family::default(),
            queries: Family::default(),
            lanes_refused: Family::default(),
            connections_open: Gauge::default(),
            frames_rejected: Family::default(),
            batches_received: Family::default(),
            rows_received: Family::default(),
            bytes_received: Family::default(),
            rows_rejected: Family::default(),
            rows_quarantined: Family::default(),
            newest_ingested_us: Mutex::default(),
            freshness: Family::default(),
            table_rows: Family::default(),
            table_files: Family::default(),
            table_bytes: Family::default(),
            table_snapshots: Family::default(),
            table_last_commit: Family::default(),
            batches_duplicate: Family::default(),
            rows_duplicate: Family::default(),
            batches_rejected: Family::default(),
            batches_quarantined: Family::default(),
            rows_committed: Family::default(),
            bytes_committed: Family::default(),
            commits: Family::default(),
            commit_failures: Family::default(),
            commit_seconds: Family::new_with_constructor(latency_histogram),
            batch_latency_seconds: Family::new_with_constructor(latency_histogram),
            sequence_gaps: Family::default(),
            schema_changes: Family::default(),
            model_runs: Family::default(),
            model_run_seconds: Family::new_with_constructor(latency_histogram),
            model_rows: Family::default(),
            model_quarantined_rows: Family::default(),
            maintenance_runs: Family::default(),
            manifests_merged: Family::default(),
            snapshots_expired: Family::default(),
            expired_files_removed: Family::default(),
            table_manifests: Family::default(),
            table_metadata_bytes: Family::default(),
            table_metadata_files: Family::default(),
            storage_read: crate::lake::storage::READ_BYTES.clone(),
            data_files_opened: crate::lake::storage::DATA_FILES_OPENED.clone(),
            storage_written: crate::lake::storage::WRITTEN_BYTES.clone(),
            kafka_messages: Family::default(),
            kafka_rebalances: Family::default(),
            kafka_dead_letters: Family::default(),
            kafka_unverified: Family::default(),
        };
        let mut r = Registry::with_prefix("sluice_processor");
        r.register(
            "connections",
            "Agent connections accepted",
            m.connections.clone(),
        );
        r.register(
            "kafka_messages",
            "Kafka messages consumed, by topic (re-reads included)",
            m.kafka_messages.clone(),
        );
        r.register(
            "kafka_dead_letters",
            "Kafka messages sent to the dead-letter table, by topic",
            m.kafka_dead_letters.clone(),
        );
        r.register(
            "kafka_rebalances",
            "Consumer group rebalances seen, by kind (assign, revoke)",
            m.kafka_rebalances.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections refused during the handshake, by reason",
            m.connections_rejected.clone(),
        );
        r.register(
            "api_refused_requests",
            "HTTP requests refused (no or unknown token, missing role, foreign host or origin, \
             not JSON), by reason",
            m.api_refused.clone(),
        );
        r.register(
            "queries",
            "Queries run through the API, by outcome (ok, refused: not a read, busy, memory, \
             timeout, error: the SQL failed)",
            m.queries.clone(),
        );
        r.register(
            "kafka_unverified_batches",
            "Kafka batches dead-lettered because their signature does not prove their agent \
             (unsigned, untrusted_certificate, wrong_agent, unsupported_scheme, bad_signature)",
            m.kafka_unverified.clone(),
        );
        r.register(
            "lanes_refused",
            "Lanes (QUIC) and batches (Kafka) refused because the agent may not write the stream, by reason",
            m.lanes_refused.clone(),
        );
        r.register(
            "connections_open",
            "Agent connections open now",
            m.connections_open.clone(),
        );
        r.register(
            "frames_rejected",
            "Frames refused (malformed, unexpected or invalid), by reason",
            m.frames_rejected.clone(),
        );
        r.register(
            "batches_received",
            "Batches received per table",
            m.batches_received.clone(),
        );
        r.register(
            "received_rows",
            "Rows received per table (redeliveries included)",
            m.rows_received.clone(),
        );
        r.register(
            "received_bytes",
            "Arrow IPC bytes received per table (redeliveries included)",
            m.bytes_received.clone(),
        );
        r.register(
            "rejected_rows",
            "Rows refused, by table and reason",
            m.rows_rejected.clone(),
        );
        r.register(
            "table_freshness_seconds",
            "Now minus the newest committed _ingested_at, per bronze table this processor lands",
            m.freshness.clone(),
        );
        r.register(
            "table_rows",
            "Rows in each table's current snapshot (refreshed every 10 s)",
            m.table_rows.clone(),
        );
        r.register(
            "table_data_files",
            "Data files in each table's current snapshot (refreshed every 10 s)",
            m.table_files.clone(),
        );
        r.register(
            "table_size_bytes",
            "Size of each table's data files (refreshed every 10 s)",
            m.table_bytes.clone(),
        );
        r.register(
            "table_snapshots",
            "Snapshots each table keeps (refreshed every 10 s)",
            m.table_snapshots.clone(),
        );
        r.register(
            "table_last_commit_timestamp_seconds",
            "Time of each table's latest snapshot, seconds since the Unix epoch (refreshed every 10 s)",
            m.table_last_commit.clone(),
        );
        r.register(
            "batches_duplicate",
            "Batches already committed (redeliveries), acknowledged without writing",
            m.batches_duplicate.clone(),
        );
        r.register(
            "duplicate_rows",
            "Rows the table already held, left out: those of duplicate batches, and the landed part of a run of JSON messages read again",
            m.rows_duplicate.clone(),
        );
        r.register(
            "batches_rejected",
            "Batches refused, by table and reason",
            m.batches_rejected.clone(),
        );
        r.register(
            "batches_quarantined",
            "Batches that did not fit their table, kept in its quarantine table, by table and reason",
            m.batches_quarantined.clone(),
        );
        r.register(
            "quarantined_rows",
            "Rows of quarantined batches, by table and reason",
            m.rows_quarantined.clone(),
        );
        r.register(
            "committed_rows",
            "Rows committed per table",
            m.rows_committed.clone(),
        );
        r.register(
            "committed_bytes",
            "Arrow IPC bytes committed per table",
            m.bytes_committed.clone(),
        );
        r.register("commits", "Iceberg commits per table", m.commits.clone());
        r.register(
            "commit_failures",
            "Failed commit attempts (retried), by table and reason",
            m.commit_failures.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Time to write data files and commit a snapshot",
            m.commit_seconds.clone(),
        );
        r.register(
            "batch_latency_seconds",
            "Time from batch creation on the agent to its Iceberg commit",
            m.batch_latency_seconds.clone(),
        );
        r.register(
            "sequence_gaps",
            "Batches that skipped sequence numbers (data lost before reaching the processor)",
            m.sequence_gaps.clone(),
        );
        r.register(
            "schema_changes",
            "Schema changes this processor committed to a table (columns added, types widened)",
            m.schema_changes.clone(),
        );
        r.register(
            "model_runs",
            "Model runs by outcome (ran, up_to_date, waiting, error)",
            m.model_runs.clone(),
        );
        r.register(
            "model_run_duration_seconds",
            "Time of one model run, reading to commit",
            m.model_run_seconds.clone(),
        );
        r.register(
            "model_rows",
            "Rows a model committed to its target",
            m.model_rows.clone(),
        );
        r.register(
            "model_quarantined_rows",
            "Rows a model sent to quarantine, by failed rule",
            m.model_quarantined_rows.clone(),
        );
        r.register(
            "maintenance_runs",
            "Scheduled maintenance tasks by table, task and outcome",
            m.maintenance_runs.clone(),
        );
        r.register(
            "manifests_merged",
            "Small manifests merged into a commit's new manifest, per table",
            m.manifests_merged.clone(),
        );
        r.register(
            "snapshots_expired",
            "Snapshots expired by scheduled maintenance, per table",
            m.snapshots_expired.clone(),
        );
        r.register(
            "expired_files_removed",
            "Files only expired snapshots used (manifest lists, manifests, replaced data files, marks), removed, per table",
            m.expired_files_removed.clone(),
        );
        r.register(
            "storage_read_bytes",
            "Bytes read from the warehouse (data, manifests, metadata, marks)",
            m.storage_read.clone(),
        );
        r.register(
            "storage_data_files_opened",
            "Parquet data files opened for reading (queries, models, compaction)",
            m.data_files_opened.clone(),
        );
        r.register(
            "storage_written_bytes",
            "Bytes written to the warehouse (data, manifests, metadata, marks)",
            m.storage_written.clone(),
        );
        r.register(
            "table_manifests",
            "Manifests in each table's current manifest list (refreshed every 10 s)",
            m.table_manifests.clone(),
        );
        r.register(
            "table_metadata_bytes",
            "Bytes under each table's metadata/ folder: metadata files, manifest lists, manifests, marks (refreshed every 10 s)",
            m.table_metadata_bytes.clone(),
        );
        r.register(
            "table_metadata_files",
            "Files under each table's metadata/ folder (refreshed every 10 s)",
            m.table_metadata_files.clone(),
        );
        Self { registry: r, ..m }
    }
}

fn table(t: &str) -> TableLabels {
    TableLabels { table: t.into() }
}

impl Metrics {
    /// Metrics with a health of their own (default thresholds), for commands and tests
    /// that serve no `/health`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Metrics reporting to `health`.
    pub fn with_health(health: sluice_ops::Health) -> Arc<Self> {
        Arc::new(Self {
            health,
            ..Self::default()
        })
    }

    /// An agent's connection passed the handshake and is open.
    pub fn connection_opened(&self) {
        self.connections.inc();
        self.connections_open.inc();
    }

    /// An open connection ended, however it ended.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A connection was refused before it opened, for `reason` (`tls_handshake`, `timeout`,
    /// `no_identity`, `too_many_connections`, ...).
    pub fn connection_rejected(&self, reason: &str) {
        self.connections_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// A QUIC lane, or a Kafka batch, was refused because its agent may not write the
    /// stream (`reason` from [`crate::receive::access::Denied::reason`]).
    pub fn lane_refused(&self, reason: &str) {
        self.lanes_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// A frame was refused (malformed, unexpected or invalid), for `reason`.
    pub fn frame_rejected(&self, reason: &str) {
        self.frames_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The lander was handed a batch of `rows` rows and `bytes` Arrow IPC bytes for table
    /// `t`; redeliveries count again.
    pub fn batch_received(&self, t: &str, rows: usize, bytes: usize) {
        let l = table(t);
        self.batches_received.get_or_create(&l).inc();
        self.rows_received.get_or_create(&l).inc_by(rows as u64);
        self.bytes_received.get_or_create(&l).inc_by(bytes as u64);
    }

    /// Table `t` already held a whole batch: acknowledged without writing.
    pub fn batch_duplicate(&self, t: &str) {
        self.batches_duplicate.get_or_create(&table(t)).inc();
    }

    /// `rows` rows of a batch for table `t` were left out as the table already held them.
    pub fn rows_duplicate(&self, t: &str, rows: usize) {
        self.rows_duplicate
            .get_or_create(&table(t))
            .inc_by(rows as u64);
    }

    /// A batch of `rows` rows for table `t` was refused for good, for `reason`.
    pub fn batch_rejected(&self, t: &str, reason: &str, rows: usize) {
        let l = TableReasonLabels {
            table: t.into(),
            reason: reason.into(),
        };
        self.batches_rejected.get_or_create(&l).inc();
        self.rows_rejected.get_or_create(&l).inc_by(rows as u64);
    }

    /// A batch of `rows` rows for table `t` did not fit it, for `reason`, and went to
    /// the stream's quarantine table.
    pub fn batch_quarantined(&self, t: &str, reason: &str, rows: usize) {
        let l = TableReasonLabels {
            table: t.into(),
            reason: reason.into(),
        };
        self.batches_quarantined.get_or_create(&l).inc();
        self.rows_quarantined.get_or_create(&l).inc_by(rows as u64);
    }

    /// Rows of table `t` received at `newest_us` (the `_ingested_at` of the newest) are
    /// committed.
    pub fn ingested(&self, t: &str, newest_us: i64) {
        let mut newest = self
            .newest_ingested_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let e = newest.entry(t.to_string()).or_insert(newest_us);
        *e = (*e).max(newest_us);
    }

    /// What the tables' current snapshots say (see [`crate::http::query::tables`]).
    pub fn table_stats(&self, stats: &[crate::lake::TableStats]) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for s in stats {
            let l = table(&s.table);
            self.table_rows.get_or_create(&l).set(gauge(s.rows));
            self.table_files.get_or_create(&l).set(gauge(s.data_files));
            self.table_bytes.get_or_create(&l).set(gauge(s.bytes));
            self.table_snapshots
                .get_or_create(&l)
                .set(gauge(s.snapshots as u64));
            self.table_manifests
                .get_or_create(&l)
                .set(gauge(s.manifests as u64));
            self.table_metadata_bytes
                .get_or_create(&l)
                .set(gauge(s.metadata_bytes));
            self.table_metadata_files
                .get_or_create(&l)
                .set(gauge(s.metadata_files as u64));
            if let Some(ms) = s.last_commit_ms {
                self.table_last_commit
                    .get_or_create(&l)
                    .set(ms as f64 / 1e3);
            }
        }
    }

    /// Rows the lander committed, to all tables.
    pub fn committed_total(&self) -> u64 {
        self.committed_total.load(Ordering::Relaxed)
    }

    /// Per bronze table this processor lands: now minus the newest committed
    /// `_ingested_at`, in seconds.
    pub fn freshness(&self) -> Vec<(String, f64)> {
        let now = chrono::Utc::now().timestamp_micros();
        let newest = self
            .newest_ingested_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        newest
            .iter()
            .map(|(t, us)| (t.clone(), (now - us).max(0) as f64 / 1e6))
            .collect()
    }

    /// A commit of table `t` added `rows` rows (`bytes` of them as received, in Arrow IPC
    /// bytes), `seconds` after it started writing.
    pub fn committed(&self, t: &str, rows: u64, bytes: u64, seconds: f64) {
        self.committed_total.fetch_add(rows, Ordering::Relaxed);
        let l = table(t);
        self.commits.get_or_create(&l).inc();
        self.rows_committed.get_or_create(&l).inc_by(rows);
        self.bytes_committed.get_or_create(&l).inc_by(bytes);
        self.commit_seconds.get_or_create(&l).observe(seconds);
    }

    /// A batch of table `t` was committed `seconds` after its agent cut it.
    pub fn batch_latency(&self, t: &str, seconds: f64) {
        self.batch_latency_seconds
            .get_or_create(&table(t))
            .observe(seconds);
    }

    /// This processor evolved table `t`'s schema.
    pub fn schema_evolved(&self, t: &str) {
        self.schema_changes.get_or_create(&table(t)).inc();
    }

    /// A commit of table `t` merged `n` manifests into its new one.
    pub fn manifests_merged(&self, t: &str, n: usize) {
        self.manifests_merged
            .get_or_create(&table(t))
            .inc_by(n as u64);
    }

    /// Expiry dropped `snapshots` of table `t` and removed `files` only they used.
    pub fn expired(&self, t: &str, snapshots: usize, files: usize) {
        let l = table(t);
        self.snapshots_expired
            .get_or_create(&l)
            .inc_by(snapshots as u64);
        self.expired_files_removed
            .get_or_create(&l)
            .inc_by(files as u64);
    }

    /// A commit attempt of table `t` failed for `reason`; it is retried.
    pub fn commit_failed(&self, t: &str, reason: &str) {
        self.commit_failures
            .get_or_create(&TableReasonLabels {
                table: t.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A run of `model` ended with `outcome` (`ran`, `up_to_date`, `waiting`, `error`) after
    /// `seconds`, committing `rows` rows and quarantining the counts in `failed` per rule.
    pub fn model_run(
        &self,
        model: &str,
        outcome: &str,
        seconds: f64,
        rows: u64,
        failed: &std::collections::BTreeMap<String, u64>,
    ) {
        self.model_runs
            .get_or_create(&ModelOutcomeLabels {
                model: model.into(),
                outcome: outcome.into(),
            })
            .inc();
        let m = ModelLabels {
            model: model.into(),
        };
        if outcome == "ran" {
            self.model_run_seconds.get_or_create(&m).observe(seconds);
        }
        self.model_rows.get_or_create(&m).inc_by(rows);
        for (rule, n) in failed {
            self.model_quarantined_rows
                .get_or_create(&ModelRuleLabels {
                    model: model.into(),
                    rule: rule.clone(),
                })
                .inc_by(*n);
        }
    }

    /// A scheduled `task` (`expire`, `compact`, `orphans`) on `table` ended with `outcome`
    /// (`ok`, or the error's reason).
    pub fn maintenance_run(&self, table: &str, task: &str, outcome: &str) {
        self.maintenance_runs
            .get_or_create(&MaintenanceLabels {
                table: table.into(),
                task: task.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A message of `topic` was consumed (re-reads included).
    pub fn kafka_message(&self, topic: &str) {
        self.kafka_messages
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc();
    }

    /// A message of `topic` went to the dead-letter table.
    pub fn kafka_dead_letter(&self, topic: &str) {
        self.kafka_dead_letters
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc();
    }

    /// The consumer group rebalanced: `kind` is `assign` or `revoke`.
    pub fn kafka_rebalance(&self, kind: &str) {
        self.kafka_rebalances
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A query through the API ended with `outcome`: `ok`, `refused` (not a read), `busy`,
    /// `memory`, `timeout`, or `error` (the SQL failed).
    pub fn query(&self, outcome: &'static str) {
        self.queries.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A Kafka batch was dead-lettered as its signature does not prove its agent, for
    /// `reason` (`unsigned`, `bad_signature`, ...).
    pub fn kafka_unverified(&self, reason: &str) {
        self.kafka_unverified
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// An agent's batch for table `t` skipped sequence numbers: batches were lost before
    /// they reached the processor.
    pub fn sequence_gap(&self, t: &str) {
        self.sequence_gaps.get_or_create(&table(t)).inc();
    }
}

impl sluice_ops::ApiMetrics for Metrics {
    fn refused(&self, reason: &'static str) {
        self.api_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Prometheus text exposition of every metric.
    fn render(&self) -> String {
        // Freshness moves with the clock: set it as of this scrape.
        for (t, seconds) in self.freshness() {
            self.freshness.get_or_create(&table(&t)).set(seconds);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

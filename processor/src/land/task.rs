//! The lander task. It alone owns every table's state (batches buffered, marks committed
//! and accepted, column mappings), so deduplication decisions are never racy; it starts at
//! most one commit per table at a time, and answers each batch once its commit is in.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use iceberg::Catalog;
use iceberg::table::Table;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::columns::{ColumnError, ColumnSource, map_columns, to_table_batch};
use super::commit::CommitJob;
use super::lander::{LandRequest, LanderError, Msg, Origin, Verdict};
use super::pending::{Landed, Pending};
use crate::lake::locks::CommitLocks;
use crate::lake::marks::{self, Marks, Partition, Stored};
use crate::lake::{self, CatalogSwap, Head};
use crate::land::LanderConfig;
use crate::land::inflight::InFlight;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::status::Via;

/// Start the lander task; it runs until every handle to it is dropped, then finishes the
/// commits in flight.
pub(super) fn spawn(
    catalog: Arc<dyn Catalog>,
    swap: CatalogSwap,
    cfg: LanderConfig,
    metrics: Arc<Metrics>,
    locks: CommitLocks,
    inflight: InFlight,
) -> mpsc::Sender<Msg> {
    let (tx, rx) = mpsc::channel(1024);
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let catalog_health = metrics.health.watch("catalog", "batches");
    let task = LanderTask {
        catalog,
        swap,
        cfg,
        metrics,
        locks,
        tables: HashMap::new(),
        blocked: HashMap::new(),
        inflight,
        done_tx,
        flush_waiters: Vec::new(),
        catalog_health,
    };
    tokio::spawn(task.run(rx, done_rx));
    tx
}

/// What the lander knows and holds of one table.
struct TableState {
    name: String,
    /// The table as this lander last committed or loaded it.
    head: Head,
    schema: SchemaRef,
    /// Column mapping per batch schema fingerprint (or why that schema is refused).
    mappings: HashMap<u64, Result<Arc<Vec<ColumnSource>>, ColumnError>>,
    /// The marks as the head stores them.
    committed: Stored,
    /// Highest sequence accepted per agent, committed or not.
    accepted: Marks,
    pending: Vec<Pending>,
    pending_rows: usize,
    pending_bytes: usize,
    pending_since: Option<Instant>,
    committing: bool,
    /// Rows of the commit in flight.
    committing_rows: usize,
    /// The table's health: rows waiting for a commit, and whether commits go through.
    health: sluice_ops::Watch,
    /// Redeliveries of batches that are accepted but not yet committed.
    waiting_duplicates: Vec<(String, u64, oneshot::Sender<Verdict>)>,
}

impl TableState {
    /// Enough is waiting to commit now rather than at the next interval.
    fn over_threshold(&self, cfg: &LanderConfig) -> bool {
        self.pending_rows >= cfg.commit_max_rows
            || self.pending_bytes as u64 >= cfg.commit_max_bytes.as_u64()
    }

    /// Tell the table's health how many rows wait for a commit.
    fn report_waiting(&self) {
        self.health
            .waiting((self.pending_rows + self.committing_rows) as u64);
    }
}

/// A commit's outcome, sent back to the lander task.
struct CommitDone {
    stream: String,
    head: Head,
    committed: Stored,
    batches: Vec<Pending>,
    /// Per batch: what the table held of it before this commit (the rest is in it).
    landed: Vec<Landed>,
}

/// The lander task's state: every table the lander has touched.
struct LanderTask {
    catalog: Arc<dyn Catalog>,
    swap: CatalogSwap,
    cfg: LanderConfig,
    metrics: Arc<Metrics>,
    locks: CommitLocks,
    tables: HashMap<String, TableState>,
    /// Per (stream, agent), the lowest sequence that could not be taken (its table could
    /// not be loaded): later batches of that agent wait until it is sent again, as taking
    /// them first would make it look like a duplicate.
    blocked: HashMap<(String, String), u64>,
    inflight: InFlight,
    done_tx: mpsc::UnboundedSender<CommitDone>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// Whether tables can be loaded and created.
    catalog_health: sluice_ops::Watch,
}

impl LanderTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut done_rx: mpsc::UnboundedReceiver<CommitDone>,
    ) {
        loop {
            // Sleep until the next table's batches have waited `commit_interval`.
            let due = self.next_due();
            let due = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Land(req)) => self.on_land(req).await,
                    Some(Msg::Mark { agent, stream, reply }) => {
                        let r = self.mark(&agent, &stream).await;
                        let _ = reply.send(r);
                    }
                    Some(Msg::Flush(reply)) => self.on_flush(reply),
                    Some(Msg::KafkaMarks(reply)) => {
                        let _ = reply.send(self.kafka_marks().await);
                    }
                    None => break,
                },
                Some(done) = done_rx.recv() => self.on_commit_done(done),
                _ = due => self.commit_due(),
            }
        }
        // Receivers are gone: finish in-flight commits so their batches are acknowledged.
        while self.tables.values().any(|t| t.committing) {
            match done_rx.recv().await {
                Some(done) => self.on_commit_done(done),
                None => break,
            }
        }
    }

    async fn mark(
        &mut self,
        agent: &str,
        stream: &str,
    ) -> Result<(u64, Option<String>), LanderError> {
        let of = |m: &Marks| (m.get(agent), m.checkpoint(agent).map(str::to_string));
        if let Some(t) = self.tables.get(stream) {
            return Ok(of(&t.committed.marks));
        }
        match lake::load_if_exists(self.catalog.as_ref(), &self.cfg.namespace, stream).await {
            Ok(Some(table)) => {
                let state = self
                    .new_state(stream, table)
                    .await
                    .map_err(LanderError::Table)?;
                let mark = of(&state.committed.marks);
                self.tables.insert(stream.to_string(), state);
                Ok(mark)
            }
            Ok(None) => Ok((0, None)),
            Err(source) => Err(LanderError::Load {
                table: format!("{}.{stream}", self.cfg.namespace),
                source,
            }),
        }
    }

    async fn kafka_marks(&mut self) -> Result<Marks, LanderError> {
        let ns = iceberg::NamespaceIdent::new(self.cfg.namespace.clone());
        let idents = self
            .catalog
            .list_tables(&ns)
            .await
            .map_err(|source| LanderError::List {
                namespace: self.cfg.namespace.clone(),
                source,
            })?;
        let mut all = Marks::default();
        for ident in idents {
            let table =
                self.catalog
                    .load_table(&ident)
                    .await
                    .map_err(|source| LanderError::Load {
                        table: ident.to_string(),
                        source,
                    })?;
            let marks = marks::load(&table)
                .await
                .map_err(|source| LanderError::Marks {
                    table: ident.to_string(),
                    source,
                })?
                .marks;
            // Another processor may have committed since this one last looked: what it
            // landed is known to be landed here too (its next commit reloads the table).
            if let Some(state) = self.tables.get_mut(ident.name()) {
                state.committed.marks.merge(&marks);
                state.accepted.merge(&marks);
            }
            all = all.merged(&marks);
        }
        Ok(all)
    }

    async fn new_state(&self, stream: &str, table: Table) -> Result<TableState, iceberg::Error> {
        let committed = marks::load(&table).await?;
        tracing::info!(
            table = %table.identifier(),
            marks = committed.marks.len(),
            "recovered progress from the table"
        );
        let name = format!("{}.{stream}", self.cfg.namespace);
        Ok(TableState {
            health: self.metrics.health.watch(format!("table {name}"), "rows"),
            committing_rows: 0,
            name,
            schema: lake::table_arrow_schema(&table)?,
            head: Head::new(table),
            mappings: HashMap::new(),
            accepted: committed.marks.clone(),
            committed,
            pending: Vec::new(),
            pending_rows: 0,
            pending_bytes: 0,
            pending_since: None,
            committing: false,
            waiting_duplicates: Vec::new(),
        })
    }

    async fn on_land(&mut self, mut req: LandRequest) {
        let stream = req.envelope.stream.clone();
        let lane = (stream.clone(), req.envelope.agent.clone());
        if let Some(Origin::Rows { offsets, .. }) = &req.origin
            && offsets.len() != req.batch.num_rows()
        {
            let reason = format!(
                "{} offsets for {} rows",
                offsets.len(),
                req.batch.num_rows()
            );
            let _ = req.reply.send(Verdict::Rejected(reason));
            return;
        }
        if let Some(&first) = self.blocked.get(&lane) {
            // A run read again after a rewind may end elsewhere: compare where it starts.
            if req.first_seq() > first {
                // Still waiting for the batch that could not be taken.
                drop(req.reply);
                return;
            }
            self.blocked.remove(&lane);
        }
        if !self.tables.contains_key(&stream) {
            // The batch's fault, not the catalog's: refuse it rather than retry for ever.
            if let Some(reason) = lake::uncreatable(&req.batch.schema()) {
                self.metrics.batch_rejected(
                    &format!("{}.{stream}", self.cfg.namespace),
                    "uncreatable",
                    req.batch.num_rows(),
                );
                let _ = req.reply.send(Verdict::Rejected(format!(
                    "cannot create table {}.{stream}: {reason}",
                    self.cfg.namespace
                )));
                return;
            }
            let created = match lake::load_or_create(
                self.catalog.as_ref(),
                &self.cfg.namespace,
                &stream,
                &req.batch.schema(),
            )
            .await
            {
                Ok(table) => self.new_state(&stream, table).await,
                Err(e) => Err(e),
            };
            match created {
                Ok(state) => {
                    self.catalog_health.recovered();
                    self.tables.insert(stream.clone(), state);
                }
                Err(e) => {
                    // Not the batch's fault: leave it unacknowledged so the agent resends.
                    tracing::error!(table = %stream, "cannot load or create table: {e}");
                    self.catalog_health
                        .error(format!("cannot load or create table {stream}: {e}"));
                    self.metrics
                        .commit_failed(&format!("{}.{stream}", self.cfg.namespace), "catalog");
                    self.blocked.insert(lane, req.first_seq());
                    drop(req.reply);
                    return;
                }
            }
        }
        let Some(state) = self.tables.get_mut(&stream) else {
            return;
        };
        self.metrics
            .batch_received(&state.name, req.batch.num_rows(), req.wire_bytes);
        let via = match req.origin {
            Some(_) => Via::Kafka,
            None => Via::Quic,
        };
        self.metrics.status.batch(
            &req.envelope.agent,
            &state.name,
            req.batch.num_rows(),
            req.wire_bytes,
            via,
        );
        let landed = |marks: &Marks| {
            let env = &req.envelope;
            Landed::of(
                &env.agent,
                env.seq,
                req.batch.num_rows(),
                req.origin.as_ref(),
                marks,
            )
        };
        if landed(&state.committed.marks) == Landed::All {
            self.metrics.batch_duplicate(&state.name);
            self.metrics
                .rows_duplicate(&state.name, req.batch.num_rows());
            let _ = req.reply.send(Verdict::Duplicate);
            return;
        }
        match landed(&state.accepted) {
            Landed::All => {
                self.metrics.batch_duplicate(&state.name);
                self.metrics
                    .rows_duplicate(&state.name, req.batch.num_rows());
                let env = &req.envelope;
                state
                    .waiting_duplicates
                    .push((env.agent.clone(), env.seq, req.reply));
                return;
            }
            // Rows read again (after a rebalance or a rewind) that an earlier batch, committed
            // or about to be, holds: land the rest. Commits of a table go in order, so when
            // this one is in, so is that one.
            Landed::Leading(n) if n > 0 => {
                self.metrics.rows_duplicate(&state.name, n);
                req.batch = req.batch.slice(n, req.batch.num_rows() - n);
                if let Some(Origin::Rows { offsets, .. }) = &mut req.origin {
                    offsets.drain(..n);
                }
            }
            Landed::Leading(_) => {}
        }
        let env = &req.envelope;
        let mapping = state
            .mappings
            .entry(env.schema_fingerprint)
            .or_insert_with(|| map_columns(&req.batch.schema(), &state.schema).map(Arc::new))
            .clone();
        let mapping = match mapping {
            Ok(m) => m,
            Err(reason) => {
                tracing::warn!(table = %state.name, agent = %env.agent, seq = env.seq, "rejected batch: {reason}");
                self.metrics
                    .batch_rejected(&state.name, reason.reason(), req.batch.num_rows());
                let _ = req.reply.send(Verdict::Rejected(reason.to_string()));
                return;
            }
        };
        let batch = match to_table_batch(&req, &mapping, &state.schema) {
            Ok(b) => b,
            Err(e) => {
                let reason = ColumnError::DoesNotFit {
                    table: state.name.clone(),
                    source: Arc::new(e),
                };
                self.metrics
                    .batch_rejected(&state.name, reason.reason(), req.batch.num_rows());
                let _ = req.reply.send(Verdict::Rejected(reason.to_string()));
                return;
            }
        };
        let last = state.accepted.get(&env.agent);
        // The first batch of an agent may start anywhere (the Kafka sink numbers a new log
        // from the clock); rows of JSON topics and dead letters are numbered by offset,
        // which has gaps.
        let by_offset = matches!(req.origin, Some(Origin::Rows { .. }));
        if last > 0 && !by_offset && env.seq > last + 1 {
            tracing::warn!(
                table = %state.name,
                agent = %env.agent,
                expected = last + 1,
                got = env.seq,
                "sequence gap: the agent lost batches before sending them"
            );
            self.metrics.sequence_gap(&state.name);
        }
        state.accepted.raise(&env.agent, env.seq);
        state.pending_rows += batch.num_rows();
        state.pending_bytes += req.wire_bytes;
        state.pending_since.get_or_insert_with(Instant::now);
        state.report_waiting();
        state.pending.push(Pending {
            agent: env.agent.clone(),
            seq: env.seq,
            checkpoint: env.checkpoint.clone(),
            created_at_us: env.created_at_us,
            received_at_us: req.received_at_us,
            origin: req.origin,
            wire_bytes: req.wire_bytes,
            batch,
            reply: req.reply,
        });
        if state.over_threshold(&self.cfg) {
            self.start_commit(&stream);
        }
    }

    fn on_flush(&mut self, reply: oneshot::Sender<()>) {
        let streams: Vec<String> = self.tables.keys().cloned().collect();
        for s in &streams {
            self.start_commit(s);
        }
        self.flush_waiters.push(reply);
        self.notify_flushed();
    }

    /// Answer flush requests once nothing is pending or being committed anywhere.
    fn notify_flushed(&mut self) {
        let idle = self
            .tables
            .values()
            .all(|t| !t.committing && t.pending.is_empty());
        if idle {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }

    /// When the oldest batches waiting for a commit (of a table not committing now) will
    /// have waited `commit_interval`.
    fn next_due(&self) -> Option<Instant> {
        self.tables
            .values()
            .filter(|t| !t.committing)
            .filter_map(|t| t.pending_since)
            .map(|since| since + self.cfg.commit_interval)
            .min()
    }

    fn commit_due(&mut self) {
        let due: Vec<String> = self
            .tables
            .iter()
            .filter(|(_, t)| {
                t.pending_since
                    .is_some_and(|s| s.elapsed() >= self.cfg.commit_interval)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for s in due {
            self.start_commit(&s);
        }
    }

    fn start_commit(&mut self, stream: &str) {
        let Some(state) = self.tables.get_mut(stream) else {
            return;
        };
        if state.committing || state.pending.is_empty() {
            return;
        }
        state.committing = true;
        let batches = std::mem::take(&mut state.pending);
        state.committing_rows = state.pending_rows;
        state.pending_rows = 0;
        state.pending_bytes = 0;
        state.pending_since = None;
        let mut marks = Marks::default();
        let mut committing: HashMap<Partition, std::collections::HashSet<i64>> = HashMap::new();
        for p in &batches {
            marks.record(&p.agent, p.seq, p.checkpoint.as_deref());
            if let Some(o) = &p.origin {
                committing
                    .entry(o.partition().clone())
                    .or_default()
                    .extend(o.offsets());
            }
        }
        // Where each Kafka partition this processor reads is in the lake up to, once this
        // commit is in.
        for ((topic, partition), offset) in self.inflight.marks(&committing) {
            marks.raise_offset(&topic, partition, offset);
        }
        let job = CommitJob {
            swap: self.swap.clone(),
            head: state.head.clone(),
            committed: state.committed.clone(),
            name: state.name.clone(),
            compression: self.cfg.compression,
            metrics: self.metrics.clone(),
            locks: self.locks.clone(),
            health: state.health.clone(),
        };
        let done_tx = self.done_tx.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let (head, committed, landed) = job.commit_until_done(&batches, &marks).await;
            let (mut rows, mut bytes) = (0u64, 0u64);
            for (p, l) in batches.iter().zip(&landed) {
                let n = p.batch.num_rows();
                let left = l.remaining(n);
                rows += left as u64;
                // A batch partly landed before counts its share of the bytes.
                bytes += match l {
                    Landed::All => 0,
                    Landed::Leading(0) => p.wire_bytes as u64,
                    Landed::Leading(_) => (p.wire_bytes * left / n) as u64,
                };
            }
            if rows > 0 {
                job.metrics
                    .committed(&job.name, rows, bytes, started.elapsed().as_secs_f64());
            }
            let _ = done_tx.send(CommitDone {
                stream,
                head,
                committed,
                batches,
                landed,
            });
        });
    }

    fn on_commit_done(&mut self, done: CommitDone) {
        let Some(state) = self.tables.get_mut(&done.stream) else {
            return;
        };
        state.committing = false;
        state.committing_rows = 0;
        state.health.progressed();
        state.report_waiting();
        state.head = done.head;
        // Marks read from the catalog meanwhile (another processor's) are landed too.
        let seen = std::mem::replace(&mut state.committed, done.committed);
        state.committed.marks.merge(&seen.marks);
        // The commit put these messages in the lake: settled now, not when the receiver
        // next reads the verdicts, so that a commit started next (below) already stores a
        // mark past them. Otherwise the last commit of a quiet partition kept a mark that
        // lagged behind what it held.
        for o in done.batches.iter().filter_map(|p| p.origin.as_ref()) {
            for &offset in o.offsets() {
                self.inflight.settle(o.partition(), offset);
            }
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut rows = 0;
        let mut newest = None;
        for (p, landed) in done.batches.into_iter().zip(done.landed) {
            let n = p.batch.num_rows();
            if landed != Landed::All {
                newest = newest.max(Some(p.received_at_us));
            }
            if landed != Landed::Leading(0) {
                self.metrics
                    .rows_duplicate(&state.name, n - landed.remaining(n));
            }
            if landed != Landed::All {
                rows += landed.remaining(n);
                self.metrics
                    .batch_latency(&state.name, (now_us - p.created_at_us).max(0) as f64 / 1e6);
                let _ = p.reply.send(Verdict::Committed);
            } else {
                self.metrics.batch_duplicate(&state.name);
                let _ = p.reply.send(Verdict::Duplicate);
            }
        }
        let committed = &state.committed.marks;
        let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut state.waiting_duplicates)
            .into_iter()
            .partition(|(agent, seq, _)| *seq <= committed.get(agent));
        state.waiting_duplicates = still;
        for (_, _, reply) in ready {
            let _ = reply.send(Verdict::Duplicate);
        }
        if let Some(us) = newest {
            self.metrics.ingested(&state.name, us);
        }
        tracing::debug!(table = %state.name, rows, "committed");
        let more = state.over_threshold(&self.cfg) || !self.flush_waiters.is_empty();
        if more {
            self.start_commit(&done.stream);
        }
        self.notify_flushed();
    }
}

//! The lander task. It alone owns every table's state (batches buffered, marks committed
//! and accepted, column mappings), so deduplication decisions are never racy; it starts at
//! most one commit per table at a time, and answers each batch once its commit is in.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use iceberg::Catalog;
use iceberg::table::Table;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

mod quarantined;
mod schema;

use super::columns::{ColumnError, Plan, plan, to_table_batch};
use super::commit::CommitJob;
use super::lander::{LandRequest, LanderError, Msg, Origin, Verdict};
use super::pending::{After, Landed, Pending};
use crate::lake::conform::conform_batch;
use crate::lake::locks::CommitLocks;
use crate::lake::marks::{self, Marks, Partition, Stored};
use crate::lake::{self, CatalogSwap, CommitError, Head};
use crate::land::inflight::InFlight;
use crate::land::{LanderConfig, SchemaPolicy, Streams};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::status::Via;

/// Start the lander task; it runs until every handle to it is dropped, then finishes the
/// commits in flight.
pub(super) fn spawn(
    catalog: Arc<dyn Catalog>,
    swap: CatalogSwap,
    cfg: LanderConfig,
    streams: Streams,
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
        streams,
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
    /// What batches of each schema (by fingerprint) need to land in the table as `schema`
    /// has it, or why they never can. Cleared when the schema changes.
    mappings: HashMap<u64, Result<Plan, ColumnError>>,
    /// Whether the table may evolve to take new columns and wider types.
    policy: SchemaPolicy,
    /// Whether text converts into number, boolean and time columns.
    coerce: bool,
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

    /// Take `head` as the table; if its schema is another than the batches waiting were
    /// shaped for, reshape them (new columns null, widened ones cast up) and plan anew.
    fn adopt_schema(&mut self, head: Head) -> Result<(), iceberg::Error> {
        let id = |h: &Head| h.table().metadata().current_schema_id();
        if id(&head) != id(&self.head) {
            let schema = lake::table_arrow_schema(head.table())?;
            let reshaped = self
                .pending
                .iter()
                .map(|p| conform_batch(&p.batch, &schema))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    iceberg::Error::new(
                        iceberg::ErrorKind::DataInvalid,
                        format!("the waiting batches do not fit the table's new schema: {e}"),
                    )
                })?;
            for (p, batch) in self.pending.iter_mut().zip(reshaped) {
                p.batch = batch;
            }
            self.schema = schema;
            self.mappings.clear();
        }
        self.head = head;
        Ok(())
    }

    /// Tell the table's health how many rows wait for a commit.
    fn report_waiting(&self) {
        self.health
            .waiting((self.pending_rows + self.committing_rows) as u64);
    }
}

/// A table the lander opens: where, for rows of which shape, partitioned how.
struct OpenTable<'a> {
    namespace: &'a str,
    name: &'a str,
    user: &'a arrow_schema::Schema,
    /// How a new table is partitioned (an existing one moves to its stream's configured
    /// partitioning, if any).
    partition: &'a [lake::partition::PartitionField],
    layer: &'a str,
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
    streams: Streams,
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
                self.keep_table(stream, table).await.map_err(|e| match e {
                    CommitError::Iceberg(e) => LanderError::Table(e),
                    other => LanderError::Table(iceberg::Error::new(
                        iceberg::ErrorKind::Unexpected,
                        other.to_string(),
                    )),
                })?;
                Ok(self
                    .tables
                    .get(stream)
                    .map_or((0, None), |t| of(&t.committed.marks)))
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

    /// The lander's state of `table`, kept under `key` (a stream, or a quarantine key).
    async fn new_state(&self, key: &str, table: Table) -> Result<TableState, iceberg::Error> {
        let committed = marks::load(&table).await?;
        tracing::info!(
            table = %table.identifier(),
            marks = committed.marks.len(),
            "recovered progress from the table"
        );
        let name = lake::qualified(table.identifier());
        Ok(TableState {
            health: self.metrics.health.watch(format!("table {name}"), "rows"),
            committing_rows: 0,
            name,
            schema: lake::table_arrow_schema(&table)?,
            head: Head::new(table),
            mappings: HashMap::new(),
            policy: self.streams.get(key).schema,
            coerce: self.streams.get(key).coerce,
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

    async fn on_land(&mut self, req: LandRequest) {
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
            // The batch's fault, not the catalog's: it never will make a table.
            if let Some(reason) = lake::uncreatable(&req.batch.schema()) {
                let reason = format!(
                    "cannot create table {}.{stream}: {reason}",
                    self.cfg.namespace
                );
                self.refuse(&stream, req, reason, "uncreatable").await;
                return;
            }
            let fields = self
                .streams
                .get(&stream)
                .partition
                .unwrap_or_else(|| lake::partition::bronze_default(&req.batch.schema()));
            if let Err(reason) = lake::partition::check(&req.batch.schema(), &fields) {
                let reason = format!(
                    "cannot create table {}.{stream}: {reason}",
                    self.cfg.namespace
                );
                self.refuse(&stream, req, reason, "partition_spec").await;
                return;
            }
            let namespace = self.cfg.namespace.clone();
            let table = OpenTable {
                namespace: &namespace,
                name: &stream,
                user: &req.batch.schema(),
                partition: &fields,
                layer: "bronze",
            };
            if !self.open_table(&stream, table).await {
                // Not the batch's fault: left unacknowledged so the agent resends it.
                self.blocked.insert(lane, req.first_seq());
                drop(req.reply);
                return;
            }
        }
        let Some(state) = self.tables.get(&stream) else {
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
        let Some(req) = self.unlanded(&stream, req) else {
            return;
        };
        let fingerprint = req.envelope.schema_fingerprint;
        let mut evolved = false;
        let mapping = loop {
            let Some(state) = self.tables.get_mut(&stream) else {
                return;
            };
            let planned = state
                .mappings
                .entry(fingerprint)
                .or_insert_with(|| plan(&req.batch.schema(), &state.schema, state.coerce))
                .clone();
            let pinned = match &planned {
                Ok(Plan::Evolve(_)) => lake::partition::unwidenable(state.head.table()),
                _ => Vec::new(),
            };
            let refusal = match planned {
                Ok(Plan::Fits(m)) => break m,
                Ok(Plan::Evolve(change))
                    if change.widen.iter().any(|(c, _)| pinned.contains(c)) =>
                {
                    let column = change
                        .widen
                        .iter()
                        .find(|(c, _)| pinned.contains(c))
                        .map_or_else(String::new, |(c, _)| c.clone());
                    ColumnError::PartitionSource(column)
                }
                Ok(Plan::Evolve(_)) if state.policy == SchemaPolicy::Evolve && !evolved => {
                    evolved = true;
                    if let Err(e) = self.evolve(&stream, &req.batch.schema()).await {
                        // The catalog's trouble, not the batch's: the agent sends it again.
                        tracing::error!(table = %stream, "cannot evolve the table: {e}");
                        self.metrics
                            .commit_failed(&format!("{}.{stream}", self.cfg.namespace), e.reason());
                        self.blocked.insert(lane, req.first_seq());
                        drop(req.reply);
                        return;
                    }
                    continue;
                }
                Ok(Plan::Evolve(change)) => ColumnError::Strict {
                    table: state.name.clone(),
                    change: change.to_string(),
                },
                Err(e) => e,
            };
            let code = refusal.reason();
            self.refuse(&stream, req, refusal.to_string(), code).await;
            return;
        };
        let Some(state) = self.tables.get(&stream) else {
            return;
        };
        match to_table_batch(&req, &mapping, &state.schema) {
            Ok(batch) => self.accept(&stream, req, batch, After::Reply),
            Err(e) => {
                let reason = ColumnError::DoesNotFit {
                    table: state.name.clone(),
                    source: Arc::new(e),
                };
                let code = reason.reason();
                self.refuse(&stream, req, reason.to_string(), code).await;
            }
        }
    }

    /// Load `table`, or create it, as the table the lander keeps under `key`. False
    /// (logged, counted) if the catalog failed.
    async fn open_table(&mut self, key: &str, table: OpenTable<'_>) -> bool {
        let qualified = format!("{}.{}", table.namespace, table.name);
        let opened = match lake::create_if_missing(
            self.catalog.as_ref(),
            table.namespace,
            table.name,
            &lake::bronze_arrow_schema(table.user),
            table.partition,
            &[("sluice.layer", table.layer)],
        )
        .await
        {
            Ok(t) => self.keep_table(key, t).await,
            Err(e) => Err(CommitError::from(e)),
        };
        match opened {
            Ok(()) => {
                self.catalog_health.recovered();
                true
            }
            Err(e) => {
                self.tables.remove(key);
                tracing::error!(table = %qualified, "cannot load or create table: {e}");
                self.catalog_health
                    .error(format!("cannot load or create table {qualified}: {e}"));
                self.metrics.commit_failed(&qualified, e.reason());
                false
            }
        }
    }

    /// What of `req` the table under `key` does not hold yet, or nothing: a batch it
    /// holds whole is answered as a duplicate (now if committed, once committed if only
    /// accepted), and rows read again are cut off.
    fn unlanded(&mut self, key: &str, mut req: LandRequest) -> Option<LandRequest> {
        let state = self.tables.get_mut(key)?;
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
            return None;
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
                return None;
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
        Some(req)
    }

    /// Take `req`, shaped as `batch` for the table under `key`, into the next commit.
    fn accept(&mut self, key: &str, req: LandRequest, batch: RecordBatch, after: After) {
        let Some(state) = self.tables.get_mut(key) else {
            return;
        };
        let env = &req.envelope;
        let last = state.accepted.get(&env.agent);
        // The first batch of an agent may start anywhere (the Kafka sink numbers a new log
        // from the clock); rows of JSON topics and dead letters are numbered by offset,
        // which has gaps; a quarantine table holds only some batches of an agent.
        let by_offset = matches!(req.origin, Some(Origin::Rows { .. }));
        if last > 0 && !by_offset && after == After::Reply && env.seq > last + 1 {
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
            after,
        });
        if state.over_threshold(&self.cfg) {
            self.start_commit(key);
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
        // The table evolved under the lander while this commit was in flight: keep the
        // evolved head (the next commit loads the table again). A commit that found the
        // table evolved by another processor brings the new schema along.
        let schema_id = |h: &Head| h.table().metadata().current_schema_id();
        if schema_id(&done.head) >= schema_id(&state.head)
            && let Err(e) = state.adopt_schema(done.head)
        {
            tracing::error!(table = %state.name, "{e}");
        }
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
        let mut marks_due = Vec::new();
        for (p, landed) in done.batches.into_iter().zip(done.landed) {
            if p.after == After::Mark {
                continue;
            }
            if let After::Quarantined { stream, .. } = &p.after {
                // In quarantine now: the stream's table records the batch as taken.
                marks_due.push((
                    stream.clone(),
                    p.agent.clone(),
                    p.seq,
                    p.checkpoint.clone(),
                    p.created_at_us,
                    p.received_at_us,
                ));
            }
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
                let _ = p.reply.send(match p.after {
                    After::Quarantined { reason, .. } => Verdict::Quarantined(reason),
                    After::Reply | After::Mark => Verdict::Committed,
                });
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
        for (stream, agent, seq, checkpoint, created_at_us, received_at_us) in marks_due {
            self.mark_in(
                &stream,
                &agent,
                seq,
                checkpoint,
                created_at_us,
                received_at_us,
            );
            if !self.flush_waiters.is_empty() {
                self.start_commit(&stream);
            }
        }
        if more {
            self.start_commit(&done.stream);
        }
        self.notify_flushed();
    }
}

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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Schema as ArrowSchema, SchemaRef};
use iceberg::Catalog;
use iceberg::table::Table;
use sluice_protocol::Envelope;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{Compression, LanderConfig};
use crate::inflight::InFlight;
use crate::lake::{self, CatalogSwap, Change, CommitError, Head};
use crate::locks::CommitLocks;
use crate::metrics::Metrics;
use crate::progress::{self, COMMIT_ID_KEY, Marks, Partition, Stored};
use crate::status::Via;

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
    fn first_seq(&self) -> u64 {
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

/// How much of a batch a table's marks show it holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landed {
    All,
    /// This many leading rows (only rows numbered by offset can be partly landed).
    Leading(usize),
}

impl Landed {
    /// What a table's `marks` say of a batch of `rows` rows, numbered `seq` by `agent`.
    fn of(agent: &str, seq: u64, rows: usize, origin: Option<&Origin>, marks: &Marks) -> Self {
        let seq_mark = marks.get(agent);
        let offset_mark = |p: &Partition| marks.offset(&p.0, p.1);
        match origin {
            Some(Origin::Rows { partition, offsets }) => {
                // Row i is numbered offsets[i] + 1; it is in the table if that is at most
                // the sequence mark, or if its offset is below the partition's mark.
                let below = offset_mark(partition)
                    .unwrap_or(0)
                    .max(i64::try_from(seq_mark).unwrap_or(i64::MAX));
                match offsets.partition_point(|o| *o < below) {
                    n if n >= rows => Self::All,
                    n => Self::Leading(n),
                }
            }
            Some(Origin::Message { partition, offset })
                if offset_mark(partition).is_some_and(|m| *offset < m) =>
            {
                Self::All
            }
            _ if seq <= seq_mark => Self::All,
            _ => Self::Leading(0),
        }
    }

    /// Rows of a batch of `rows` this leaves to land.
    fn remaining(self, rows: usize) -> usize {
        match self {
            Self::All => 0,
            Self::Leading(n) => rows - n.min(rows),
        }
    }
}

enum Msg {
    Land(LandRequest),
    Mark {
        agent: String,
        stream: String,
        reply: oneshot::Sender<Result<(u64, Option<String>), String>>,
    },
    Flush(oneshot::Sender<()>),
    KafkaMarks(oneshot::Sender<Result<Marks, String>>),
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
        Self { tx }
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
    ) -> Result<(u64, Option<String>), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Mark {
                agent: agent.into(),
                stream: stream.into(),
                reply,
            })
            .await
            .map_err(|_| "lander stopped".to_string())?;
        rx.await.map_err(|_| "lander stopped".to_string())?
    }

    /// The Kafka offset marks of every table in the namespace, merged (the highest per
    /// partition), read afresh from the catalog.
    pub async fn kafka_marks(&self) -> Result<Marks, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::KafkaMarks(reply))
            .await
            .map_err(|_| "lander stopped".to_string())?;
        rx.await.map_err(|_| "lander stopped".to_string())?
    }

    /// Commit everything buffered now and wait until it is committed.
    pub async fn flush(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(reply)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// How a batch's columns map onto the table's columns.
#[derive(Debug, Clone)]
enum ColumnSource {
    /// Take the batch column at this index, reinterpreted or cast to the table type.
    Column(usize),
    /// The batch lacks this (nullable) column.
    Null,
}

struct Pending {
    agent: String,
    seq: u64,
    checkpoint: Option<String>,
    created_at_us: i64,
    /// Its rows' `_ingested_at`.
    received_at_us: i64,
    origin: Option<Origin>,
    wire_bytes: usize,
    batch: RecordBatch,
    reply: oneshot::Sender<Verdict>,
}

impl Pending {
    /// What of this batch the table's marks show is in it already.
    fn landed(&self, marks: &Marks) -> Landed {
        Landed::of(
            &self.agent,
            self.seq,
            self.batch.num_rows(),
            self.origin.as_ref(),
            marks,
        )
    }
}

struct TableState {
    name: String,
    /// The table as this lander last committed or loaded it.
    head: Head,
    schema: SchemaRef,
    /// Column mapping per batch schema fingerprint (or why that schema is refused).
    mappings: HashMap<u64, Result<Arc<Vec<ColumnSource>>, String>>,
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

struct CommitDone {
    stream: String,
    head: Head,
    committed: Stored,
    batches: Vec<Pending>,
    /// Per batch: what the table held of it before this commit (the rest is in it).
    landed: Vec<Landed>,
}

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

    async fn mark(&mut self, agent: &str, stream: &str) -> Result<(u64, Option<String>), String> {
        let of = |m: &Marks| (m.get(agent), m.checkpoint(agent).map(str::to_string));
        if let Some(t) = self.tables.get(stream) {
            return Ok(of(&t.committed.marks));
        }
        match lake::load_if_exists(self.catalog.as_ref(), &self.cfg.namespace, stream).await {
            Ok(Some(table)) => {
                let state = self
                    .new_state(stream, table)
                    .await
                    .map_err(|e| e.to_string())?;
                let mark = of(&state.committed.marks);
                self.tables.insert(stream.to_string(), state);
                Ok(mark)
            }
            Ok(None) => Ok((0, None)),
            Err(e) => Err(format!(
                "cannot load table {}.{stream}: {e}",
                self.cfg.namespace
            )),
        }
    }

    async fn kafka_marks(&mut self) -> Result<Marks, String> {
        let ns = iceberg::NamespaceIdent::new(self.cfg.namespace.clone());
        let idents = self
            .catalog
            .list_tables(&ns)
            .await
            .map_err(|e| format!("cannot list the tables of {}: {e}", self.cfg.namespace))?;
        let mut all = Marks::default();
        for ident in idents {
            let table = self
                .catalog
                .load_table(&ident)
                .await
                .map_err(|e| format!("cannot load table {ident}: {e}"))?;
            let marks = progress::load(&table)
                .await
                .map_err(|e| format!("cannot read the marks of table {ident}: {e}"))?
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
        let committed = progress::load(&table).await?;
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
                    .batch_rejected(&state.name, "schema_mismatch", req.batch.num_rows());
                let _ = req.reply.send(Verdict::Rejected(reason));
                return;
            }
        };
        let batch = match to_table_batch(&req, &mapping, &state.schema) {
            Ok(b) => b,
            Err(e) => {
                let reason = format!("batch does not fit table {}: {e}", state.name);
                self.metrics
                    .batch_rejected(&state.name, "schema_mismatch", req.batch.num_rows());
                let _ = req.reply.send(Verdict::Rejected(reason));
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

/// Everything a commit needs, detached from the lander task.
struct CommitJob {
    swap: CatalogSwap,
    /// The table as the lander last saw it, and its marks.
    head: Head,
    committed: Stored,
    name: String,
    compression: Compression,
    metrics: Arc<Metrics>,
    locks: CommitLocks,
    health: sluice_ops::Watch,
}

/// The data files an attempt wrote, and what the table held of each batch when it did.
type Written = Option<(Vec<Landed>, Vec<iceberg::spec::DataFile>)>;

impl CommitJob {
    /// Write the data files and commit them; retry until the commit is known to be in the
    /// table. Returns the table and its marks as of the commit, and per batch what the
    /// table held of it before (this commit holds the rest).
    async fn commit_until_done(
        &self,
        batches: &[Pending],
        marks: &Marks,
    ) -> (Head, Stored, Vec<Landed>) {
        let commit_id = uuid::Uuid::now_v7();
        let mut head = self.head.clone();
        let mut committed = self.committed.clone();
        let mut files: Written = None;
        let mut attempt = 0u32;
        let mut backoff = Duration::from_millis(100);
        loop {
            attempt += 1;
            let tried = self
                .try_commit(
                    &mut head,
                    &mut committed,
                    &mut files,
                    batches,
                    marks,
                    commit_id,
                    attempt,
                )
                .await;
            match tried {
                Ok(landed) => return (head, committed, landed),
                Err(e) => {
                    self.metrics.commit_failed(&self.name, e.reason());
                    if matches!(e, CommitError::Conflict) {
                        tracing::info!(table = %self.name, attempt, "commit conflict; retrying on the new table state");
                    } else {
                        tracing::error!(table = %self.name, attempt, retry_in = ?backoff, "commit failed: {e}");
                        if e.retryable() {
                            self.health.error(format!("commit failed: {e}"));
                        } else {
                            // Retried still (nothing is acknowledged before it is in), but
                            // only an operator can fix this.
                            self.health.failed(format!("commit failed: {e}"));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    // The next attempt loads the table under the lock, which also shows
                    // whether this failed attempt did in fact commit.
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_commit(
        &self,
        head: &mut Head,
        committed: &mut Stored,
        files: &mut Written,
        batches: &[Pending],
        marks: &Marks,
        commit_id: uuid::Uuid,
        attempt: u32,
    ) -> Result<Vec<Landed>, CommitError> {
        let held = |m: &Marks| batches.iter().map(|p| p.landed(m)).collect::<Vec<Landed>>();
        let nothing_new = |landed: &[Landed]| landed.iter().all(|l| *l == Landed::All);
        // The files are written before taking the lock (it holds back compaction and
        // models), from what the table lacked when last seen.
        let t0 = Instant::now();
        let mut landed = held(&committed.marks);
        if !nothing_new(&landed) && files.as_ref().is_none_or(|(l, _)| *l != landed) {
            let data: Vec<RecordBatch> = batches
                .iter()
                .zip(&landed)
                .filter_map(|(p, l)| match l {
                    Landed::All => None,
                    Landed::Leading(0) => Some(p.batch.clone()),
                    Landed::Leading(n) => Some(p.batch.slice(*n, p.batch.num_rows() - n)),
                })
                .collect();
            let written = self
                .write_files(head.table(), &data, commit_id, attempt)
                .await?;
            *files = Some((landed.clone(), written));
        }
        // Compaction and model commits of this process wait while the lander commits.
        let t1 = Instant::now();
        let mut locked = self.locks.lock(&self.name).await;
        let t2 = Instant::now();
        // Under the lock the table cannot move in this process. Whether it moved since the
        // head is one indexed read; only then (and after a failed attempt, which may have
        // gone in) is the table loaded again.
        let ident = head.table().identifier().clone();
        let now_at = self
            .swap
            .location(&ident)
            .await
            .map_err(CommitError::Read)?;
        if attempt > 1 || now_at.as_deref() != head.location() {
            // The metadata file just read from the catalog, not a second lookup.
            let location = now_at.ok_or_else(|| {
                iceberg::Error::new(
                    iceberg::ErrorKind::TableNotFound,
                    format!("table {ident} is no longer in the catalog"),
                )
            })?;
            // Maintenance and models of this process leave the table they committed with the
            // lock: parsed already.
            let now = match locked.head_at(&location) {
                Some(now) => now,
                None => {
                    let metadata =
                        iceberg::spec::TableMetadata::read_from(head.table().file_io(), &location)
                            .await?;
                    head.reloaded(lake::snapshot::head_table(
                        head.table(),
                        metadata,
                        location,
                    )?)
                }
            };
            let same_snapshot = now.table().metadata().current_snapshot_id()
                == head.table().metadata().current_snapshot_id();
            // A commit that changed only the metadata (expiry) leaves the marks as they were.
            if !same_snapshot {
                *committed = progress::load(now.table()).await?;
            }
            *head = now;
            if attempt > 1 && holds_commit(head.table(), commit_id) {
                // An earlier attempt reported failure but did commit.
                tracing::warn!(table = %self.name, attempt, "an earlier attempt of this commit had succeeded; not repeating it");
                return Ok(landed);
            }
            let now = held(&committed.marks);
            if now != landed {
                // The table moved: an earlier attempt that reported failure did commit, or
                // another processor landed some of these rows. Never append them twice.
                landed = now;
                if nothing_new(&landed) {
                    tracing::warn!(table = %self.name, attempt, "the table already holds every batch of this commit; not repeating it");
                    return Ok(landed);
                }
                tracing::info!(table = %self.name, attempt, "the table already holds some rows of this commit; writing the rest again");
                return Err(CommitError::Conflict);
            }
        }
        if nothing_new(&landed) {
            tracing::debug!(table = %self.name, "the table already holds every batch of this commit");
            return Ok(landed);
        }
        let data_files = files.as_ref().map(|(_, f)| f.clone()).unwrap_or_default();
        let t3 = Instant::now();
        let staged =
            progress::stage(head.table(), committed, marks, &commit_id.to_string()).await?;
        let t4 = Instant::now();
        let mut props = staged.properties;
        props.insert(COMMIT_ID_KEY.to_string(), commit_id.to_string());
        match lake::snapshot::commit(&self.swap, head, &Change::append(data_files, props)).await {
            Ok(done) => {
                locked.committed(&done.head);
                let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                tracing::debug!(
                    table = %self.name,
                    write_ms = ms(t0, t1),
                    lock_ms = ms(t1, t2),
                    reload_ms = ms(t2, t3),
                    marks_ms = ms(t3, t4),
                    commit_ms = ms(t4, Instant::now()),
                    "commit timings"
                );
                *head = done.head;
                *committed = staged.stored;
                if done.merged > 0 {
                    self.metrics.manifests_merged(&self.name, done.merged);
                }
                Ok(landed)
            }
            Err(e) => {
                if !matches!(e, CommitError::Unknown(_)) {
                    for path in &staged.files {
                        if let Err(e) = head.table().file_io().delete(path).await {
                            tracing::warn!(%path, "cannot remove the marks of a failed commit: {e}");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    async fn write_files(
        &self,
        table: &Table,
        batches: &[RecordBatch],
        commit_id: uuid::Uuid,
        attempt: u32,
    ) -> Result<Vec<iceberg::spec::DataFile>, iceberg::Error> {
        lake::write_data_files(
            table,
            batches,
            &format!("{commit_id}-{attempt}"),
            self.compression,
            None,
        )
        .await
    }
}

/// True if `commit_id` is the id of one of the table's recent snapshots.
fn holds_commit(table: &Table, commit_id: uuid::Uuid) -> bool {
    let meta = table.metadata();
    let id = commit_id.to_string();
    let mut next = meta.current_snapshot();
    // Other commits may have followed it; a few hundred covers any retry's window.
    for _ in 0..256 {
        let Some(snap) = next else { break };
        if snap.summary().additional_properties.get(COMMIT_ID_KEY) == Some(&id) {
            return true;
        }
        next = snap
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    false
}

fn map_columns(batch: &ArrowSchema, table: &SchemaRef) -> Result<Vec<ColumnSource>, String> {
    for f in batch.fields() {
        if lake::LAKE_COLUMNS.contains(&f.name().as_str()) {
            return Err(format!("column {:?} is reserved for the lake", f.name()));
        }
        if table.field_with_name(f.name()).is_err() {
            return Err(format!(
                "column {:?} is not in the table (schema evolution is not supported yet)",
                f.name()
            ));
        }
    }
    table
        .fields()
        .iter()
        .filter(|f| !lake::LAKE_COLUMNS.contains(&f.name().as_str()))
        .map(|tf| match batch.index_of(tf.name()) {
            Ok(i) => {
                let bt = lake::normalize_type(batch.field(i).data_type());
                if &bt != tf.data_type() {
                    Err(format!(
                        "column {:?} has type {} but the table has {}",
                        tf.name(),
                        batch.field(i).data_type(),
                        tf.data_type()
                    ))
                } else {
                    Ok(ColumnSource::Column(i))
                }
            }
            Err(_) if tf.is_nullable() => Ok(ColumnSource::Null),
            Err(_) => Err(format!("required column {:?} is missing", tf.name())),
        })
        .collect()
}

/// Build the table-shaped batch: user columns in table order plus the lake's columns.
fn to_table_batch(
    req: &LandRequest,
    mapping: &[ColumnSource],
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = req.batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (src, field) in mapping.iter().zip(schema.fields()) {
        columns.push(match src {
            ColumnSource::Column(i) => retag(req.batch.column(*i), field.data_type())?,
            ColumnSource::Null => arrow_array::new_null_array(field.data_type(), n),
        });
    }
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(req.envelope.agent.as_str(), n),
    )));
    columns.push(Arc::new(match &req.origin {
        Some(Origin::Rows { offsets, .. }) => {
            Int64Array::from_iter_values(offsets.iter().map(|o| o + 1))
        }
        _ => Int64Array::from_value(req.envelope.seq as i64, n),
    }));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_value(req.received_at_us, n)
            .with_timezone(sluice_protocol::UTC),
    ));
    RecordBatch::try_new(schema.clone(), columns)
}

/// Give an array the exact table type. Timestamps differing only in the zone's spelling
/// (`UTC` vs `+00:00`) or unit are converted; other types already match.
fn retag(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, arrow_schema::ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    arrow_cast::cast(array, target)
}

#[cfg(test)]
pub(crate) mod tests {
    use arrow_schema::{Field, TimeUnit};

    use super::*;

    fn user_schema() -> ArrowSchema {
        ArrowSchema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("v", DataType::Float64, false),
            Field::new("host", DataType::Utf8, true),
        ])
    }

    #[test]
    fn maps_matching_and_missing_columns() {
        let table = Arc::new(lake::bronze_arrow_schema(&user_schema()));
        let m = map_columns(&user_schema(), &table).expect("same schema maps");
        assert!(matches!(
            m[..],
            [
                ColumnSource::Column(0),
                ColumnSource::Column(1),
                ColumnSource::Column(2)
            ]
        ));
        let fewer = ArrowSchema::new(vec![Field::new("v", DataType::Float64, false)]);
        let m = map_columns(&fewer, &table).expect("missing nullable columns are nulls");
        assert!(matches!(
            m[..],
            [
                ColumnSource::Null,
                ColumnSource::Column(0),
                ColumnSource::Null
            ]
        ));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let table = Arc::new(lake::bronze_arrow_schema(&user_schema()));
        let extra = ArrowSchema::new(vec![Field::new("new", DataType::Int64, false)]);
        assert!(
            map_columns(&extra, &table)
                .unwrap_err()
                .contains("not in the table")
        );
        let wrong = ArrowSchema::new(vec![Field::new("v", DataType::Utf8, false)]);
        assert!(
            map_columns(&wrong, &table)
                .unwrap_err()
                .contains("has type")
        );
        let reserved = ArrowSchema::new(vec![Field::new("_seq", DataType::Int64, false)]);
        assert!(
            map_columns(&reserved, &table)
                .unwrap_err()
                .contains("reserved")
        );
    }

    #[test]
    fn what_the_marks_say_of_a_batch() {
        let run = Origin::Rows {
            partition: ("events".into(), 0),
            // 12 went elsewhere (a dead letter).
            offsets: vec![10, 11, 13, 14],
        };
        let of = |marks: &Marks| Landed::of("events-0", 15, 4, Some(&run), marks);
        let mut marks = Marks::default();
        assert_eq!(of(&marks), Landed::Leading(0));
        marks.raise("events-0", 12);
        assert_eq!(
            of(&marks),
            Landed::Leading(2),
            "rows up to offset 11 are in"
        );
        marks.raise_offset("events", 0, 14);
        assert_eq!(
            of(&marks),
            Landed::Leading(3),
            "the partition is in below 14"
        );
        marks.raise("events-0", 15);
        assert_eq!(of(&marks), Landed::All);
        assert_eq!(Landed::Leading(3).remaining(4), 1);
        assert_eq!(Landed::All.remaining(4), 0);

        // An agent's batch is landed whole or not at all.
        let message = Origin::Message {
            partition: ("sluice.telemetry".into(), 1),
            offset: 5,
        };
        let of = |marks: &Marks| Landed::of("edge", 3, 100, Some(&message), marks);
        let mut marks = Marks::default();
        assert_eq!(of(&marks), Landed::Leading(0));
        marks.raise_offset("sluice.telemetry", 1, 5);
        assert_eq!(of(&marks), Landed::Leading(0));
        marks.raise_offset("sluice.telemetry", 1, 6);
        assert_eq!(of(&marks), Landed::All);
        let mut marks = Marks::default();
        marks.raise("edge", 3);
        assert_eq!(of(&marks), Landed::All);
        assert_eq!(Landed::of("edge", 4, 100, None, &marks), Landed::Leading(0));
    }

    /// A SQLite catalog over a local warehouse in a temporary directory.
    pub(crate) struct TestLake {
        pub catalog: Arc<dyn Catalog>,
        pub swap: CatalogSwap,
        _dir: tempfile::TempDir,
    }

    impl TestLake {
        pub async fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = crate::config::ProcessorConfig::parse(&format!(
                "[processor]\ndata_dir = {:?}\n",
                dir.path().display().to_string()
            ))
            .expect("config");
            let catalog = lake::open(&cfg).await.expect("catalog");
            lake::ensure_namespace(catalog.as_ref(), "bronze")
                .await
                .expect("namespace");
            let swap = CatalogSwap::open(&cfg).await.expect("swap");
            Self {
                catalog,
                swap,
                _dir: dir,
            }
        }

        pub fn lander(&self) -> Lander {
            self.lander_with(InFlight::default())
        }

        pub fn lander_with(&self, inflight: InFlight) -> Lander {
            Lander::start(
                self.catalog.clone(),
                self.swap.clone(),
                LanderConfig::default(),
                Metrics::new(),
                CommitLocks::default(),
                inflight,
            )
        }

        /// Create `bronze.events` (one `id` column) with these table properties.
        pub async fn create_events(&self, properties: &[(&str, &str)]) {
            let user = ArrowSchema::new(vec![Field::new("id", DataType::Int64, true)]);
            lake::create_if_missing(
                self.catalog.as_ref(),
                "bronze",
                "events",
                &lake::bronze_arrow_schema(&user),
                properties,
            )
            .await
            .expect("table");
        }

        pub async fn table(&self, name: &str) -> Table {
            let ident = iceberg::TableIdent::from_strs(["bronze", name]).expect("ident");
            self.catalog.load_table(&ident).await.expect("table")
        }
    }

    /// The `id` column of `files`, in file and row order.
    pub(crate) async fn ids_in(table: &Table, files: &[iceberg::spec::DataFile]) -> Vec<i64> {
        use arrow_array::cast::AsArray;
        lake::read_data_files(table, files)
            .await
            .expect("read")
            .iter()
            .flat_map(|b| {
                b.column_by_name("id")
                    .expect("id")
                    .as_primitive::<arrow_array::types::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_commit_stores_a_mark_past_the_commit_before_it() {
        // The receiver settles offsets when it next reads the verdicts, which may be after
        // the lander has started its next commit; it never does here. The mark stored with
        // the second commit must still be past both commits' messages.
        let lake = TestLake::new().await;
        let inflight = InFlight::default();
        let partition: Partition = ("events".into(), 0);
        inflight.assign(partition.clone(), Some(0));
        for o in 0..10 {
            inflight.read(&partition, o);
        }
        let lander = lake.lander_with(inflight.clone());
        let first = land_run(&lander, &[0, 1, 2, 3, 4]).await;
        lander.flush().await;
        assert_eq!(first.await, Ok(Verdict::Committed));
        let second = land_run(&lander, &[5, 6, 7, 8, 9]).await;
        lander.flush().await;
        assert_eq!(second.await, Ok(Verdict::Committed));
        let marks = lander.kafka_marks().await.expect("marks");
        assert_eq!(marks.offset("events", 0), Some(10));
        assert_eq!(inflight.settled(), vec![(partition, 10)]);
    }

    /// Hand over a run of JSON rows of partition 0 (`id` = offset); the verdict to come.
    async fn land_run(lander: &Lander, offsets: &[i64]) -> oneshot::Receiver<Verdict> {
        let schema = Arc::new(ArrowSchema::new(vec![Field::new(
            "id",
            DataType::Int64,
            true,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(offsets.to_vec()))],
        )
        .expect("batch");
        let (reply, verdict) = oneshot::channel();
        let last = offsets.last().copied().expect("a run has rows");
        let req = LandRequest {
            envelope: Envelope {
                agent: "events-0".into(),
                stream: "events".into(),
                seq: u64::try_from(last).expect("offset") + 1,
                schema_fingerprint: sluice_protocol::schema_fingerprint(&schema),
                created_at_us: 0,
                rows: u32::try_from(offsets.len()).expect("rows"),
                checkpoint: None,
            },
            batch,
            wire_bytes: 8 * offsets.len(),
            received_at_us: 0,
            origin: Some(Origin::Rows {
                partition: ("events".into(), 0),
                offsets: offsets.to_vec(),
            }),
            reply,
        };
        assert!(lander.land(req).await.is_ok(), "lander running");
        verdict
    }

    /// Hand over batch `seq` of `agent` (one row, `id` = seq) for table `events`, as a
    /// QUIC receiver would; the verdict to come.
    pub(crate) async fn land_batch(
        lander: &Lander,
        agent: &str,
        seq: u64,
    ) -> oneshot::Receiver<Verdict> {
        let schema = Arc::new(ArrowSchema::new(vec![Field::new(
            "id",
            DataType::Int64,
            true,
        )]));
        let id = i64::try_from(seq).expect("seq");
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![id]))])
                .expect("batch");
        land(lander, agent, "events", seq, batch).await
    }

    /// Hand `batch` to the lander as `agent`'s batch `seq` of `stream`.
    pub(crate) async fn land(
        lander: &Lander,
        agent: &str,
        stream: &str,
        seq: u64,
        batch: RecordBatch,
    ) -> oneshot::Receiver<Verdict> {
        let (reply, verdict) = oneshot::channel();
        let req = LandRequest {
            envelope: Envelope {
                agent: agent.into(),
                stream: stream.into(),
                seq,
                schema_fingerprint: sluice_protocol::schema_fingerprint(&batch.schema()),
                created_at_us: 0,
                rows: u32::try_from(batch.num_rows()).expect("rows"),
                checkpoint: Some(format!("ckpt-{seq}")),
            },
            batch,
            wire_bytes: 8,
            received_at_us: 0,
            origin: None,
            reply,
        };
        assert!(lander.land(req).await.is_ok(), "lander running");
        verdict
    }

    /// Files under the table's `metadata/` folder whose names end with `suffix`.
    pub(crate) fn metadata_files(table: &Table, suffix: &str) -> Vec<std::path::PathBuf> {
        let dir = format!("{}/metadata", table.metadata().location());
        let dir = dir.strip_prefix("file://").expect("local warehouse");
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .expect("metadata dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect();
        out.sort();
        out
    }

    #[tokio::test]
    async fn a_batch_that_cannot_make_a_table_is_refused_not_retried() {
        let lake = TestLake::new().await;
        let lander = lake.lander();
        let one = |name: &str| {
            RecordBatch::try_new(
                Arc::new(ArrowSchema::new(vec![
                    Field::new("v", DataType::Int64, true),
                    Field::new(name, DataType::Int64, true),
                ])),
                vec![
                    Arc::new(Int64Array::from(vec![1])),
                    Arc::new(Int64Array::from(vec![2])),
                ],
            )
            .expect("batch")
        };
        for (stream, column, why) in [
            ("a", "_seq", "reserved for the lake"),
            ("b", "v", "given twice"),
        ] {
            let v = land(&lander, "edge", stream, 1, one(column)).await;
            match tokio::time::timeout(Duration::from_secs(20), v).await {
                Ok(Ok(Verdict::Rejected(reason))) => {
                    assert!(reason.contains(why), "{reason}")
                }
                other => panic!("{stream}: expected a rejection, got {other:?}"),
            }
        }
        // The lane is not blocked: the agent's next batch of the stream lands.
        let v = land(&lander, "edge", "a", 2, one("w")).await;
        lander.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed));
    }

    #[tokio::test]
    async fn a_table_committed_to_hundreds_of_times_keeps_its_manifests_and_metadata_bounded() {
        let lake = TestLake::new().await;
        // Small limits, to show in 300 commits what the defaults show in thousands.
        lake.create_events(&[
            (lake::manifests::MERGE_MIN_COUNT, "10"),
            (
                iceberg::spec::TableProperties::PROPERTY_METADATA_PREVIOUS_VERSIONS_MAX,
                "3",
            ),
        ])
        .await;
        let lander = lake.lander();
        for seq in 1..=300 {
            let v = land_batch(&lander, "edge", seq).await;
            lander.flush().await;
            assert_eq!(v.await, Ok(Verdict::Committed), "batch {seq}");
            if seq % 50 == 0 {
                let table = lake.table("events").await;
                let current = table.metadata().current_snapshot().expect("snapshot");
                let manifests = lake::manifest_list(&table, current).await.expect("list");
                assert!(
                    manifests.entries().len() <= 10,
                    "{} manifests after {seq} commits",
                    manifests.entries().len()
                );
                let json = metadata_files(&table, ".metadata.json");
                assert!(
                    json.len() <= 4,
                    "{} metadata files after {seq} commits",
                    json.len()
                );
            }
        }
        let table = lake.table("events").await;
        assert_eq!(table.metadata().snapshots().len(), 300);
        let want: Vec<(i64, i64)> = (1..=300).map(|s| (s, s)).collect();
        assert_eq!(landed_ids(&lake.catalog).await, want, "every row once");
        // A processor started now reads the marks back.
        let again = lake.lander();
        assert_eq!(
            again.committed_mark("edge", "events").await,
            Ok((300, Some("ckpt-300".to_string())))
        );
        assert_eq!(
            land_batch(&again, "edge", 300).await.await,
            Ok(Verdict::Duplicate)
        );
    }

    #[tokio::test]
    async fn a_merge_takes_the_manifests_the_lander_wrote_from_memory_not_storage() {
        let lake = TestLake::new().await;
        lake.create_events(&[(lake::manifests::MERGE_MIN_COUNT, "10")])
            .await;
        let lander = lake.lander();
        for seq in 1..=9 {
            let v = land_batch(&lander, "edge", seq).await;
            lander.flush().await;
            assert_eq!(v.await, Ok(Verdict::Committed), "batch {seq}");
        }
        // Another writer's commit (adding nothing) makes the lander load the table again;
        // what it knows of the manifests must survive that.
        let table = lake.table("events").await;
        let props = [("note".to_string(), "other writer".to_string())].into();
        lake::snapshot::commit(
            &lake.swap,
            &Head::new(table),
            &Change::append(vec![], props),
        )
        .await
        .expect("other writer's commit");
        // The next commit merges the 9 manifests into its own. Take them away: the merge
        // must not need to read them.
        let table = lake.table("events").await;
        let current = table.metadata().current_snapshot().expect("snapshot");
        let list = lake::manifest_list(&table, current).await.expect("list");
        assert_eq!(list.entries().len(), 9);
        for m in list.entries() {
            let path = m.manifest_path.strip_prefix("file://").expect("local");
            std::fs::remove_file(path).expect("remove manifest");
        }
        let v = land_batch(&lander, "edge", 10).await;
        let verdict = tokio::time::timeout(Duration::from_secs(20), async {
            lander.flush().await;
            v.await
        })
        .await;
        assert_eq!(
            verdict.map_err(|_| "no verdict in 20 s: the commit kept failing"),
            Ok(Ok(Verdict::Committed))
        );
        let table = lake.table("events").await;
        let current = table.metadata().current_snapshot().expect("snapshot");
        let list = lake::manifest_list(&table, current).await.expect("list");
        assert_eq!(list.entries().len(), 1, "merged into one manifest");
        let want: Vec<(i64, i64)> = (1..=10).map(|s| (s, s)).collect();
        assert_eq!(landed_ids(&lake.catalog).await, want, "every row once");
    }

    #[tokio::test]
    async fn marks_of_a_thousand_agents_stay_out_of_the_snapshot_summary() {
        let lake = TestLake::new().await;
        let lander = lake.lander();
        let agent = |a: usize| format!("agent-with-a-rather-long-name-{a:04}");
        // 150 commits, each of 50 agents' batches: 1,000 agents in all, each sending in
        // 7 or 8 commits; the deltas are files, and a base is written every 100 commits.
        let mut last = vec![0u64; 1000];
        for round in 0..150usize {
            let mut verdicts = Vec::new();
            for k in 0..50 {
                let a = (round * 50 + k * 7) % 1000;
                last[a] += 1;
                verdicts.push(land_batch(&lander, &agent(a), last[a]).await);
            }
            lander.flush().await;
            for v in verdicts {
                assert_eq!(v.await, Ok(Verdict::Committed));
            }
            let table = lake.table("events").await;
            let summary = &table
                .metadata()
                .current_snapshot()
                .expect("snapshot")
                .summary();
            let bytes: usize = summary
                .additional_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            assert!(bytes < 2048, "summary of {bytes} bytes after round {round}");
        }
        let table = lake.table("events").await;
        assert!(
            !metadata_files(&table, ".json")
                .iter()
                .filter(|p| p.to_string_lossy().contains("/marks-"))
                .collect::<Vec<_>>()
                .is_empty()
        );
        let again = lake.lander();
        for (a, seq) in last.iter().enumerate() {
            let mark = again
                .committed_mark(&agent(a), "events")
                .await
                .expect("mark");
            assert_eq!(mark.0, *seq, "agent {a}");
            if *seq > 0 {
                assert_eq!(mark.1, Some(format!("ckpt-{seq}")));
            }
        }
    }

    /// Every `id` in the table and its `_seq`, in id order.
    async fn landed_ids(catalog: &Arc<dyn Catalog>) -> Vec<(i64, i64)> {
        let ident = iceberg::TableIdent::from_strs(["bronze", "events"]).expect("ident");
        let table = catalog.load_table(&ident).await.expect("table");
        let files = lake::live_files(&table).await.expect("files");
        let mut ids = Vec::new();
        for b in lake::read_data_files(&table, &files).await.expect("read") {
            use arrow_array::cast::AsArray;
            let id = b
                .column_by_name("id")
                .expect("id")
                .as_primitive::<arrow_array::types::Int64Type>();
            let seq = b
                .column_by_name(lake::SEQ_COLUMN)
                .expect("_seq")
                .as_primitive::<arrow_array::types::Int64Type>();
            ids.extend(
                id.values()
                    .iter()
                    .copied()
                    .zip(seq.values().iter().copied()),
            );
        }
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn runs_read_again_land_only_the_rows_the_table_lacks() {
        let lake = TestLake::new().await;
        let catalog = &lake.catalog;
        let a = lake.lander();
        let skip_4 = |r: std::ops::Range<i64>| r.filter(|o| *o != 4).collect::<Vec<_>>();
        let v = land_run(&a, &skip_4(0..10)).await;
        a.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed));
        // Read again from offset 2 (after a restart, say): only 10..15 are new.
        let v = land_run(&a, &skip_4(2..15)).await;
        a.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed));
        let v = land_run(&a, &[5, 6]).await;
        assert_eq!(v.await, Ok(Verdict::Duplicate));

        // The partition moves to a second processor while the first still holds 15..40:
        // the second starts where the table ends and reads further. Whichever commits
        // second lands only what the other did not.
        let b = lake.lander();
        let va = land_run(&a, &(15..40).collect::<Vec<_>>()).await;
        let vb = land_run(&b, &(15..60).collect::<Vec<_>>()).await;
        tokio::join!(a.flush(), b.flush());
        let verdicts = [va.await.expect("verdict"), vb.await.expect("verdict")];
        assert!(verdicts.contains(&Verdict::Committed), "{verdicts:?}");

        let want: Vec<(i64, i64)> = skip_4(0..60).into_iter().map(|o| (o, o + 1)).collect();
        assert_eq!(
            landed_ids(catalog).await,
            want,
            "every row once, numbered by offset"
        );

        // A commit from a head another commit has moved past changes nothing.
        let stale = Head::new(lake.table("events").await);
        drop(land_run(&a, &[60]).await);
        a.flush().await;
        let before = lake.table("events").await;
        let err =
            lake::snapshot::commit(&lake.swap, &stale, &Change::append(vec![], HashMap::new()))
                .await
                .expect_err("moved since");
        assert!(matches!(err, CommitError::Conflict), "{err}");
        assert_eq!(
            lake.table("events").await.metadata_location(),
            before.metadata_location()
        );
    }
}

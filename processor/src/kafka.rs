//! The Kafka receiver: one member of a consumer group, landing the batches agents' Kafka
//! sinks write.
//!
//! Exactly once without Kafka transactions:
//! - every table's snapshot summary carries, per partition, an offset below which the
//!   partition is entirely in the lake (see [`crate::inflight`]); when the group gives this
//!   processor a partition, it starts reading at the highest such mark over all tables;
//! - a batch is recognised as already landed by its (agent, stream, sequence), which the
//!   lander checks again under the commit, after any conflict, against the table as the
//!   catalog has it; two processors racing after a rebalance cannot both append it.
//!
//! Messages of plain JSON topics are landed in runs (see [`Run`]): each row is numbered by
//! its offset, so a run read again lands only the rows the table lacks.
//!
//! The consumer group's own committed offsets are kept up to date (the settled prefix of
//! each partition) so Kafka tools show the group's lag; they are only a fallback for
//! partitions no table has a mark for.
//!
//! The consumer runs on a thread of its own: librdkafka's rebalance callback must decide
//! the starting offsets before it returns, which takes a catalog read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use sluice_protocol::Envelope;
use tokio::sync::oneshot;

use crate::config::KafkaConfig;
use crate::inflight::InFlight;
use crate::json_topic::{DeadLetter, JsonTopic, dead_letter_batch};
use crate::lander::{LandRequest, Lander, Origin, Verdict};
use crate::metrics::Metrics;
use crate::progress::Partition;

/// A running Kafka receiver.
pub struct KafkaReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaReceiver {
    /// Join the group and start consuming. The columns of JSON topics without a declared
    /// schema are read from their tables, if these exist.
    pub async fn start(
        cfg: &KafkaConfig,
        catalog: &dyn iceberg::Catalog,
        namespace: &str,
        lander: Lander,
        inflight: InFlight,
        metrics: Arc<Metrics>,
        admission: crate::signed::Admission,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut json = HashMap::new();
        for (topic, j) in &cfg.json {
            let table = cfg.json_table(topic);
            let schema = match &j.schema {
                Some(columns) => Some(crate::json_topic::declared_schema(columns)),
                None => crate::lake::load_if_exists(catalog, namespace, &table)
                    .await
                    .with_context(|| format!("cannot load table {namespace}.{table}"))?
                    .map(|t| crate::lake::table_user_schema(&t))
                    .transpose()
                    .with_context(|| format!("cannot read the columns of {namespace}.{table}"))?,
            };
            json.insert(topic.clone(), JsonTopic::new(table, schema));
        }
        let runtime = tokio::runtime::Handle::current();
        let health = metrics.health.watch("kafka consumer", "messages");
        let broker_errors = Arc::new(AtomicBool::new(false));
        let ctx = GroupContext {
            lander: lander.clone(),
            inflight: inflight.clone(),
            runtime: runtime.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            broker_errors: broker_errors.clone(),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Eager rebalancing: a partition is given up entirely before anyone else
            // starts on it, and the rebalance callback below assigns with explicit offsets.
            .set("partition.assignment.strategy", "range,roundrobin")
            // A processor that dies is replaced this soon (Kafka's default is 45 s).
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Some brokers (tansu 0.6) hold every fetch this long even with data ready, and
            // return one batch: with librdkafka's 500 ms a partition reads about 5x slower. On
            // an idle topic it costs 100 small fetches a second.
            .set("fetch.wait.max.ms", "10")
            // A topic matching a `^` pattern is found within this long of its creation.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &cfg.options {
            client.set(k, v);
        }
        let consumer: BaseConsumer<GroupContext> = client
            .create_with_context(ctx)
            .context("cannot create the Kafka consumer")?;
        let topics: Vec<String> = cfg.topics.iter().chain(cfg.json.keys()).cloned().collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .with_context(|| format!("cannot subscribe to {names:?}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let run = ConsumeLoop {
            consumer,
            lander,
            inflight,
            metrics,
            runtime,
            stop: stop.clone(),
            runs: HashMap::new(),
            waiting: Vec::new(),
            waiting_bytes: 0,
            paused: false,
            rewind_at: None,
            last_commit: Instant::now(),
            topics,
            json,
            admission,
            dead_letter_table: cfg.dead_letter_table.clone(),
            stalled_after: cfg.rejoin_when_stalled,
            stall: Stall::default(),
            health,
            broker_errors,
            health_checked: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || run.run())
            .context("cannot start the Kafka consumer thread")?;
        tracing::info!(brokers = %cfg.brokers, group = %cfg.group, topics = ?cfg.topics, json_topics = ?cfg.json.keys().collect::<Vec<_>>(), "consuming Kafka topics");
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop reading; wait (within `timeout`) for what was read to be settled, commit the
    /// group's offsets and leave the group. Call while the lander still commits.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || t.join());
            if tokio::time::timeout(timeout + Duration::from_secs(5), joined)
                .await
                .is_err()
            {
                tracing::warn!("the Kafka consumer did not stop in time");
            }
        }
    }
}

/// Decides where each assigned partition starts, from the tables' marks.
struct GroupContext {
    lander: Lander,
    inflight: InFlight,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    /// The consumer's health: broker errors, until the brokers answer again.
    health: sluice_ops::Watch,
    /// Set on a broker error: the consume loop then checks whether the brokers answer.
    broker_errors: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Mostly transient (a broker away): librdkafka reconnects by itself.
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
        self.health.error(format!("{error}: {reason}"));
        self.broker_errors.store(true, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.kafka_rebalance("assign");
                let marks = self.runtime.block_on(self.lander.kafka_marks());
                let marks = match marks {
                    Ok(m) => Some(m),
                    Err(e) => {
                        // The group's committed offsets are settled ones, so starting from
                        // them is safe; it may only re-read (and skip) more.
                        tracing::error!(
                            "cannot read the tables' Kafka offsets, starting from the group's committed offsets: {e}"
                        );
                        None
                    }
                };
                // The group's committed offsets are settled prefixes (everything below is
                // in the lake), so the later of the two is safe. They matter when the last
                // commits of two tables each held the other's messages in flight: neither
                // table's mark then reaches the end, and only the group's offset does.
                let committed = consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(10))
                    .map_err(|e| tracing::warn!("cannot read the group's committed offsets: {e}"))
                    .ok();
                let mut started = Vec::new();
                for e in tpl.elements() {
                    let part: Partition = (e.topic().to_string(), e.partition());
                    let table = marks.as_ref().and_then(|m| m.offset(&part.0, part.1));
                    let group = committed.as_ref().and_then(|c| {
                        match c.find_partition(&part.0, part.1)?.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        }
                    });
                    started.push((part, table.max(group)));
                }
                for (part, start) in &started {
                    if let Some(o) = start {
                        let _ = tpl.set_partition_offset(&part.0, part.1, Offset::Offset(*o));
                    }
                    self.inflight.assign(part.clone(), *start);
                }
                tracing::info!(partitions = ?started, "assigned Kafka partitions (starting offsets from the tables)");
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!("cannot take the assigned partitions: {e}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.kafka_rebalance("revoke");
                for e in tpl.elements() {
                    self.inflight
                        .release(&(e.topic().to_string(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "Kafka partitions revoked");
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!("cannot give up the revoked partitions: {e}");
                }
            }
            other => {
                tracing::error!("Kafka rebalance error: {other:?}");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!("committing the group's offsets failed (they are a hint only): {e}");
        }
    }
}

/// A batch handed to the lander, until its verdict.
struct Waiting {
    partition: Partition,
    /// The offsets of the messages it holds.
    offsets: Vec<i64>,
    bytes: usize,
    verdict: oneshot::Receiver<Verdict>,
    /// The messages themselves, to dead-letter them if the lander refuses the batch (none
    /// for what is already a dead letter).
    messages: Vec<OwnedMessage>,
}

/// Bytes handed to the lander and not yet settled before reading pauses: commits that
/// cannot keep up (or a catalog that is down) must not fill the processor's memory.
const MAX_WAITING_BYTES: usize = 256 << 20;

/// A plain JSON topic's messages are landed in runs: those of one partition read one
/// after the other, as one batch of at most this many rows or bytes, or this old.
const RUN_ROWS: usize = 8192;
const RUN_BYTES: usize = 4 << 20;
const RUN_AGE: Duration = Duration::from_millis(100);

/// Messages of a plain JSON topic partition, read one after the other, waiting to be
/// landed: those that parse as one batch, the others as dead letters.
struct Run {
    /// The assignment of the partition they were read under.
    epoch: Option<u64>,
    started: Instant,
    values: Vec<serde_json::Value>,
    messages: Vec<OwnedMessage>,
    /// Messages that do not parse, and why.
    misfits: Vec<(OwnedMessage, String)>,
    bytes: usize,
}

impl Run {
    fn last_offset(&self) -> Option<i64> {
        let good = self.messages.last().map(Message::offset);
        let bad = self.misfits.last().map(|(m, _)| m.offset());
        good.max(bad)
    }

    fn len(&self) -> usize {
        self.messages.len() + self.misfits.len()
    }
}

struct ConsumeLoop {
    consumer: BaseConsumer<GroupContext>,
    lander: Lander,
    inflight: InFlight,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    /// Per JSON topic partition, the run being read.
    runs: HashMap<Partition, Run>,
    waiting: Vec<Waiting>,
    waiting_bytes: usize,
    paused: bool,
    /// Per partition, where to read again (a message the lander could not take), and when.
    rewind_at: Option<(Instant, HashMap<Partition, i64>)>,
    last_commit: Instant,
    topics: Vec<String>,
    /// Plain JSON topics, by name.
    json: HashMap<String, JsonTopic>,
    /// Which batches are their agent's, and theirs to write.
    admission: crate::signed::Admission,
    dead_letter_table: String,
    stalled_after: Duration,
    stall: Stall,
    health: sluice_ops::Watch,
    broker_errors: Arc<AtomicBool>,
    /// When the brokers were last asked whether they answer.
    health_checked: Instant,
}

/// Partitions held by other members, watched for progress.
#[derive(Default)]
struct Stall {
    /// Per partition: its committed offset, and since when it has stood there.
    seen: HashMap<Partition, (i64, Instant)>,
    checked: Option<Instant>,
    /// How long a partition must stand still, raised after each rejoin.
    wait: Duration,
}

impl ConsumeLoop {
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    let msg = msg.detach();
                    self.on_message(msg);
                    self.flush_runs(false);
                }
                Some(Err(e)) => tracing::warn!("Kafka consumer: {e}"),
                // Nothing more to read for now: land what was read.
                None => self.flush_runs(true),
            }
            self.collect_verdicts();
            self.hold_back();
            self.rewind_if_due();
            self.commit_offsets(false);
            self.rejoin_if_stalled();
            self.check_brokers();
        }
        // Stopping: let what was read and handed over be settled, then record it.
        self.flush_runs(true);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.waiting.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            self.collect_verdicts();
        }
        self.commit_offsets(true);
        // Leave the group now rather than after the session timeout.
        self.consumer.unsubscribe();
    }

    fn on_message(&mut self, msg: OwnedMessage) {
        let partition: Partition = (msg.topic().to_string(), msg.partition());
        let offset = msg.offset();
        self.metrics.kafka_message(&partition.0);
        self.inflight.read(&partition, offset);
        let payload = msg.payload().unwrap_or_default();
        if let Some(topic) = self.json.get_mut(&partition.0) {
            let parsed = topic.parse(payload);
            self.add_to_run(partition, parsed, msg);
            return;
        }
        match self.decode(&msg) {
            Ok((envelope, batch, wire_bytes)) => {
                let origin = Origin::Message { partition, offset };
                self.submit(envelope, batch, wire_bytes, origin, vec![msg]);
            }
            Err((_, reason)) => self.dead_letter(vec![(msg, reason)], false),
        }
    }

    /// A message's envelope (from its headers) and batch (its value), checked in the order
    /// that spends least on a forgery: the headers, the signature, the agent's permission,
    /// and only then the payload.
    fn decode(
        &self,
        msg: &OwnedMessage,
    ) -> Result<(Envelope, arrow_array::RecordBatch, usize), (&'static str, String)> {
        let headers: Vec<(&str, Option<&[u8]>)> = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
            .unwrap_or_default();
        let envelope = Envelope::from_kafka_headers(headers.iter().copied())
            .map_err(|e| (e.reason(), e.to_string()))?;
        let signature = sluice_protocol::kafka::Signature::from_kafka_headers(headers)
            .map_err(|e| (e.reason(), e.to_string()))?;
        let payload = msg.payload().unwrap_or_default();
        self.admission
            .admit(&envelope, signature.as_ref(), payload, &self.metrics)?;
        let batch = crate::receiver::validate(&envelope, bytes::Bytes::copy_from_slice(payload))?;
        Ok((envelope, batch, payload.len()))
    }

    /// Add a JSON message to its partition's run; land the run once it is full.
    fn add_to_run(
        &mut self,
        partition: Partition,
        parsed: Result<serde_json::Value, String>,
        msg: OwnedMessage,
    ) {
        let epoch = self.inflight.epoch(&partition);
        // A run holds messages read in order under one assignment; a seek back (a rewind)
        // or a new assignment starts another.
        if self
            .runs
            .get(&partition)
            .is_some_and(|r| r.epoch != epoch || r.last_offset().is_some_and(|o| o >= msg.offset()))
        {
            self.flush_run(&partition);
        }
        let run = self.runs.entry(partition.clone()).or_insert_with(|| Run {
            epoch,
            started: Instant::now(),
            values: Vec::new(),
            messages: Vec::new(),
            misfits: Vec::new(),
            bytes: 0,
        });
        run.bytes += msg.payload().map_or(0, <[u8]>::len);
        match parsed {
            Ok(value) => {
                run.values.push(value);
                run.messages.push(msg);
            }
            Err(reason) => run.misfits.push((msg, reason)),
        }
        if run.len() >= RUN_ROWS || run.bytes >= RUN_BYTES {
            self.flush_run(&partition);
        }
    }

    /// Land the runs that are due (all of them if `all`).
    fn flush_runs(&mut self, all: bool) {
        let due: Vec<Partition> = self
            .runs
            .iter()
            .filter(|(_, r)| all || r.started.elapsed() >= RUN_AGE)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            self.flush_run(&p);
        }
    }

    /// Hand a partition's run to the lander: the messages that fit the columns as one
    /// batch, the others (in offset order) as one batch of dead letters. A type the JSON
    /// reader cannot convert fails the whole batch: its messages are then tried one by one.
    fn flush_run(&mut self, partition: &Partition) {
        let Some(run) = self.runs.remove(partition) else {
            return;
        };
        if self.inflight.epoch(partition) != run.epoch {
            // Given up since: whoever holds it now reads these messages again.
            tracing::debug!(topic = %partition.0, partition = partition.1, messages = run.len(), "dropping the run of a partition no longer held");
            return;
        }
        let Some(topic) = self.json.get(&partition.0) else {
            return;
        };
        let table = topic.table.clone();
        let Run {
            values,
            messages,
            mut misfits,
            ..
        } = run;
        let rows = match topic.rows(&values) {
            _ if values.is_empty() => None,
            Ok(batch) => Some((batch, messages)),
            Err(_) => {
                let mut fit = Vec::new();
                for (value, msg) in values.iter().zip(messages) {
                    match topic.rows(std::slice::from_ref(value)) {
                        Ok(row) => fit.push((row, msg)),
                        Err(reason) => misfits.push((msg, reason)),
                    }
                }
                let (rows, messages): (Vec<_>, Vec<_>) = fit.into_iter().unzip();
                match rows
                    .first()
                    .map(|r| arrow_select::concat::concat_batches(&r.schema(), &rows))
                {
                    None => None,
                    Some(Ok(batch)) => Some((batch, messages)),
                    Some(Err(e)) => {
                        // Rows of one schema always concatenate; never lose them silently.
                        let reason = format!("cannot gather the rows: {e}");
                        misfits.extend(messages.into_iter().map(|m| (m, reason.clone())));
                        None
                    }
                }
            }
        };
        if !misfits.is_empty() {
            misfits.sort_by_key(|(m, _)| m.offset());
            self.dead_letter(misfits, false);
        }
        let Some((batch, messages)) = rows else {
            return;
        };
        let offsets: Vec<i64> = messages.iter().map(Message::offset).collect();
        let (Some(first), Some(&last)) = (messages.first(), offsets.last()) else {
            return;
        };
        let bytes = messages
            .iter()
            .map(|m| m.payload().map_or(0, <[u8]>::len))
            .sum();
        let envelope = offset_envelope(partition_agent(first), &table, first, last, &batch);
        let origin = Origin::Rows {
            partition: partition.clone(),
            offsets,
        };
        self.submit(envelope, batch, bytes, origin, messages);
    }

    /// Hand a batch to the lander; it stays in flight until its verdict. `messages` are
    /// what to dead-letter if the lander refuses it (none for dead letters).
    fn submit(
        &mut self,
        envelope: Envelope,
        batch: arrow_array::RecordBatch,
        wire_bytes: usize,
        origin: Origin,
        messages: Vec<OwnedMessage>,
    ) {
        let partition = origin.partition().clone();
        let offsets = origin.offsets().to_vec();
        let (reply, verdict) = oneshot::channel();
        let req = LandRequest {
            envelope,
            batch,
            wire_bytes,
            received_at_us: chrono::Utc::now().timestamp_micros(),
            origin: Some(origin),
            reply,
        };
        if self.runtime.block_on(self.lander.land(req)).is_err() {
            // The lander is gone: the processor is stopping.
            self.stop.store(true, Ordering::SeqCst);
            return;
        }
        self.waiting_bytes += wire_bytes;
        self.waiting.push(Waiting {
            partition,
            offsets,
            bytes: wire_bytes,
            verdict,
            messages,
        });
    }

    /// Land messages that cannot go where they should in the dead-letter table, raw, with
    /// the reasons: messages of one partition, in offset order. Their offsets are settled
    /// only once that is committed.
    ///
    /// Dead-letter rows are numbered by offset, like the rows of JSON topics, and a lane
    /// of them must arrive in offset order. Messages the lander `refused` are known only
    /// later than those dead-lettered as read, so they have a lane of their own.
    fn dead_letter(&mut self, letters: Vec<(OwnedMessage, String)>, refused: bool) {
        let (Some((first, reason)), Some((last, _))) = (letters.first(), letters.last()) else {
            return;
        };
        tracing::warn!(
            topic = %first.topic(),
            partition = first.partition(),
            offsets = %format!("{}..={}", first.offset(), last.offset()),
            messages = letters.len(),
            table = %self.dead_letter_table,
            "messages sent to the dead-letter table; the first because: {reason}"
        );
        for (msg, reason) in &letters {
            self.metrics.kafka_dead_letter(msg.topic());
            tracing::debug!(topic = %msg.topic(), partition = msg.partition(), offset = msg.offset(), "dead letter: {reason}");
        }
        let rows: Vec<DeadLetter<'_>> = letters
            .iter()
            .map(|(msg, reason)| DeadLetter {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key(),
                value: msg.payload(),
                reason,
                timestamp_us: msg.timestamp().to_millis().map(|ms| ms * 1000),
            })
            .collect();
        let partition: Partition = (first.topic().to_string(), first.partition());
        let offsets: Vec<i64> = letters.iter().map(|(m, _)| m.offset()).collect();
        match dead_letter_batch(&rows) {
            Ok(batch) => {
                let mut agent = partition_agent(first);
                if refused {
                    agent.push_str("-refused");
                }
                let envelope =
                    offset_envelope(agent, &self.dead_letter_table, first, last.offset(), &batch);
                let bytes = letters
                    .iter()
                    .map(|(m, _)| m.payload().map_or(0, <[u8]>::len))
                    .sum();
                let origin = Origin::Rows { partition, offsets };
                self.submit(envelope, batch, bytes, origin, Vec::new());
            }
            Err(e) => {
                // Cannot happen with the fixed dead-letter columns; never lose it silently.
                tracing::error!(topic = %partition.0, partition = partition.1, ?offsets, "cannot build dead-letter rows, the messages are skipped: {e}");
                for o in offsets {
                    self.inflight.settle(&partition, o);
                }
            }
        }
    }

    /// Pause fetching while too much is waiting for commits; resume once it drains. The
    /// consumer keeps polling meanwhile, so it stays in the group.
    fn hold_back(&mut self) {
        let over = self.waiting_bytes >= MAX_WAITING_BYTES;
        if over == self.paused {
            return;
        }
        let Ok(assigned) = self.consumer.assignment() else {
            return;
        };
        let r = if over {
            tracing::warn!(
                waiting_mib = self.waiting_bytes >> 20,
                "commits are behind: pausing Kafka reads"
            );
            self.consumer.pause(&assigned)
        } else {
            tracing::info!("commits caught up: resuming Kafka reads");
            self.consumer.resume(&assigned)
        };
        match r {
            Ok(()) => self.paused = over,
            Err(e) => tracing::warn!("cannot pause or resume Kafka reads: {e}"),
        }
    }

    fn collect_verdicts(&mut self) {
        let mut rewind: HashMap<Partition, i64> = HashMap::new();
        let mut settled_bytes = 0;
        let mut refused = Vec::new();
        self.waiting.retain_mut(|w| match w.verdict.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => true,
            Ok(verdict) => {
                settled_bytes += w.bytes;
                if let Verdict::Rejected(reason) = verdict {
                    if w.messages.is_empty() {
                        tracing::error!(topic = %w.partition.0, partition = w.partition.1, offsets = ?w.offsets, "the dead-letter table refused a message, it is skipped: {reason}");
                    } else {
                        // Still in flight: settled once their dead letters are committed.
                        let reason = format!("refused by the lander: {reason}");
                        refused.push(
                            std::mem::take(&mut w.messages)
                                .into_iter()
                                .map(|m| (m, reason.clone()))
                                .collect(),
                        );
                        return false;
                    }
                }
                for o in &w.offsets {
                    self.inflight.settle(&w.partition, *o);
                }
                false
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                // The lander could not take it (its table could not be loaded): read it
                // again, after a pause. It stays open meanwhile, so no mark passes it.
                settled_bytes += w.bytes;
                if let Some(&first) = w.offsets.first() {
                    let r = rewind.entry(w.partition.clone()).or_insert(first);
                    *r = (*r).min(first);
                }
                false
            }
        });
        self.waiting_bytes = self.waiting_bytes.saturating_sub(settled_bytes);
        for letters in refused {
            self.dead_letter(letters, true);
        }
        if !rewind.is_empty() {
            let (_, pending) = self
                .rewind_at
                .get_or_insert_with(|| (Instant::now() + Duration::from_secs(1), HashMap::new()));
            for (p, o) in rewind {
                let r = pending.entry(p).or_insert(o);
                *r = (*r).min(o);
            }
        }
    }

    fn rewind_if_due(&mut self) {
        let due = self
            .rewind_at
            .as_ref()
            .is_some_and(|(at, _)| Instant::now() >= *at);
        if !due {
            return;
        }
        let Some((_, rewind)) = self.rewind_at.take() else {
            return;
        };
        for ((topic, partition), offset) in rewind {
            tracing::warn!(%topic, partition, offset, "reading again from a batch the lander could not take");
            if let Err(e) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(5),
            ) {
                // Most likely the partition was revoked meanwhile: its new owner starts
                // from the tables' marks, which never pass an unsettled message.
                tracing::warn!(%topic, partition, "cannot seek back: {e}");
            }
        }
    }

    /// Rejoin the group when a partition this member does not hold has unread messages
    /// and its committed offset has not moved for `stalled_after`. Live members commit
    /// their settled offsets every second; a partition that stands still is held by a
    /// member that is gone, which a broker should have noticed: tansu 0.6 can rebalance on
    /// the expiry of a dead member's session and still give it partitions. Rejoining makes
    /// the group rebalance again. Checks run every 5 s; after a rejoin the next one waits
    /// twice as long (up to ten minutes), so a live but stuck member causes few rebalances.
    fn rejoin_if_stalled(&mut self) {
        if self.stalled_after.is_zero()
            || self
                .stall
                .checked
                .is_some_and(|c| c.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.stall.checked = Some(Instant::now());
        let timeout = Duration::from_secs(5);
        let assigned: HashSet<Partition> = match self.consumer.assignment() {
            Ok(a) => a
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Err(_) => return,
        };
        // Named topics, and the ones a pattern gave this member.
        let mut topics: HashSet<String> = self
            .topics
            .iter()
            .filter(|t| !t.starts_with('^'))
            .cloned()
            .collect();
        topics.extend(assigned.iter().map(|(t, _)| t.clone()));
        let mut others = TopicPartitionList::new();
        for topic in &topics {
            let Ok(meta) = self.consumer.fetch_metadata(Some(topic), timeout) else {
                return;
            };
            for t in meta.topics() {
                for p in t.partitions() {
                    if !assigned.contains(&(t.name().to_string(), p.id())) {
                        others.add_partition(t.name(), p.id());
                    }
                }
            }
        }
        if others.count() == 0 {
            self.stall.seen.clear();
            return;
        }
        let Ok(committed) = self.consumer.committed_offsets(others, timeout) else {
            return;
        };
        let now = Instant::now();
        let mut stalled = Vec::new();
        let mut seen = HashMap::new();
        for e in committed.elements() {
            let part = (e.topic().to_string(), e.partition());
            let Ok((low, high)) = self.consumer.fetch_watermarks(&part.0, part.1, timeout) else {
                return;
            };
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            if at >= high {
                continue; // nothing unread
            }
            let since = match self.stall.seen.get(&part) {
                Some((prev, since)) if *prev == at => *since,
                _ => now,
            };
            if now.duration_since(since) >= self.stall.wait.max(self.stalled_after) {
                stalled.push((part.clone(), at, high));
            }
            seen.insert(part, (at, since));
        }
        self.stall.seen = seen;
        if stalled.is_empty() {
            return;
        }
        tracing::warn!(
            partitions = ?stalled,
            "Kafka partitions with unread messages have not moved in {:?}: rejoining the consumer group",
            self.stall.wait.max(self.stalled_after)
        );
        self.consumer.unsubscribe();
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.consumer.subscribe(&names) {
            tracing::error!("cannot subscribe to {names:?} again: {e}");
        }
        self.stall.seen.clear();
        self.stall.wait =
            (self.stall.wait.max(self.stalled_after) * 2).min(Duration::from_secs(600));
    }

    /// After broker errors, ask the brokers for metadata every few seconds: an answer
    /// means the errors are over, even on a topic with nothing to read.
    fn check_brokers(&mut self) {
        if !self.broker_errors.load(Ordering::Relaxed)
            || self.health_checked.elapsed() < Duration::from_secs(5)
        {
            return;
        }
        self.health_checked = Instant::now();
        if self
            .consumer
            .fetch_metadata(None, Duration::from_secs(2))
            .is_ok()
        {
            self.broker_errors.store(false, Ordering::Relaxed);
            self.health.recovered();
        }
    }

    /// Report the settled prefix of each partition to the group (at most once a second).
    fn commit_offsets(&mut self, now: bool) {
        if !now && self.last_commit.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_commit = Instant::now();
        let settled = self.inflight.settled();
        if settled.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in settled {
            let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
        }
        let mode = if now {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::debug!("cannot commit the group's offsets (a hint only): {e}");
        }
    }
}

/// The "agent" of rows numbered by offset: the message's topic partition.
fn partition_agent(msg: &OwnedMessage) -> String {
    let topic: String = msg
        .topic()
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{topic}-{}", msg.partition())
}

/// The envelope of rows from a plain JSON topic or of dead letters, one per message from
/// `msg` to the one at `last_offset` (one partition, in offset order): its sequence is the
/// last offset + 1, so the lander's sequence marks deduplicate by offset.
fn offset_envelope(
    agent: String,
    table: &str,
    msg: &OwnedMessage,
    last_offset: i64,
    batch: &arrow_array::RecordBatch,
) -> Envelope {
    Envelope {
        agent,
        stream: table.to_string(),
        seq: u64::try_from(last_offset).unwrap_or(0) + 1,
        schema_fingerprint: sluice_protocol::schema_fingerprint(&batch.schema()),
        created_at_us: msg
            .timestamp()
            .to_millis()
            .map_or_else(|| chrono::Utc::now().timestamp_micros(), |ms| ms * 1000),
        rows: u32::try_from(batch.num_rows()).unwrap_or(u32::MAX),
        checkpoint: None,
    }
}

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
//! The consumer group's own committed offsets are kept up to date (the settled prefix of
//! each partition) so Kafka tools show the group's lag; they are only a fallback for
//! partitions no table has a mark for.
//!
//! The consumer runs on a thread of its own: librdkafka's rebalance callback must decide
//! the starting offsets before it returns, which takes a catalog read.

use std::collections::HashMap;
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
use crate::lander::{LandRequest, Lander, Origin, Verdict};
use crate::metrics::Metrics;
use crate::progress::Partition;

/// A running Kafka receiver.
pub struct KafkaReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaReceiver {
    /// Join the group and start consuming.
    pub fn start(
        cfg: &KafkaConfig,
        lander: Lander,
        inflight: InFlight,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let runtime = tokio::runtime::Handle::current();
        let ctx = GroupContext {
            lander: lander.clone(),
            inflight: inflight.clone(),
            runtime: runtime.clone(),
            metrics: metrics.clone(),
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
            // A topic matching a `^` pattern is found within this long of its creation.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &cfg.options {
            client.set(k, v);
        }
        let consumer: BaseConsumer<GroupContext> = client
            .create_with_context(ctx)
            .context("cannot create the Kafka consumer")?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .with_context(|| format!("cannot subscribe to {topics:?}"))?;
        let topics = cfg.topics.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let run = ConsumeLoop {
            consumer,
            lander,
            inflight,
            metrics,
            runtime,
            stop: stop.clone(),
            waiting: Vec::new(),
            rewind_at: None,
            last_commit: Instant::now(),
            topics,
            rejoin_when_idle: cfg.rejoin_when_idle,
            idle: Idle::default(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || run.run())
            .context("cannot start the Kafka consumer thread")?;
        tracing::info!(brokers = %cfg.brokers, group = %cfg.group, topics = ?cfg.topics, "consuming Kafka topics");
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
                let mut started = Vec::new();
                for e in tpl.elements() {
                    let part: Partition = (e.topic().to_string(), e.partition());
                    let start = marks.as_ref().and_then(|m| m.offset(&part.0, part.1));
                    started.push((part, start));
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

/// A message handed to the lander, until its verdict.
struct Waiting {
    partition: Partition,
    offset: i64,
    verdict: oneshot::Receiver<Verdict>,
}

struct ConsumeLoop {
    consumer: BaseConsumer<GroupContext>,
    lander: Lander,
    inflight: InFlight,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    waiting: Vec<Waiting>,
    /// Per partition, where to read again (a message the lander could not take), and when.
    rewind_at: Option<(Instant, HashMap<Partition, i64>)>,
    last_commit: Instant,
    topics: Vec<String>,
    rejoin_when_idle: Duration,
    idle: Idle,
}

/// How long this member has had no partitions, and when it next rejoins.
#[derive(Default)]
struct Idle {
    since: Option<Instant>,
    checked: Option<Instant>,
    wait: Duration,
}

impl ConsumeLoop {
    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    let msg = msg.detach();
                    self.on_message(&msg);
                }
                Some(Err(e)) => tracing::warn!("Kafka consumer: {e}"),
                None => {}
            }
            self.collect_verdicts();
            self.rewind_if_due();
            self.commit_offsets(false);
            self.rejoin_if_idle();
        }
        // Stopping: let what was handed over be settled, then record it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.waiting.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            self.collect_verdicts();
        }
        self.commit_offsets(true);
        // Leave the group now rather than after the session timeout.
        self.consumer.unsubscribe();
    }

    fn on_message(&mut self, msg: &OwnedMessage) {
        let partition: Partition = (msg.topic().to_string(), msg.partition());
        let offset = msg.offset();
        self.metrics.kafka_message(&partition.0);
        self.inflight.read(&partition, offset);
        let (reply, verdict) = oneshot::channel();
        match decode(msg) {
            Ok((envelope, batch, wire_bytes)) => {
                let req = LandRequest {
                    envelope,
                    batch,
                    wire_bytes,
                    received_at_us: chrono::Utc::now().timestamp_micros(),
                    origin: Some(Origin {
                        partition: partition.clone(),
                        offset,
                    }),
                    reply,
                };
                if self.runtime.block_on(self.lander.land(req)).is_err() {
                    // The lander is gone: the processor is stopping.
                    self.stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
            Err((reason, message)) => {
                tracing::warn!(
                    topic = %partition.0,
                    partition = partition.1,
                    offset,
                    "not a sluice batch, skipped: {message}"
                );
                self.metrics.frame_rejected(reason);
                let _ = reply.send(Verdict::Rejected(message));
            }
        }
        self.waiting.push(Waiting {
            partition,
            offset,
            verdict,
        });
    }

    fn collect_verdicts(&mut self) {
        let mut rewind: HashMap<Partition, i64> = HashMap::new();
        self.waiting.retain_mut(|w| match w.verdict.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => true,
            Ok(verdict) => {
                if let Verdict::Rejected(reason) = verdict {
                    tracing::error!(topic = %w.partition.0, partition = w.partition.1, offset = w.offset, "batch refused: {reason}");
                }
                self.inflight.settle(&w.partition, w.offset);
                false
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                // The lander could not take it (its table could not be loaded): read it
                // again, after a pause. It stays open meanwhile, so no mark passes it.
                let r = rewind.entry(w.partition.clone()).or_insert(w.offset);
                *r = (*r).min(w.offset);
                false
            }
        });
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

    /// Rejoin the group after holding no partition for a while. A broker that lets a dead
    /// member's session expire without a new rebalance (tansu 0.6 can, after a member was
    /// killed while another joined) leaves that member's partitions unread; rejoining makes
    /// the group rebalance. Intervals double up to ten minutes, so an idle spare member of a
    /// healthy group causes few rebalances.
    fn rejoin_if_idle(&mut self) {
        if self.rejoin_when_idle.is_zero()
            || self
                .idle
                .checked
                .is_some_and(|c| c.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let now = Instant::now();
        self.idle.checked = Some(now);
        let assigned = self.consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned > 0 {
            self.idle = Idle {
                checked: Some(now),
                ..Idle::default()
            };
            return;
        }
        if self.idle.wait.is_zero() {
            self.idle.wait = self.rejoin_when_idle;
        }
        let since = *self.idle.since.get_or_insert(now);
        if since.elapsed() < self.idle.wait {
            return;
        }
        tracing::warn!(idle = ?since.elapsed(), "the consumer group gave this processor no partition; rejoining it");
        self.consumer.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = self.consumer.subscribe(&topics) {
            tracing::error!("cannot subscribe to {topics:?} again: {e}");
        }
        self.idle.since = Some(Instant::now());
        self.idle.wait = (self.idle.wait * 2).min(Duration::from_secs(600));
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

/// A message's envelope (from its headers) and batch (its value), checked.
fn decode(
    msg: &OwnedMessage,
) -> Result<(Envelope, arrow_array::RecordBatch, usize), (&'static str, String)> {
    let headers: Vec<(&str, Option<&[u8]>)> = msg
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    let envelope =
        Envelope::from_kafka_headers(headers).map_err(|e| (e.reason(), e.to_string()))?;
    let payload = msg.payload().unwrap_or_default();
    let batch = crate::receiver::validate(&envelope, bytes::Bytes::copy_from_slice(payload))?;
    Ok((envelope, batch, payload.len()))
}

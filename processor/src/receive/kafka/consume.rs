//! The consume loop, on a thread of its own: read messages, hand their batches to the
//! lander, settle their offsets once the verdicts come, hold reads back while commits are
//! behind, and keep the group's committed offsets up to date.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sluice_protocol::Envelope;
use tokio::sync::oneshot;

use super::group::GroupContext;
use super::run::Run;
use super::stall::Stall;
use crate::lake::marks::Partition;
use crate::land::inflight::InFlight;
use crate::land::lander::{LandRequest, Lander, Origin, Verdict};
use crate::receive::json_topic::JsonTopic;
use crate::telemetry::metrics::Metrics;

/// A batch handed to the lander, until its verdict.
pub(super) struct Waiting {
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

/// The consume loop's state, on the consumer's own thread.
pub(super) struct ConsumeLoop {
    pub(super) consumer: BaseConsumer<GroupContext>,
    pub(super) lander: Lander,
    pub(super) inflight: InFlight,
    pub(super) metrics: Arc<Metrics>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) stop: Arc<AtomicBool>,
    /// Per JSON topic partition, the run being read.
    pub(super) runs: HashMap<Partition, Run>,
    pub(super) waiting: Vec<Waiting>,
    pub(super) waiting_bytes: usize,
    pub(super) paused: bool,
    /// Per partition, where to read again (a message the lander could not take), and when.
    pub(super) rewind_at: Option<(Instant, HashMap<Partition, i64>)>,
    pub(super) last_commit: Instant,
    pub(super) topics: Vec<String>,
    /// Plain JSON topics, by name.
    pub(super) json: HashMap<String, JsonTopic>,
    /// Which batches are their agent's, and theirs to write.
    pub(super) admission: crate::receive::admission::Admission,
    pub(super) dead_letter_table: String,
    pub(super) stalled_after: Duration,
    pub(super) stall: Stall,
    pub(super) health: sluice_ops::Watch,
    pub(super) broker_errors: Arc<AtomicBool>,
    /// When the brokers were last asked whether they answer.
    pub(super) health_checked: Instant,
}

impl ConsumeLoop {
    /// Consume until told to stop; then let what was read be settled, record it, and
    /// leave the group.
    pub(super) fn run(mut self) {
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
            Err(e) => self.dead_letter(vec![(msg, e.to_string())], false),
        }
    }

    /// Hand a batch to the lander; it stays in flight until its verdict. `messages` are
    /// what to dead-letter if the lander refuses it (none for dead letters).
    pub(super) fn submit(
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

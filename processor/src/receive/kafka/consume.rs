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

    pub(super) fn on_message(&mut self, msg: OwnedMessage) {
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
            quarantine: true,
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

    pub(super) fn collect_verdicts(&mut self) {
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

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    use super::super::decode::DecodeError;
    use super::super::testing::{AGENTS, DEAD_LETTERS, Fixture, agent_message, envelope};
    use super::super::testing::{binaries, cpu_rows, ints, texts};
    use super::*;
    use crate::lake::{AGENT_COLUMN, SEQ_COLUMN};
    use crate::receive::admission::NotAdmitted;
    use crate::receive::signed::Unverified;

    fn agents() -> Partition {
        (AGENTS.to_string(), 0)
    }

    #[test]
    fn a_genuine_batch_lands_in_its_stream_and_a_refused_one_in_the_dead_letters_with_its_reason() {
        let mut f = Fixture::new();
        f.inflight.assign(agents(), Some(0));
        let (_, _, genuine) = f.genuine("edge-01", 1, 0);
        let batch = cpu_rows(2);
        let payload = sluice_protocol::encode_batch(&batch).expect("ipc");
        let unsigned = agent_message(
            &envelope("edge-01", "cpu", 2, &batch),
            payload.clone(),
            None,
            1,
        );
        f.read([genuine, unsigned]);
        f.settle();
        let cpu = f.rows("cpu");
        assert_eq!(texts(&cpu, "host"), ["h0", "h1", "h2"]);
        assert_eq!(texts(&cpu, AGENT_COLUMN), ["edge-01"; 3]);
        assert_eq!(ints(&cpu, SEQ_COLUMN), [1; 3]);
        let letters = f.rows(DEAD_LETTERS);
        assert_eq!(ints(&letters, "offset"), [1]);
        let why = DecodeError::from(NotAdmitted::from(Unverified::Unsigned)).to_string();
        assert_eq!(texts(&letters, "reason"), [why]);
        assert_eq!(binaries(&letters, "value"), [payload], "raw");
        assert_eq!(f.inflight.settled(), vec![(agents(), 2)]);
    }

    #[test]
    fn a_batch_that_fits_no_table_is_quarantined_and_settled_only_once_that_is_in() {
        let mut f = Fixture::new();
        f.inflight.assign(agents(), Some(0));
        // Signed and granted, but a column the lake keeps for itself: no table takes it.
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("_seq", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![1]))],
        )
        .expect("batch");
        let env = envelope("edge-01", "cpu", 1, &batch);
        let payload = sluice_protocol::encode_batch(&batch).expect("ipc");
        let sig = f.signed("edge-01", &env, &payload);
        f.read([agent_message(&env, payload, Some(&sig), 0)]);
        assert_eq!(f.lp.waiting.len(), 1);
        assert_eq!(
            f.inflight.settled(),
            vec![(agents(), 0)],
            "not settled before its quarantine is in"
        );
        f.settle();
        let kept = f.rows_in(
            crate::land::quarantine::NAMESPACE,
            &crate::land::quarantine::table_name("cpu"),
        );
        let kept: Vec<_> = kept
            .iter()
            .flat_map(|b| crate::land::quarantine::read(b).expect("quarantine rows"))
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].agent.as_str(), kept[0].seq), ("edge-01", 1));
        assert!(kept[0].reason.contains("reserved"), "{}", kept[0].reason);
        assert_eq!(
            kept[0].batch().expect("decodes"),
            batch,
            "the rows as they came"
        );
        assert!(f.rows(DEAD_LETTERS).is_empty());
        assert!(f.rows("cpu").is_empty());
        assert_eq!(f.inflight.settled(), vec![(agents(), 1)]);
    }

    #[test]
    fn a_batch_the_lander_could_not_take_is_read_again_from_its_first_offset_after_a_pause() {
        let mut f = Fixture::new();
        let other: Partition = (AGENTS.to_string(), 1);
        f.inflight.assign(agents(), Some(4));
        for o in [4, 5, 7] {
            f.inflight.read(&agents(), o);
        }
        // The lander dropped them untaken (their table could not be loaded).
        let untaken = |partition: &Partition, offsets: &[i64], bytes| {
            let (_, verdict) = oneshot::channel();
            Waiting {
                partition: partition.clone(),
                offsets: offsets.to_vec(),
                bytes,
                verdict,
                messages: Vec::new(),
            }
        };
        f.lp.waiting = vec![
            untaken(&agents(), &[7], 100),
            untaken(&agents(), &[4, 5], 50),
            untaken(&other, &[9], 25),
        ];
        f.lp.waiting_bytes = 175;
        let before = Instant::now();
        f.lp.collect_verdicts();
        assert!(f.lp.waiting.is_empty());
        assert_eq!(f.lp.waiting_bytes, 0);
        let (at, rewind) = f.lp.rewind_at.clone().expect("a rewind is due");
        assert_eq!(rewind, HashMap::from([(agents(), 4), (other, 9)]));
        assert!(at >= before + Duration::from_secs(1), "after a pause");
        assert_eq!(
            f.inflight.settled(),
            vec![(agents(), 4)],
            "still open: no mark passes them"
        );
        // Not before it is due; then done once.
        f.lp.rewind_if_due();
        assert!(f.lp.rewind_at.is_some());
        f.lp.rewind_at = Some((Instant::now(), rewind));
        f.lp.rewind_if_due();
        assert!(f.lp.rewind_at.is_none());
    }

    #[test]
    fn reads_pause_once_256_mib_wait_for_commits_and_resume_below() {
        let mut f = Fixture::new();
        let mut assigned = TopicPartitionList::new();
        assigned.add_partition(AGENTS, 0);
        f.lp.consumer.assign(&assigned).expect("assign");
        f.lp.waiting_bytes = MAX_WAITING_BYTES - 1;
        f.lp.hold_back();
        assert!(!f.lp.paused);
        f.lp.waiting_bytes = MAX_WAITING_BYTES;
        f.lp.hold_back();
        assert!(f.lp.paused, "paused at the limit");
        f.lp.waiting_bytes = MAX_WAITING_BYTES + 1;
        f.lp.hold_back();
        assert!(f.lp.paused);
        f.lp.waiting_bytes = MAX_WAITING_BYTES - 1;
        f.lp.hold_back();
        assert!(!f.lp.paused, "resumed below it");
    }

    #[test]
    fn broker_errors_are_over_only_once_the_brokers_answer() {
        let mut f = Fixture::new();
        f.lp.health.error("all brokers down");
        f.lp.broker_errors.store(true, Ordering::Relaxed);
        // Checked at most every 5 s.
        let last = f.lp.health_checked;
        f.lp.check_brokers();
        assert_eq!(f.lp.health_checked, last, "not asked again yet");
        // Due: asked, and no broker answers.
        f.lp.health_checked = Instant::now() - Duration::from_secs(5);
        f.lp.check_brokers();
        assert!(f.lp.health_checked > last, "asked");
        assert!(f.lp.broker_errors.load(Ordering::Relaxed));
        assert!(!f.metrics.health.ready().ok, "still failing");
    }
}

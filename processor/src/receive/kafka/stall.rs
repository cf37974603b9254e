//! Partitions another member of the group holds and does not move: a member that is gone
//! but still assigned (a broker's mistake) is worked around by rejoining the group.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::consume::ConsumeLoop;
use crate::lake::marks::Partition;

/// Partitions held by other members, watched for progress.
#[derive(Default)]
pub(super) struct Stall {
    /// Per partition: its committed offset, and since when it has stood there.
    seen: HashMap<Partition, (i64, Instant)>,
    checked: Option<Instant>,
    /// How long a partition must stand still, raised after each rejoin.
    wait: Duration,
}

impl ConsumeLoop {
    /// Rejoin the group when a partition this member does not hold has unread messages
    /// and its committed offset has not moved for `stalled_after`. Live members commit
    /// their settled offsets every second; a partition that stands still is held by a
    /// member that is gone, which a broker should have noticed: tansu 0.6 can rebalance on
    /// the expiry of a dead member's session and still give it partitions. Rejoining makes
    /// the group rebalance again. Checks run every 5 s; after a rejoin the next one waits
    /// twice as long (up to ten minutes), so a live but stuck member causes few rebalances.
    pub(super) fn rejoin_if_stalled(&mut self) {
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
}

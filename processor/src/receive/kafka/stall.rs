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

impl Stall {
    /// Whether a check is due at `now`: every 5 s, never when `stalled_after` is zero.
    fn due(&self, stalled_after: Duration, now: Instant) -> bool {
        !(stalled_after.is_zero()
            || self
                .checked
                .is_some_and(|c| now.duration_since(c) < Duration::from_secs(5)))
    }

    /// Note where the partitions other members hold stand at `now` (their committed
    /// offset, low and high watermarks); those with unread messages whose offset has not
    /// moved for the wait are stalled, returned with that offset and the high watermark.
    fn observe(
        &mut self,
        now: Instant,
        stalled_after: Duration,
        partitions: Vec<(Partition, Offset, i64, i64)>,
    ) -> Vec<(Partition, i64, i64)> {
        let mut stalled = Vec::new();
        let mut seen = HashMap::new();
        for (part, committed, low, high) in partitions {
            let at = match committed {
                Offset::Offset(o) => o,
                _ => low,
            };
            if at >= high {
                continue; // nothing unread
            }
            let since = match self.seen.get(&part) {
                Some((prev, since)) if *prev == at => *since,
                _ => now,
            };
            if now.duration_since(since) >= self.wait.max(stalled_after) {
                stalled.push((part.clone(), at, high));
            }
            seen.insert(part, (at, since));
        }
        self.seen = seen;
        stalled
    }

    /// After a rejoin: start watching afresh, and wait twice as long (up to ten minutes).
    fn rejoined(&mut self, stalled_after: Duration) {
        self.seen.clear();
        self.wait = (self.wait.max(stalled_after) * 2).min(Duration::from_secs(600));
    }
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
        let now = Instant::now();
        if !self.stall.due(self.stalled_after, now) {
            return;
        }
        self.stall.checked = Some(now);
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
        let mut standing = Vec::new();
        for e in committed.elements() {
            let part = (e.topic().to_string(), e.partition());
            let Ok((low, high)) = self.consumer.fetch_watermarks(&part.0, part.1, timeout) else {
                return;
            };
            standing.push((part, e.offset(), low, high));
        }
        let stalled = self
            .stall
            .observe(Instant::now(), self.stalled_after, standing);
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
        self.stall.rejoined(self.stalled_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);
    const MS: Duration = Duration::from_millis(1);

    fn p(n: i32) -> Partition {
        ("agents".to_string(), n)
    }

    /// Partition `n` at committed offset `at`, with messages up to `high`.
    fn at(n: i32, at: i64, high: i64) -> (Partition, Offset, i64, i64) {
        (p(n), Offset::Offset(at), 0, high)
    }

    #[test]
    fn a_partition_with_unread_messages_is_stalled_once_it_has_stood_still_for_the_wait() {
        let mut stall = Stall::default();
        let t0 = Instant::now();
        assert!(stall.observe(t0, AFTER, vec![at(0, 5, 10)]).is_empty());
        assert!(
            stall
                .observe(t0 + AFTER - MS, AFTER, vec![at(0, 5, 10)])
                .is_empty(),
            "a millisecond short of the wait"
        );
        assert_eq!(
            stall.observe(t0 + AFTER, AFTER, vec![at(0, 5, 10), at(1, 3, 3)]),
            vec![(p(0), 5, 10)],
            "stood still for the wait: stalled, with where it stands and how far it could go"
        );
    }

    #[test]
    fn a_partition_that_moves_or_has_nothing_unread_is_not_stalled() {
        let mut stall = Stall::default();
        let t0 = Instant::now();
        stall.observe(t0, AFTER, vec![at(0, 5, 10)]);
        // It moved: the clock starts again from the move.
        let moved = t0 + Duration::from_secs(20);
        assert!(stall.observe(moved, AFTER, vec![at(0, 6, 10)]).is_empty());
        assert!(
            stall
                .observe(moved + AFTER - MS, AFTER, vec![at(0, 6, 10)])
                .is_empty()
        );
        assert_eq!(
            stall.observe(moved + AFTER, AFTER, vec![at(0, 6, 10)]),
            vec![(p(0), 6, 10)]
        );

        // Nothing unread, however long it stands there; nor is it remembered, so the clock
        // starts only when a message arrives.
        let mut stall = Stall::default();
        let hour = Duration::from_secs(3600);
        assert!(stall.observe(t0, AFTER, vec![at(0, 10, 10)]).is_empty());
        assert!(
            stall
                .observe(t0 + hour, AFTER, vec![at(0, 10, 10)])
                .is_empty()
        );
        assert!(
            stall
                .observe(t0 + hour, AFTER, vec![at(0, 10, 11)])
                .is_empty()
        );
        assert!(
            stall
                .observe(t0 + hour + AFTER - MS, AFTER, vec![at(0, 10, 11)])
                .is_empty()
        );
        assert_eq!(
            stall.observe(t0 + hour + AFTER, AFTER, vec![at(0, 10, 11)]),
            vec![(p(0), 10, 11)]
        );

        // No committed offset: it stands at its low watermark.
        let mut stall = Stall::default();
        let never = |low, high| (p(0), Offset::Invalid, low, high);
        stall.observe(t0, AFTER, vec![never(3, 3)]);
        assert!(
            stall
                .observe(t0 + AFTER, AFTER, vec![never(3, 3)])
                .is_empty()
        );
        stall.observe(t0, AFTER, vec![never(3, 4)]);
        assert_eq!(
            stall.observe(t0 + AFTER, AFTER, vec![never(3, 4)]),
            vec![(p(0), 3, 4)]
        );
    }

    #[test]
    fn after_each_rejoin_the_wait_doubles_up_to_ten_minutes() {
        let mut stall = Stall::default();
        let t0 = Instant::now();
        stall.observe(t0, AFTER, vec![at(0, 5, 10)]);
        assert_eq!(
            stall.observe(t0 + AFTER, AFTER, vec![at(0, 5, 10)]).len(),
            1
        );
        stall.rejoined(AFTER);
        // Watched afresh, for twice as long.
        let t1 = t0 + AFTER;
        assert!(stall.observe(t1, AFTER, vec![at(0, 5, 10)]).is_empty());
        assert!(
            stall
                .observe(t1 + 2 * AFTER - MS, AFTER, vec![at(0, 5, 10)])
                .is_empty()
        );
        assert_eq!(
            stall
                .observe(t1 + 2 * AFTER, AFTER, vec![at(0, 5, 10)])
                .len(),
            1
        );
        let mut waits = Vec::new();
        for _ in 0..6 {
            stall.rejoined(AFTER);
            waits.push(stall.wait.as_secs());
        }
        assert_eq!(waits, [120, 240, 480, 600, 600, 600]);
    }

    #[test]
    fn checks_run_every_five_seconds_and_never_when_disabled() {
        let mut stall = Stall::default();
        let t0 = Instant::now();
        assert!(!stall.due(Duration::ZERO, t0), "rejoin_when_stalled = 0");
        assert!(stall.due(AFTER, t0), "the first check");
        stall.checked = Some(t0);
        assert!(!stall.due(AFTER, t0 + Duration::from_secs(5) - MS));
        assert!(stall.due(AFTER, t0 + Duration::from_secs(5)));
        assert!(!stall.due(Duration::ZERO, t0 + Duration::from_secs(3600)));
    }
}

//! Which consumed Kafka offsets are not in the lake yet, per partition this processor reads.
//!
//! The Kafka receiver records every message it reads and marks it done once its verdict is
//! final (committed, a duplicate of something committed, or refused); the lander marks a
//! commit's messages done as soon as the commit is in, before it starts the next. When the
//! lander commits a table it asks for each partition's *low-water mark*: the lowest offset
//! still open, not counting the messages in that very commit. Every message below it is in
//! the lake, whichever table it went to, so the mark can be stored with the commit and used
//! by any processor later given the partition, as where to start reading.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::lake::marks::Partition;

#[derive(Debug, Default)]
struct PartitionState {
    /// Which assignment of the partition this is (they are numbered from 1).
    epoch: u64,
    /// The next offset to read: one past the highest read, or where reading starts.
    next: Option<i64>,
    /// Read but not yet final.
    open: BTreeSet<i64>,
}

/// Shared between the Kafka receiver (which reads and settles) and the lander (which
/// stores the marks).
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<Partitions>>);

#[derive(Debug, Default)]
struct Partitions {
    held: HashMap<Partition, PartitionState>,
    assignments: u64,
}

impl InFlight {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<Partition, PartitionState>) -> R) -> R {
        // A panic elsewhere cannot leave the map half-updated: every update is one call.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner).held)
    }

    /// This processor now reads `partition`, from `start` if known.
    pub fn assign(&self, partition: Partition, start: Option<i64>) {
        let mut p = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        p.assignments += 1;
        let epoch = p.assignments;
        p.held.insert(
            partition,
            PartitionState {
                epoch,
                next: start,
                open: BTreeSet::new(),
            },
        );
    }

    /// Which assignment of `partition` this processor holds, if it holds it: what was
    /// read under an earlier one is no longer this processor's to land.
    pub fn epoch(&self, partition: &Partition) -> Option<u64> {
        self.with(|m| m.get(partition).map(|p| p.epoch))
    }

    /// This processor no longer reads `partition`: it stops claiming anything about it.
    pub fn release(&self, partition: &Partition) {
        self.with(|m| m.remove(partition));
    }

    /// A message was read (again, after a rewind, is fine).
    pub fn read(&self, partition: &Partition, offset: i64) {
        self.with(|m| {
            if let Some(p) = m.get_mut(partition) {
                p.open.insert(offset);
                p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
            }
        });
    }

    /// A message's verdict is final.
    pub fn settle(&self, partition: &Partition, offset: i64) {
        self.with(|m| {
            if let Some(p) = m.get_mut(partition) {
                p.open.remove(&offset);
            }
        });
    }

    /// Per partition read, the offset below which everything is in the lake once the
    /// messages in `committing` are.
    pub fn marks(&self, committing: &HashMap<Partition, HashSet<i64>>) -> Vec<(Partition, i64)> {
        let none = HashSet::new();
        self.with(|m| {
            m.iter()
                .filter_map(|(part, state)| {
                    let mine = committing.get(part).unwrap_or(&none);
                    let low = state.open.iter().find(|o| !mine.contains(o)).copied();
                    low.or(state.next).map(|o| (part.clone(), o))
                })
                .collect()
        })
    }

    /// Per partition read, the offset below which every message is settled (what the
    /// consumer group's committed offsets report to Kafka tools).
    pub fn settled(&self) -> Vec<(Partition, i64)> {
        self.marks(&HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".to_string(), n)
    }

    #[test]
    fn low_water_skips_the_committing_messages_only() {
        let f = InFlight::default();
        f.assign(p(0), Some(10));
        f.assign(p(1), None);
        // Nothing read: partition 0 is known to start at 10, partition 1 is unknown.
        assert_eq!(f.settled(), vec![(p(0), 10)]);
        for o in 10..15 {
            f.read(&p(0), o);
        }
        f.settle(&p(0), 10);
        f.settle(&p(0), 12);
        assert_eq!(f.settled(), vec![(p(0), 11)]);
        // A commit holding 11 and 13 may claim up to 13 (14 is still open).
        let committing = HashMap::from([(p(0), HashSet::from([11, 13]))]);
        assert_eq!(f.marks(&committing), vec![(p(0), 14)]);
        f.settle(&p(0), 11);
        f.settle(&p(0), 13);
        f.settle(&p(0), 14);
        assert_eq!(f.settled(), vec![(p(0), 15)]);
        // A rewind reads an offset again: it is open until settled again.
        f.read(&p(0), 12);
        assert_eq!(f.settled(), vec![(p(0), 12)]);
        f.settle(&p(0), 12);
        assert_eq!(f.settled(), vec![(p(0), 15)]);
        let first = f.epoch(&p(0)).expect("assigned");
        f.release(&p(0));
        assert_eq!(f.epoch(&p(0)), None);
        f.read(&p(0), 20);
        assert!(f.settled().is_empty());
        // Taking it again is a new assignment.
        f.assign(p(0), Some(20));
        assert!(f.epoch(&p(0)).is_some_and(|e| e > first));
    }
}

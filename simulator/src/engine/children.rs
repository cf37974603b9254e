//! Child events: drawn from each parent event into the child stream's queue, and waiting
//! there for their time.

use std::cmp::Reverse;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::plan::Origin;
use super::simulation::Simulation;
use super::stream::Source;
use crate::schedule::{Event, mix};

/// A child event waiting for its time; ordered by time, then parent, then index.
pub(super) struct Pending {
    pub(super) time: i64,
    parent_seq: u64,
    k: u32,
    pub(super) entity: u32,
    pub(super) carried: Arc<RecordBatch>,
    pub(super) row: usize,
}

impl Pending {
    fn key(&self) -> (i64, u64, u32) {
        (self.time, self.parent_seq, self.k)
    }
}
impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

impl Simulation {
    /// Draw the followers of a parent chunk's events into child stream `c`'s queue.
    pub(super) fn schedule_children(
        &mut self,
        c: usize,
        parent: &RecordBatch,
        events: &[Event],
        first: u64,
    ) -> Result<(), ArrowError> {
        let plan = &self.scenario.streams[c];
        let Origin::Child {
            probability,
            min,
            max,
            delay,
            ..
        } = &plan.origin
        else {
            return Ok(());
        };
        let carried = Arc::new(
            parent.project(
                &plan
                    .carried
                    .iter()
                    .filter_map(|n| parent.schema().index_of(n).ok())
                    .collect::<Vec<_>>(),
            )?,
        );
        let run = &mut self.runs[c];
        if run.ended {
            return Ok(());
        }
        let Source::Child(heap) = &mut run.source else {
            return Ok(());
        };
        for (row, ev) in events.iter().enumerate() {
            let parent_seq = first + row as u64;
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(run.child_seed, parent_seq));
            if rng.random::<f64>() >= *probability {
                continue;
            }
            let n = if max > min {
                rng.random_range(*min..=*max)
            } else {
                *min
            };
            for k in 0..n {
                heap.push(Reverse(Pending {
                    time: ev.time_us.saturating_add(delay.sample(&mut rng)),
                    parent_seq,
                    k,
                    entity: ev.entity,
                    carried: carried.clone(),
                    row,
                }));
            }
        }
        Ok(())
    }
}

//! Which stream is due: the time before which no future event of a stream can happen, and
//! child streams that have nothing left to wait for.

use std::cmp::Reverse;

use super::plan::Origin;
use super::simulation::Simulation;
use super::stream::Source;

impl Simulation {
    /// All future events of stream `s` happen at or after this time.
    pub(super) fn bound(&self, s: usize) -> i64 {
        let run = &self.runs[s];
        if run.ended {
            return i64::MAX;
        }
        match (&run.source, &self.scenario.streams[s].origin) {
            (Source::Root(a), _) => a.peek_time().unwrap_or(i64::MIN),
            (Source::Child(heap), Origin::Child { parent, .. }) => {
                let top = heap.peek().map_or(i64::MAX, |Reverse(p)| p.time);
                top.min(self.bound(*parent))
            }
            (Source::Child(_), Origin::Root(_)) => i64::MAX,
        }
    }

    /// The time of the next event stream `s` can generate now, if any.
    pub(super) fn next_time(&self, s: usize) -> Option<i64> {
        let run = &self.runs[s];
        if run.ended {
            return None;
        }
        match (&run.source, &self.scenario.streams[s].origin) {
            (Source::Root(a), _) => Some(a.peek_time().unwrap_or(i64::MIN)),
            (Source::Child(heap), Origin::Child { parent, .. }) => {
                let Reverse(top) = heap.peek()?;
                let parent_bound = self.bound(*parent);
                (top.time < parent_bound || parent_bound == i64::MAX).then_some(top.time)
            }
            (Source::Child(_), Origin::Root(_)) => None,
        }
    }

    pub(super) fn close_if_drained(&mut self, s: usize) {
        if self.runs[s].ended {
            return;
        }
        if let (Source::Child(heap), Origin::Child { parent, .. }) =
            (&self.runs[s].source, &self.scenario.streams[s].origin)
            && heap.is_empty()
            && self.runs[*parent].ended
        {
            self.runs[s].ended = true;
        }
    }
}

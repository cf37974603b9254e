//! Late rows: held back when generated, released in arrival order.

use std::cmp::Reverse;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

use super::columns::interleave_rows;
use super::simulation::Simulation;

/// A generated row held back because it arrives late; ordered by arrival, then sequence.
pub(super) struct Held {
    pub(super) emit: i64,
    pub(super) seq: u64,
    pub(super) batch: Arc<RecordBatch>,
    pub(super) row: usize,
}
impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.emit, self.seq) == (o.emit, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.emit, self.seq).cmp(&(o.emit, o.seq))
    }
}

impl Simulation {
    /// Held rows of stream `s` arriving at or before `until`, in arrival order.
    pub(super) fn release(
        &mut self,
        s: usize,
        until: i64,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let held = &mut self.runs[s].held;
        let mut out: Vec<Held> = Vec::new();
        while held.peek().is_some_and(|Reverse(h)| h.emit <= until) {
            if let Some(Reverse(h)) = held.pop() {
                out.push(h);
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        interleave_rows(out.iter().map(|h| (&h.batch, h.row))).map(Some)
    }

    /// Late rows still held that may go out (all of them when `now` is none).
    pub(super) fn flush_held(&mut self, now: Option<i64>) -> Option<(usize, RecordBatch)> {
        for s in 0..self.runs.len() {
            let until = match now {
                Some(n) => n.min(self.bound(s)),
                None if self.runs[s].ended || self.next_time(s).is_none() => i64::MAX,
                None => continue,
            };
            if let Ok(Some(b)) = self.release(s, until) {
                self.count(s, &b);
                return Some((s, b));
            }
        }
        None
    }
}

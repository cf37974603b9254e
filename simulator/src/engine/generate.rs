//! A chunk of one stream: its events taken from their source, finished into rows (children
//! scheduled, late rows held), and counted.

use std::cmp::Reverse;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use arrow_schema::ArrowError;

use super::columns::interleave_rows;
use super::late::Held;
use super::plan::{ANOMALY_COLUMN, Origin};
use super::simulation::Simulation;
use super::stream::Source;
use crate::schedule::Event;

impl Simulation {
    /// Generate up to `max_rows` events of stream `s`; the rows ready to emit, if any.
    pub(super) fn generate(
        &mut self,
        s: usize,
        max_rows: usize,
        now_us: Option<i64>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let scenario = self.scenario.clone();
        let plan = &scenario.streams[s];
        let limit = self.rows.map(|r| r.saturating_sub(self.runs[s].generated));
        let want = limit.map_or(max_rows, |l| {
            max_rows.min(usize::try_from(l).unwrap_or(usize::MAX))
        });
        let parent_bound = match plan.origin {
            Origin::Child { parent, .. } => self.bound(parent),
            Origin::Root(_) => i64::MAX,
        };
        let end = self.end_us.unwrap_or(i64::MAX);
        let wall = chrono::Utc::now().timestamp_micros();
        let run = &mut self.runs[s];
        let mut events: Vec<Event> = Vec::with_capacity(want.min(1 << 16));
        let mut carried: Vec<(Arc<RecordBatch>, usize)> = Vec::new();
        match &mut run.source {
            Source::Root(arrivals) => {
                while events.len() < want {
                    // Unpaced streams have no schedule: their events happen now, whatever
                    // the clock the caller runs against.
                    let paced = arrivals.peek_time();
                    let t = paced.unwrap_or(wall);
                    if t >= end {
                        run.ended = true;
                        break;
                    }
                    if paced.is_some() && now_us.is_some_and(|n| t > n) {
                        break;
                    }
                    events.push(arrivals.next(wall));
                }
            }
            Source::Child(heap) => {
                while events.len() < want {
                    let Some(Reverse(top)) = heap.peek() else {
                        break;
                    };
                    if top.time >= parent_bound && parent_bound != i64::MAX {
                        break;
                    }
                    if now_us.is_some_and(|n| top.time > n) {
                        break;
                    }
                    let Some(Reverse(p)) = heap.pop() else { break };
                    if p.time >= end {
                        // Past the end: nothing later of this stream can be before it.
                        heap.clear();
                        run.ended = true;
                        break;
                    }
                    events.push(Event {
                        time_us: p.time,
                        entity: p.entity,
                        label: 0,
                    });
                    carried.push((p.carried, p.row));
                }
            }
        }
        if limit.is_some_and(|l| events.len() as u64 >= l) {
            run.ended = true;
            if let Source::Child(heap) = &mut run.source {
                heap.clear();
            }
        }
        if events.is_empty() {
            return Ok(None);
        }
        let parent = if carried.is_empty() {
            None
        } else {
            Some(interleave_rows(carried.iter().map(|(b, r)| (b, *r)))?)
        };
        self.finish(s, &events, parent, now_us)
    }

    /// Values for the events, children scheduled, late rows held: the rows to emit.
    fn finish(
        &mut self,
        s: usize,
        events: &[Event],
        parent: Option<RecordBatch>,
        now_us: Option<i64>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let scenario = self.scenario.clone();
        let plan = &scenario.streams[s];
        let first = self.runs[s].generated;
        let batch = self.values(s, events, parent.as_ref(), first)?;
        self.runs[s].generated += events.len() as u64;
        for &c in &plan.children {
            self.schedule_children(c, &batch, events, first)?;
        }
        let ready = if self.runs[s].late.is_none() {
            batch
        } else {
            let shared = Arc::new(batch);
            let run = &mut self.runs[s];
            if let Some((late, rng)) = run.late.as_mut() {
                for (row, ev) in events.iter().enumerate() {
                    run.held.push(Reverse(Held {
                        emit: ev.time_us.saturating_add(late.draw(rng)),
                        seq: first + row as u64,
                        batch: shared.clone(),
                        row,
                    }));
                }
            }
            let until = self.bound(s).min(now_us.unwrap_or(i64::MAX));
            match self.release(s, until)? {
                Some(b) => b,
                None => return Ok(None),
            }
        };
        self.count(s, &ready);
        Ok(Some(ready))
    }

    pub(super) fn count(&mut self, s: usize, batch: &RecordBatch) {
        self.summary.rows[s] += batch.num_rows() as u64;
        if let Some(col) = batch.column_by_name(ANOMALY_COLUMN) {
            let labels = col.as_string::<i32>();
            for l in labels.iter().flatten().flat_map(|l| l.split(',')) {
                if let Some(n) = self.summary.anomalies[s].get_mut(l) {
                    *n += 1;
                }
            }
        }
    }
}

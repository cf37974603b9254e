//! A run of a scenario: its options, what each step produces, and the [`Simulation`] that
//! steps through it.

use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use indexmap::IndexMap;
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use super::plan::{Origin, Scenario};
use super::stream::{Source, StreamRun};
use crate::anomaly::FieldAnomaly;
use crate::generator::{FieldGenerator, stream_seed};
use crate::scenario::AnomalySpec;
use crate::schedule::{Arrivals, mix};

/// How a run is bounded and carried out.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Start of the clock when the scenario has none (µs since the epoch).
    pub start_us: i64,
    /// Stop each stream after this many rows.
    pub rows: Option<u64>,
    /// Stop at this time (overrides the scenario's `end`).
    pub end_us: Option<i64>,
    /// Threads generating a chunk's columns (1: the calling thread only).
    pub threads: usize,
}

/// What a step of the simulation produced.
#[derive(Debug)]
pub enum Step {
    /// Rows of stream `stream`.
    Rows {
        /// Position of the stream in [`Scenario::stream_names`].
        stream: usize,
        /// At most the step's `max_rows` rows, with [`Scenario::schema`].
        batch: RecordBatch,
    },
    /// Nothing is due before this time (µs); only when running against a clock.
    Wait(i64),
    /// Every stream is finished.
    Done,
}

/// Counts of what a run produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows emitted per stream.
    pub rows: Vec<u64>,
    /// Labelled rows per stream and label.
    pub anomalies: Vec<IndexMap<String, u64>>,
}

/// A running simulation.
pub struct Simulation {
    pub(super) scenario: Arc<Scenario>,
    start_us: i64,
    pub(super) runs: Vec<StreamRun>,
    pub(super) end_us: Option<i64>,
    pub(super) rows: Option<u64>,
    pub(super) threads: usize,
    pub(super) summary: Summary,
}

impl Simulation {
    /// A run of `scenario` within `opts`; its clock starts at the scenario's `start`, else at
    /// `opts.start_us`.
    pub fn new(scenario: Arc<Scenario>, opts: RunOptions) -> Self {
        let start_us = scenario.start_us.unwrap_or(opts.start_us);
        let runs = scenario
            .streams
            .iter()
            .map(|plan| {
                let seed = mix(scenario.seed, stream_seed(0x5eed, &plan.name));
                let set = &scenario.entities[plan.entity];
                let source = match &plan.origin {
                    Origin::Root(rate) => {
                        let events: Vec<(u16, &AnomalySpec)> = plan
                            .anomalies
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| !a.kind.on_field())
                            .map(|(j, a)| (j as u16, a))
                            .collect();
                        Source::Root(Arrivals::new(
                            *rate,
                            set.count,
                            start_us,
                            mix(seed, 1),
                            &events,
                        ))
                    }
                    Origin::Child { .. } => Source::Child(BinaryHeap::new()),
                };
                let generators = plan
                    .fields
                    .iter()
                    .map(|(n, f)| FieldGenerator::new(n, f, seed, set, start_us))
                    .collect();
                let anomalies = plan
                    .field_anomalies
                    .iter()
                    .map(|(a, col)| {
                        FieldAnomaly::new(
                            &plan.anomalies[*a as usize],
                            *a,
                            *col,
                            set.count,
                            mix(seed, 100 + u64::from(*a)),
                        )
                    })
                    .collect();
                StreamRun {
                    source,
                    generators,
                    anomalies,
                    late: plan
                        .late
                        .map(|l| (l, Xoshiro256PlusPlus::seed_from_u64(mix(seed, 2)))),
                    held: BinaryHeap::new(),
                    child_seed: mix(seed, 3),
                    generated: 0,
                    ended: false,
                }
            })
            .collect();
        let n = scenario.streams.len();
        Self {
            start_us,
            end_us: opts.end_us.or(scenario.end_us),
            rows: opts.rows,
            threads: opts.threads.max(1),
            summary: Summary {
                rows: vec![0; n],
                anomalies: scenario
                    .streams
                    .iter()
                    .map(|s| s.labels.iter().map(|l| (l.clone(), 0)).collect())
                    .collect(),
            },
            scenario,
            runs,
        }
    }

    /// Where the simulated clock starts.
    pub fn start_us(&self) -> i64 {
        self.start_us
    }

    /// What the run has produced so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Rows emitted so far, all streams together.
    #[cfg(test)]
    pub fn rows_emitted(&self) -> u64 {
        self.summary.rows.iter().sum()
    }

    /// The next chunk of at most `max_rows` rows of some stream. With `now_us`, events after
    /// it are not generated yet (real-time pacing).
    pub fn step(&mut self, max_rows: usize, now_us: Option<i64>) -> Result<Step, ArrowError> {
        loop {
            // Children whose parents ended with nothing left to wait for end too.
            for s in 0..self.runs.len() {
                self.close_if_drained(s);
            }
            let next = (0..self.runs.len())
                .filter_map(|s| self.next_time(s).map(|t| (t, s)))
                .min();
            let Some((t, s)) = next else {
                // Nothing left to generate: what late rows are still held goes out now.
                return Ok(match self.flush_held(None) {
                    Some((stream, batch)) => Step::Rows { stream, batch },
                    None => Step::Done,
                });
            };
            if let Some(now) = now_us
                && t > now
            {
                if let Some((stream, batch)) = self.flush_held(Some(now)) {
                    return Ok(Step::Rows { stream, batch });
                }
                return Ok(Step::Wait(t));
            }
            if let Some(batch) = self.generate(s, max_rows, now_us)? {
                return Ok(Step::Rows { stream: s, batch });
            }
        }
    }
}

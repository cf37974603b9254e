//! One stream's run state: where its events come from, its generators, and its queues.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::Xoshiro256PlusPlus;

use super::children::Pending;
use super::late::Held;
use crate::anomaly::FieldAnomaly;
use crate::generator::FieldGenerator;
use crate::schedule::{Arrivals, Late};

pub(super) enum Source {
    Root(Arrivals),
    Child(BinaryHeap<Reverse<Pending>>),
}

pub(super) struct StreamRun {
    pub(super) source: Source,
    pub(super) generators: Vec<FieldGenerator>,
    pub(super) anomalies: Vec<FieldAnomaly>,
    pub(super) late: Option<(Late, Xoshiro256PlusPlus)>,
    pub(super) held: BinaryHeap<Reverse<Held>>,
    pub(super) child_seed: u64,
    /// Events generated so far (the next event's sequence number).
    pub(super) generated: u64,
    pub(super) ended: bool,
}

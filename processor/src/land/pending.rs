//! A batch waiting for its commit, and how much of it a table's marks show is landed
//! already: all of it, or (rows numbered by offset only) its first rows.

use arrow_array::RecordBatch;
use tokio::sync::oneshot;

use super::lander::{Origin, Verdict};
use crate::lake::marks::{Marks, Partition};

/// A batch taken by the lander, waiting for its commit.
pub(super) struct Pending {
    pub(super) agent: String,
    pub(super) seq: u64,
    pub(super) checkpoint: Option<String>,
    pub(super) created_at_us: i64,
    /// Its rows' `_ingested_at`.
    pub(super) received_at_us: i64,
    pub(super) origin: Option<Origin>,
    pub(super) wire_bytes: usize,
    pub(super) batch: RecordBatch,
    pub(super) reply: oneshot::Sender<Verdict>,
    /// What its commit means to the sender.
    pub(super) after: After,
}

/// What a batch's commit means, besides holding its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum After {
    /// The sender's batch is in its table: answer `Committed`.
    Reply,
    /// The batch is in `stream`'s quarantine table: answer `Quarantined`, and have the
    /// stream's table record it as taken.
    Quarantined {
        /// The stream whose table refused it.
        stream: String,
        /// Why.
        reason: String,
    },
    /// No rows and no sender: the mark of a batch that went to quarantine.
    Mark,
}

impl Pending {
    /// What of this batch the table's marks show is in it already.
    pub(super) fn landed(&self, marks: &Marks) -> Landed {
        Landed::of(
            &self.agent,
            self.seq,
            self.batch.num_rows(),
            self.origin.as_ref(),
            marks,
        )
    }
}

/// How much of a batch a table's marks show it holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landed {
    All,
    /// This many leading rows (only rows numbered by offset can be partly landed).
    Leading(usize),
}

impl Landed {
    /// What a table's `marks` say of a batch of `rows` rows, numbered `seq` by `agent`.
    pub(super) fn of(
        agent: &str,
        seq: u64,
        rows: usize,
        origin: Option<&Origin>,
        marks: &Marks,
    ) -> Self {
        let seq_mark = marks.get(agent);
        let offset_mark = |p: &Partition| marks.offset(&p.0, p.1);
        match origin {
            Some(Origin::Rows { partition, offsets }) => {
                // Row i is numbered offsets[i] + 1; it is in the table if that is at most
                // the sequence mark, or if its offset is below the partition's mark.
                let below = offset_mark(partition)
                    .unwrap_or(0)
                    .max(i64::try_from(seq_mark).unwrap_or(i64::MAX));
                match offsets.partition_point(|o| *o < below) {
                    n if n >= rows => Self::All,
                    n => Self::Leading(n),
                }
            }
            Some(Origin::Message { partition, offset })
                if offset_mark(partition).is_some_and(|m| *offset < m) =>
            {
                Self::All
            }
            _ if seq <= seq_mark => Self::All,
            _ => Self::Leading(0),
        }
    }

    /// Rows of a batch of `rows` this leaves to land.
    pub(super) fn remaining(self, rows: usize) -> usize {
        match self {
            Self::All => 0,
            Self::Leading(n) => rows - n.min(rows),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_marks_say_of_a_batch() {
        let run = Origin::Rows {
            partition: ("events".into(), 0),
            // 12 went elsewhere (a dead letter).
            offsets: vec![10, 11, 13, 14],
        };
        let of = |marks: &Marks| Landed::of("events-0", 15, 4, Some(&run), marks);
        let mut marks = Marks::default();
        assert_eq!(of(&marks), Landed::Leading(0));
        marks.raise("events-0", 12);
        assert_eq!(
            of(&marks),
            Landed::Leading(2),
            "rows up to offset 11 are in"
        );
        marks.raise_offset("events", 0, 14);
        assert_eq!(
            of(&marks),
            Landed::Leading(3),
            "the partition is in below 14"
        );
        marks.raise("events-0", 15);
        assert_eq!(of(&marks), Landed::All);
        assert_eq!(Landed::Leading(3).remaining(4), 1);
        assert_eq!(Landed::All.remaining(4), 0);

        // An agent's batch is landed whole or not at all.
        let message = Origin::Message {
            partition: ("sluice.telemetry".into(), 1),
            offset: 5,
        };
        let of = |marks: &Marks| Landed::of("edge", 3, 100, Some(&message), marks);
        let mut marks = Marks::default();
        assert_eq!(of(&marks), Landed::Leading(0));
        marks.raise_offset("sluice.telemetry", 1, 5);
        assert_eq!(of(&marks), Landed::Leading(0));
        marks.raise_offset("sluice.telemetry", 1, 6);
        assert_eq!(of(&marks), Landed::All);
        let mut marks = Marks::default();
        marks.raise("edge", 3);
        assert_eq!(of(&marks), Landed::All);
        assert_eq!(Landed::of("edge", 4, 100, None, &marks), Landed::Leading(0));
    }
}

//! Progress tokens: what each snapshot records so that landing is exactly once.
//!
//! Every commit stores, in its snapshot summary, the highest committed batch sequence per
//! agent (`sluice.seq.<agent>` = `<seq>`), carried forward from the previous snapshot and
//! raised by the batches of this commit. On start (and before each commit retry) the lander
//! reads the marks back and drops batches at or below them.
//!
//! Batches consumed from Kafka also record, per topic partition, an offset below which
//! every message of that partition is in the lake (`sluice.kafka.<topic>.<partition>` =
//! `<offset>`): a processor given the partition starts reading there, and a message below
//! a table's mark is never landed in it again.

use std::collections::HashMap;

use iceberg::table::Table;

/// Summary key prefix for per-agent sequence marks.
pub const SEQ_PREFIX: &str = "sluice.seq.";
/// Summary key prefix for per-agent source checkpoints.
pub const CHECKPOINT_PREFIX: &str = "sluice.ckpt.";
/// Summary key carrying the commit's unique id.
pub const COMMIT_ID_KEY: &str = "sluice.commit-id";
/// Summary key prefix for Kafka partition offsets.
pub const KAFKA_PREFIX: &str = "sluice.kafka.";

/// A Kafka topic partition.
pub type Partition = (String, i32);

/// Highest committed sequence per agent, and the source checkpoint committed with it, for
/// one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks {
    seqs: HashMap<String, u64>,
    checkpoints: HashMap<String, String>,
    /// Per topic partition: every message below this offset is in the lake.
    offsets: HashMap<Partition, i64>,
}

impl Marks {
    /// Read the marks from a table: the maximum per agent over the current snapshot and its
    /// ancestors (normally the current snapshot alone has them all, because every commit
    /// carries the marks forward; walking the ancestors makes this robust to snapshots
    /// written by other tools).
    pub fn from_table(table: &Table) -> Self {
        let meta = table.metadata();
        let mut marks = Marks::default();
        let mut next = meta.current_snapshot();
        while let Some(snap) = next {
            for (k, v) in &snap.summary().additional_properties {
                if let Some(agent) = k.strip_prefix(SEQ_PREFIX)
                    && let Ok(seq) = v.parse::<u64>()
                {
                    marks.raise(agent, seq);
                } else if let Some(agent) = k.strip_prefix(CHECKPOINT_PREFIX) {
                    marks
                        .checkpoints
                        .entry(agent.to_string())
                        .or_insert_with(|| v.clone());
                } else if let Some(tp) = k.strip_prefix(KAFKA_PREFIX)
                    && let Some((topic, partition)) = tp.rsplit_once('.')
                    && let (Ok(partition), Ok(offset)) = (partition.parse(), v.parse())
                {
                    marks.raise_offset(topic, partition, offset);
                }
            }
            // Commits carry every mark forward, so one snapshot is normally enough; keep
            // walking only through snapshots that carried none (written by other tools).
            if !marks.seqs.is_empty() || !marks.offsets.is_empty() {
                break;
            }
            next = snap
                .parent_snapshot_id()
                .and_then(|id| meta.snapshot_by_id(id));
        }
        marks
    }

    /// The committed mark of `agent` (0 if none).
    pub fn get(&self, agent: &str) -> u64 {
        self.seqs.get(agent).copied().unwrap_or(0)
    }

    /// The checkpoint committed with `agent`'s highest batch, if its source checkpoints.
    pub fn checkpoint(&self, agent: &str) -> Option<&str> {
        self.checkpoints.get(agent).map(String::as_str)
    }

    /// Raise `agent`'s mark to `seq` if higher.
    pub fn raise(&mut self, agent: &str, seq: u64) {
        let e = self.seqs.entry(agent.to_string()).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Record the batch `seq` of `agent` with its checkpoint (batches arrive in order, so
    /// the last checkpoint recorded belongs to the highest sequence).
    pub fn record(&mut self, agent: &str, seq: u64, checkpoint: Option<&str>) {
        self.raise(agent, seq);
        if let Some(c) = checkpoint {
            self.checkpoints.insert(agent.to_string(), c.to_string());
        }
    }

    /// The offset below which `topic`'s `partition` is in the lake, if known.
    pub fn offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(&(topic.to_string(), partition)).copied()
    }

    /// Raise a partition's offset mark to `offset` if higher.
    pub fn raise_offset(&mut self, topic: &str, partition: i32, offset: i64) {
        let e = self
            .offsets
            .entry((topic.to_string(), partition))
            .or_insert(offset);
        *e = (*e).max(offset);
    }

    /// True if every mark of `other` is covered by `self`.
    #[cfg(test)]
    pub fn covers(&self, other: &Marks) -> bool {
        other.seqs.iter().all(|(a, s)| self.get(a) >= *s)
            && other
                .offsets
                .iter()
                .all(|((t, p), o)| self.offset(t, *p).is_some_and(|mine| mine >= *o))
    }

    /// Marks of both, maximum per agent; a newer mark brings its checkpoint along.
    pub fn merged(&self, other: &Marks) -> Marks {
        let mut m = self.clone();
        for (a, s) in &other.seqs {
            if *s > m.get(a)
                && let Some(c) = other.checkpoints.get(a)
            {
                m.checkpoints.insert(a.clone(), c.clone());
            }
            m.raise(a, *s);
        }
        for ((t, p), o) in &other.offsets {
            m.raise_offset(t, *p, *o);
        }
        m
    }

    /// Snapshot summary properties for these marks.
    pub fn to_properties(&self) -> HashMap<String, String> {
        let seqs = self
            .seqs
            .iter()
            .map(|(a, s)| (format!("{SEQ_PREFIX}{a}"), s.to_string()));
        let checkpoints = self
            .checkpoints
            .iter()
            .map(|(a, c)| (format!("{CHECKPOINT_PREFIX}{a}"), c.clone()));
        let offsets = self
            .offsets
            .iter()
            .map(|((t, p), o)| (format!("{KAFKA_PREFIX}{t}.{p}"), o.to_string()));
        seqs.chain(checkpoints).chain(offsets).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_cover() {
        let mut a = Marks::default();
        a.raise("x", 5);
        a.raise("x", 3);
        a.raise("y", 1);
        assert_eq!(a.get("x"), 5);
        let mut b = Marks::default();
        b.raise("x", 7);
        b.raise("z", 2);
        let m = a.merged(&b);
        assert_eq!((m.get("x"), m.get("y"), m.get("z")), (7, 1, 2));
        assert!(m.covers(&a) && m.covers(&b));
        assert!(!a.covers(&b));
        let props = m.to_properties();
        assert_eq!(props["sluice.seq.x"], "7");

        // Checkpoints travel with the highest sequence.
        let mut c = Marks::default();
        c.record("x", 3, Some("offset=30"));
        c.record("x", 4, None);
        assert_eq!(c.checkpoint("x"), Some("offset=30"));
        let mut newer = Marks::default();
        newer.record("x", 9, Some("offset=90"));
        assert_eq!(c.merged(&newer).checkpoint("x"), Some("offset=90"));
        assert_eq!(newer.merged(&c).checkpoint("x"), Some("offset=90"));
        assert_eq!(
            c.merged(&newer).to_properties()["sluice.ckpt.x"],
            "offset=90"
        );
    }

    #[test]
    fn kafka_offsets_merge_by_maximum() {
        let mut a = Marks::default();
        a.raise_offset("sluice.metrics", 3, 100);
        a.raise_offset("sluice.metrics", 3, 40);
        assert_eq!(a.offset("sluice.metrics", 3), Some(100));
        assert_eq!(a.offset("sluice.metrics", 0), None);
        let mut b = Marks::default();
        b.raise_offset("sluice.metrics", 3, 120);
        b.raise_offset("logs", 0, 7);
        assert!(!a.covers(&b));
        let m = a.merged(&b);
        assert!(m.covers(&a) && m.covers(&b));
        let props = m.to_properties();
        // Topic names may contain dots: the partition is after the last one.
        assert_eq!(props["sluice.kafka.sluice.metrics.3"], "120");
        assert_eq!(props["sluice.kafka.logs.0"], "7");
    }
}

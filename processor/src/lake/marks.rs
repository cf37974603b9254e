//! Progress tokens: what each snapshot records so that landing is exactly once.
//!
//! A table's marks are the highest committed batch sequence per agent (with the source
//! checkpoint committed with it) and, per Kafka topic partition, an offset below which
//! every message of that partition is in the lake. On start (and before each commit retry)
//! the lander reads them back and drops batches at or below them.
//!
//! Their size grows with the fleet, so a snapshot's summary never holds them all:
//! - `sluice.marks` is the *base*: every mark as of some commit, inline as JSON when it is
//!   small (≤ [`INLINE_MAX`] bytes), else the location of a JSON file in the table's
//!   `metadata/` folder. Every later snapshot carries the same value forward.
//! - `sluice.marks.delta` holds only the marks one commit raised (inline or a file again).
//! - Every [`CONSOLIDATE_EVERY`] commits, or once the deltas outweigh the base, a commit
//!   writes a new base instead of a delta.
//!
//! The marks of a snapshot are its base merged with the deltas of the snapshots back to the
//! one that wrote that base (marks only rise, so merging is by maximum and reading a delta
//! twice changes nothing). Expiry keeps that chain (see [`chain_start`]). Tables written
//! before this layout carried every mark in every summary (`sluice.seq.<agent>`,
//! `sluice.ckpt.<agent>`, `sluice.kafka.<topic>.<partition>`); they are still read, and the
//! first commit writes a base.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{Snapshot, TableMetadata};
use iceberg::table::Table;

/// Summary key of the base marks (inline JSON or a file location).
pub const MARKS_KEY: &str = "sluice.marks";
/// Summary key of the marks one commit raised (inline JSON or a file location).
pub const MARKS_DELTA_KEY: &str = "sluice.marks.delta";
/// Marks encoded in at most this many bytes stay in the summary; larger ones go to a file.
pub const INLINE_MAX: usize = 1024;
/// A new base is written at least this often (in commits), which bounds the chain that
/// recovery reads and expiry keeps.
pub const CONSOLIDATE_EVERY: usize = 100;
/// Summary key prefix of the earlier layout's per-agent sequence marks.
pub const SEQ_PREFIX: &str = "sluice.seq.";
/// Summary key prefix of the earlier layout's per-agent source checkpoints.
pub const CHECKPOINT_PREFIX: &str = "sluice.ckpt.";
/// Summary key carrying the commit's unique id.
pub const COMMIT_ID_KEY: &str = "sluice.commit-id";
/// Summary key prefix of the earlier layout's Kafka partition offsets.
pub const KAFKA_PREFIX: &str = "sluice.kafka.";

/// Why marks could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// The marks file could not be read or written (storage trouble: retry).
    #[error("marks file {location}: {source}")]
    Io {
        /// The marks file.
        location: String,
        /// What storage said.
        #[source]
        source: Box<iceberg::Error>,
    },
    /// A recorded mark does not parse: the table was written by something else.
    #[error("marks in {location} do not parse: {reason}")]
    Corrupt {
        /// The marks file, or the summary key when the marks were inline.
        location: String,
        /// The JSON error.
        reason: String,
    },
}

impl ProgressError {
    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Io { .. })
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "marks_io",
            Self::Corrupt { .. } => "marks_corrupt",
        }
    }
}

impl From<ProgressError> for iceberg::Error {
    fn from(e: ProgressError) -> Self {
        let kind = if e.retryable() {
            iceberg::ErrorKind::Unexpected
        } else {
            iceberg::ErrorKind::DataInvalid
        };
        iceberg::Error::new(kind, e.to_string())
    }
}

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

/// Marks as stored: sorted, so that equal marks encode to equal bytes.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    seq: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ckpt: BTreeMap<String, String>,
    /// Topic → partition → offset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    kafka: BTreeMap<String, BTreeMap<i32, i64>>,
}

impl Marks {
    /// Marks of the earlier layout: one summary key per mark.
    fn from_legacy(props: &HashMap<String, String>) -> Self {
        let mut marks = Marks::default();
        for (k, v) in props {
            if let Some(agent) = k.strip_prefix(SEQ_PREFIX)
                && let Ok(seq) = v.parse::<u64>()
            {
                marks.raise(agent, seq);
            } else if let Some(agent) = k.strip_prefix(CHECKPOINT_PREFIX) {
                marks.checkpoints.insert(agent.to_string(), v.clone());
            } else if let Some(tp) = k.strip_prefix(KAFKA_PREFIX)
                && let Some((topic, partition)) = tp.rsplit_once('.')
                && let (Ok(partition), Ok(offset)) = (partition.parse(), v.parse())
            {
                marks.raise_offset(topic, partition, offset);
            }
        }
        marks
    }

    /// True if a summary holds marks of the earlier layout.
    fn has_legacy(props: &HashMap<String, String>) -> bool {
        props
            .keys()
            .any(|k| k.starts_with(SEQ_PREFIX) || k.starts_with(KAFKA_PREFIX))
    }

    /// True for the summary keys of the earlier layout, which a commit that writes
    /// `sluice.marks` no longer carries.
    pub fn is_legacy_key(key: &str) -> bool {
        key.starts_with(SEQ_PREFIX)
            || key.starts_with(CHECKPOINT_PREFIX)
            || key.starts_with(KAFKA_PREFIX)
    }

    /// The marks as compact JSON.
    pub fn to_json(&self) -> String {
        let mut r = Record {
            seq: self.seqs.iter().map(|(a, s)| (a.clone(), *s)).collect(),
            ckpt: self
                .checkpoints
                .iter()
                .map(|(a, c)| (a.clone(), c.clone()))
                .collect(),
            kafka: BTreeMap::new(),
        };
        for ((t, p), o) in &self.offsets {
            r.kafka.entry(t.clone()).or_default().insert(*p, *o);
        }
        // A map of strings and numbers always serializes.
        serde_json::to_string(&r).unwrap_or_default()
    }

    /// Marks from their JSON; `location` names where they were read, for errors.
    pub fn from_json(json: &[u8], location: &str) -> Result<Self, ProgressError> {
        let r: Record = serde_json::from_slice(json).map_err(|e| ProgressError::Corrupt {
            location: location.to_string(),
            reason: e.to_string(),
        })?;
        let mut m = Marks {
            seqs: r.seq.into_iter().collect(),
            checkpoints: r.ckpt.into_iter().collect(),
            offsets: HashMap::new(),
        };
        for (t, parts) in r.kafka {
            for (p, o) in parts {
                m.offsets.insert((t.clone(), p), o);
            }
        }
        Ok(m)
    }

    /// The number of marks (agents and partitions).
    pub fn len(&self) -> usize {
        self.seqs.len() + self.offsets.len()
    }

    /// True if there is no mark at all.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.offsets.is_empty()
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
        m.merge(other);
        m
    }

    /// Raise these marks by `other`'s (maximum per agent; a newer mark brings its
    /// checkpoint along).
    pub fn merge(&mut self, other: &Marks) {
        for (a, s) in &other.seqs {
            let mine = self.seqs.get(a).copied();
            if mine.is_none_or(|m| *s > m)
                && let Some(c) = other.checkpoints.get(a)
            {
                self.checkpoints.insert(a.clone(), c.clone());
            }
            if mine.is_none_or(|m| *s > m) {
                self.seqs.insert(a.clone(), *s);
            }
        }
        for ((t, p), o) in &other.offsets {
            self.raise_offset(t, *p, *o);
        }
    }

    /// The marks of `self` that `before` does not already hold.
    pub fn raised_over(&self, before: &Marks) -> Marks {
        let mut d = Marks::default();
        for (a, s) in &self.seqs {
            if before.seqs.get(a).is_none_or(|b| s > b)
                || self.checkpoints.get(a) != before.checkpoints.get(a)
            {
                d.seqs.insert(a.clone(), *s);
                if let Some(c) = self.checkpoints.get(a) {
                    d.checkpoints.insert(a.clone(), c.clone());
                }
            }
        }
        for (tp, o) in &self.offsets {
            if before.offsets.get(tp).is_none_or(|b| o > b) {
                d.offsets.insert(tp.clone(), *o);
            }
        }
        d
    }
}

/// A table's marks as its current snapshot stores them, and how far its chain of deltas
/// has grown since the base (which decides when the next commit writes a new base).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Every mark of the table.
    pub marks: Marks,
    /// The current `sluice.marks` value (None: no base yet, or the earlier layout).
    base: Option<String>,
    /// Bytes of the base's encoding.
    base_bytes: usize,
    /// Commits since the base, and the bytes of their deltas.
    chain: usize,
    delta_bytes: usize,
}

/// A value of `sluice.marks` or `sluice.marks.delta`: inline JSON, or a file's location.
fn is_inline(value: &str) -> bool {
    value.starts_with('{')
}

/// The files a snapshot's marks live in (none when inline).
pub fn files_of(snapshot: &Snapshot) -> impl Iterator<Item = &str> {
    let props = &snapshot.summary().additional_properties;
    [MARKS_KEY, MARKS_DELTA_KEY]
        .into_iter()
        .filter_map(|k| props.get(k))
        .filter(|v| !is_inline(v))
        .map(String::as_str)
}

/// The oldest snapshot (by sequence number) that the current snapshot's marks are read
/// from: expiry must keep it and everything after it.
pub fn chain_start(meta: &TableMetadata) -> Option<i64> {
    let parent = |s: &Snapshot| {
        s.parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id))
            .map(|s| &**s)
    };
    fn props(s: &Snapshot) -> &HashMap<String, String> {
        &s.summary().additional_properties
    }
    let mut next = meta.current_snapshot().map(|s| &**s);
    // Snapshots of other tools carry no marks: the ones read are further back.
    while let Some(s) = next
        && !props(s).contains_key(MARKS_KEY)
        && !Marks::has_legacy(props(s))
    {
        next = parent(s);
    }
    let start = next?;
    let Some(base) = props(start).get(MARKS_KEY) else {
        return Some(start.sequence_number());
    };
    // The base is in `start`'s own summary: of its chain, only the snapshots that hold a
    // delta are read besides.
    let mut oldest = start;
    let mut next = Some(start);
    while let Some(s) = next
        && props(s).get(MARKS_KEY) == Some(base)
    {
        if props(s).contains_key(MARKS_DELTA_KEY) {
            oldest = s;
        }
        next = parent(s);
    }
    Some(oldest.sequence_number())
}

/// Read one stored value: inline JSON, or the file it names.
async fn read_value(table: &Table, value: &str) -> Result<(Marks, usize), ProgressError> {
    if is_inline(value) {
        return Ok((Marks::from_json(value.as_bytes(), MARKS_KEY)?, value.len()));
    }
    let io = |source| ProgressError::Io {
        location: value.to_string(),
        source: Box::new(source),
    };
    let bytes = table
        .file_io()
        .new_input(value)
        .map_err(io)?
        .read()
        .await
        .map_err(io)?;
    Ok((Marks::from_json(&bytes, value)?, bytes.len()))
}

/// Read a table's marks as of its current snapshot.
pub async fn load(table: &Table) -> Result<Stored, ProgressError> {
    let meta = table.metadata();
    let mut next = meta.current_snapshot();
    while let Some(snap) = next {
        let props = &snap.summary().additional_properties;
        if let Some(base) = props.get(MARKS_KEY) {
            return load_chain(table, snap, base).await;
        }
        if Marks::has_legacy(props) {
            return Ok(Stored {
                marks: Marks::from_legacy(props),
                ..Default::default()
            });
        }
        // Written by another tool: its parent has the marks.
        next = snap
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    Ok(Stored::default())
}

/// The base `base` merged with the deltas from `from` back to the snapshot that wrote it.
async fn load_chain(table: &Table, from: &Snapshot, base: &str) -> Result<Stored, ProgressError> {
    let meta = table.metadata();
    let (mut marks, base_bytes) = read_value(table, base).await?;
    let (mut chain, mut delta_bytes) = (0, 0);
    let mut next = Some(from);
    while let Some(s) = next {
        let props = &s.summary().additional_properties;
        if props.get(MARKS_KEY).map(String::as_str) != Some(base) {
            break;
        }
        if let Some(delta) = props.get(MARKS_DELTA_KEY) {
            let (d, bytes) = read_value(table, delta).await?;
            marks.merge(&d);
            chain += 1;
            delta_bytes += bytes;
        }
        next = s
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id))
            .map(|s| &**s);
    }
    Ok(Stored {
        marks,
        base: Some(base.to_string()),
        base_bytes,
        chain,
        delta_bytes,
    })
}

/// What a commit stores of its marks.
#[derive(Debug)]
pub struct Staged {
    /// Summary properties to set (`sluice.marks`, and `sluice.marks.delta` if any).
    pub properties: HashMap<String, String>,
    /// The marks as stored once the commit is in.
    pub stored: Stored,
    /// Files written for it: remove them if the commit does not go in.
    pub files: Vec<String>,
}

/// Stage the marks of a commit that raises `stored` by `raised`: a delta, or a new base
/// when the chain is long enough (or there is none yet). Large values are written to
/// files under the table's `metadata/` folder, named with `tag`.
pub async fn stage(
    table: &Table,
    stored: &Stored,
    raised: &Marks,
    tag: &str,
) -> Result<Staged, ProgressError> {
    // Only this commit's marks are compared: the delta costs what the commit holds, not
    // what the fleet has.
    let delta = raised.raised_over(&stored.marks);
    let all = stored.marks.merged(&delta);
    let mut files = Vec::new();
    let dir = format!(
        "{}/metadata",
        table.metadata().location().trim_end_matches('/')
    );
    let mut write = async |kind: &str, json: String| -> Result<String, ProgressError> {
        if json.len() <= INLINE_MAX {
            return Ok(json);
        }
        let location = format!("{dir}/marks-{tag}-{kind}.json");
        let io = |source| ProgressError::Io {
            location: location.clone(),
            source: Box::new(source),
        };
        table
            .file_io()
            .new_output(&location)
            .map_err(io)?
            .write(bytes::Bytes::from(json))
            .await
            .map_err(io)?;
        files.push(location.clone());
        Ok(location)
    };
    let delta_json = delta.to_json();
    let consolidate = match &stored.base {
        // A new table, or one of the earlier layout.
        None => true,
        // Few marks: all of them inline, every time.
        Some(base) if is_inline(base) => true,
        Some(_) => {
            stored.chain + 1 >= CONSOLIDATE_EVERY
                || stored.delta_bytes + delta_json.len() > stored.base_bytes.max(64 * 1024)
        }
    };
    let mut properties = HashMap::new();
    let stored_after = if consolidate {
        let json = all.to_json();
        let bytes = json.len();
        let value = write("base", json).await?;
        properties.insert(MARKS_KEY.to_string(), value.clone());
        Stored {
            marks: all,
            base: Some(value),
            base_bytes: bytes,
            chain: 0,
            delta_bytes: 0,
        }
    } else {
        let base = stored.base.clone().unwrap_or_default();
        properties.insert(MARKS_KEY.to_string(), base.clone());
        let bytes = delta_json.len();
        if !delta.is_empty() {
            let value = write("delta", delta_json).await?;
            properties.insert(MARKS_DELTA_KEY.to_string(), value);
        }
        Stored {
            marks: all,
            base: Some(base),
            base_bytes: stored.base_bytes,
            chain: stored.chain + 1,
            delta_bytes: stored.delta_bytes + bytes,
        }
    };
    Ok(Staged {
        properties,
        stored: stored_after,
        files,
    })
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
        assert_eq!(
            Marks::from_json(m.to_json().as_bytes(), "-").expect("parses"),
            m
        );

        // Checkpoints travel with the highest sequence.
        let mut c = Marks::default();
        c.record("x", 3, Some("offset=30"));
        c.record("x", 4, None);
        assert_eq!(c.checkpoint("x"), Some("offset=30"));
        let mut newer = Marks::default();
        newer.record("x", 9, Some("offset=90"));
        assert_eq!(c.merged(&newer).checkpoint("x"), Some("offset=90"));
        assert_eq!(newer.merged(&c).checkpoint("x"), Some("offset=90"));
        let json = c.merged(&newer).to_json();
        assert_eq!(json, r#"{"seq":{"x":9},"ckpt":{"x":"offset=90"}}"#);
    }

    #[test]
    fn a_delta_holds_only_what_a_commit_raised() {
        let mut before = Marks::default();
        before.record("a", 5, Some("c5"));
        before.raise("b", 2);
        before.raise_offset("t", 0, 10);
        let mut raised = Marks::default();
        raised.record("a", 7, Some("c7"));
        raised.raise("b", 1);
        raised.raise_offset("t", 0, 10);
        raised.raise_offset("t", 1, 3);
        let after = before.merged(&raised);
        let delta = after.raised_over(&before);
        assert_eq!(
            delta.to_json(),
            r#"{"seq":{"a":7},"ckpt":{"a":"c7"},"kafka":{"t":{"1":3}}}"#
        );
        // Base and delta merged give every mark back, whatever the order.
        assert_eq!(before.merged(&delta), after);
        assert_eq!(delta.merged(&before), after);
    }

    fn history(summaries: &[&[(&str, &str)]]) -> TableMetadata {
        crate::lake::retention::tests::history_with(0, summaries)
    }

    #[test]
    fn expiry_keeps_only_the_snapshots_whose_deltas_the_marks_need() {
        let inline_a = r#"{"seq":{"a":1}}"#;
        let inline_b = r#"{"seq":{"a":2}}"#;
        let file = "file:///t/metadata/marks-x-base.json";
        let delta = r#"{"seq":{"a":9}}"#;
        // Marks inline in full: the current snapshot holds them all, even when a
        // compaction carried them over unchanged.
        let meta = history(&[
            &[(MARKS_KEY, inline_a)],
            &[(MARKS_KEY, inline_b)],
            &[(MARKS_KEY, inline_b)],
        ]);
        assert_eq!(chain_start(&meta), Some(3));
        // A base in a file and deltas after it: back to the oldest delta of the chain.
        let meta = history(&[
            &[(MARKS_KEY, inline_a)],
            &[(MARKS_KEY, file)],
            &[(MARKS_KEY, file), (MARKS_DELTA_KEY, delta)],
            &[(MARKS_KEY, file), (MARKS_DELTA_KEY, delta)],
            &[(MARKS_KEY, file)],
            &[("other.tool", "x")],
        ]);
        assert_eq!(chain_start(&meta), Some(3));
        // The earlier layout: the snapshot that holds them.
        let meta = history(&[&[("sluice.seq.a", "4")], &[("other.tool", "x")]]);
        assert_eq!(chain_start(&meta), Some(1));
    }

    #[test]
    fn marks_of_the_earlier_layout_are_read() {
        let props: HashMap<String, String> = [
            ("sluice.seq.edge-01", "42"),
            ("sluice.ckpt.edge-01", "offset=9"),
            ("sluice.kafka.sluice.metrics.3", "120"),
            ("sluice.commit-id", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(Marks::has_legacy(&props));
        let m = Marks::from_legacy(&props);
        assert_eq!(m.get("edge-01"), 42);
        assert_eq!(m.checkpoint("edge-01"), Some("offset=9"));
        // Topic names may contain dots: the partition is after the last one.
        assert_eq!(m.offset("sluice.metrics", 3), Some(120));
        assert!(Marks::is_legacy_key("sluice.ckpt.edge-01"));
        assert!(!Marks::is_legacy_key(MARKS_KEY));
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
        assert_eq!(
            Marks::from_json(m.to_json().as_bytes(), "-").expect("parses"),
            m
        );
    }
}

//! `[lander]`: how batches become Iceberg commits.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::lake::Compression;

/// `[lander]`: how batches become Iceberg commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanderConfig {
    /// Iceberg namespace of landed tables.
    pub namespace: String,
    /// Commit a table's waiting batches once the oldest has waited this long
    /// (freshness; > 0). Each commit is a snapshot: with the defaults, 86,400 a day per
    /// table, of which `[maintenance]` keeps 500.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit as soon as this many rows wait (≥ 1).
    pub commit_max_rows: usize,
    /// Commit as soon as this many Arrow IPC bytes (as received) wait.
    pub commit_max_bytes: ByteSize,
    /// Parquet compression: `zstd` (level 1), `snappy`, `lz4`, `none`. Also used for model
    /// tables and by compaction.
    pub compression: Compression,
}

impl Default for LanderConfig {
    fn default() -> Self {
        Self {
            namespace: "bronze".into(),
            commit_interval: Duration::from_secs(1),
            commit_max_rows: 1_000_000,
            commit_max_bytes: ByteSize::mib(256),
            compression: Compression::Zstd,
        }
    }
}

/// `[streams.NAME]`: how one stream's bronze table is kept. Streams not named take the
/// defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// `evolve`: a batch with new columns or wider types adds them to the table (as
    /// optional columns; int → long, float → double, decimal precision). `strict`: the
    /// table keeps its columns, and such a batch goes to quarantine.
    pub schema: SchemaPolicy,
    /// Text where the table has a number, boolean, date or timestamp column is converted
    /// value by value; a batch with a value that does not convert goes to quarantine.
    /// Without it, such a batch goes to quarantine whole.
    pub coerce: bool,
    /// How the table is partitioned: Iceberg transforms of its columns (`["day(ts)"]`,
    /// `["hour(ts)", "bucket(16, host)"]`, `[]` for none). An existing table whose spec
    /// differs moves to this one (older files keep theirs, and stay readable).
    ///
    /// Default: a new table by day of its first timestamp column (else of `_ingested_at`);
    /// an existing one as it is.
    pub partition: Option<Vec<crate::lake::partition::PartitionField>>,
}

/// Whether a stream's table changes its columns to take a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaPolicy {
    /// New columns are added, types widened where Iceberg allows.
    #[default]
    Evolve,
    /// The table's columns are fixed once it exists.
    Strict,
}

/// Every `[streams.NAME]` section, by stream.
#[derive(Debug, Clone, Default)]
pub struct Streams(pub std::sync::Arc<std::collections::BTreeMap<String, StreamConfig>>);

impl Streams {
    /// The settings of `stream`: its section, or the defaults.
    pub fn get(&self, stream: &str) -> StreamConfig {
        self.0.get(stream).cloned().unwrap_or_default()
    }
}

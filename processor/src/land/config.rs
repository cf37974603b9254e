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

//! `[lander]`: how batches become Iceberg commits.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use crate::lake::Compression;

/// `[lander]`: how batches become Iceberg commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanderConfig {
    /// Iceberg namespace of the landed tables.
    pub namespace: String,
    /// Commit at least this often while batches are waiting.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit as soon as this many rows are waiting.
    pub commit_max_rows: usize,
    /// Commit as soon as this many bytes (in memory) are waiting.
    pub commit_max_bytes: ByteSize,
    /// Parquet compression: `zstd`, `snappy`, `lz4` or `none`.
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

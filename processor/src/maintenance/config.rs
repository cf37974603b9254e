//! `[maintenance]`: what `serve` keeps doing to every table, and how often.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// `[maintenance]`: compaction, snapshot expiry and orphan cleanup run by `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Run maintenance inside `serve` (`sluice-processor maintain` works either way).
    pub enabled: bool,
    /// Time between compaction and orphan cleanup passes over every table (the first one
    /// comes after it).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time between snapshot expiry passes over every table.
    #[serde(with = "humantime_serde")]
    pub expire_interval: Duration,
    /// Compaction writes files of about this size and packs smaller ones.
    pub target_file_size: ByteSize,
    /// Snapshots older than this are expired (never the current one, nor one the marks
    /// are read from or a model still reads from).
    #[serde(with = "humantime_serde")]
    pub expire_older_than: Duration,
    /// Keep at most this many snapshots per table (the same exceptions apply).
    pub max_snapshots: usize,
    /// Keep at least this many snapshots.
    pub retain_last: usize,
    /// Unreferenced files older than this are deleted (local and S3 warehouses).
    #[serde(with = "humantime_serde")]
    pub orphans_older_than: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            expire_interval: Duration::from_secs(60),
            target_file_size: ByteSize::mib(128),
            expire_older_than: Duration::from_secs(3600),
            max_snapshots: 500,
            retain_last: 10,
            orphans_older_than: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

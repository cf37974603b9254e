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
    /// Time between compaction and orphan cleanup passes; the first comes one interval
    /// after start (> 0).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time between snapshot expiry passes (> 0). Each is a metadata-only commit per table
    /// plus the removal of the files only the expired snapshots used (manifest lists,
    /// manifests, data files compaction replaced, marks files), found from those
    /// snapshots alone — no listing.
    #[serde(with = "humantime_serde")]
    pub expire_interval: Duration,
    /// Compaction writes files of about this size (≥ 1 MiB) and packs files under three
    /// quarters of it, size-tiered: a file merges with files within 4× of its size,
    /// commit-sized ones (under a 64th of those three quarters: 1.5 MiB at the default) as
    /// soon as there are two, larger ones once there are four. Bins whose row groups
    /// average over 4 MiB are merged by copying them.
    pub target_file_size: ByteSize,
    /// Snapshots older than this are expired. Never expired: the newest `retain_last`, the
    /// heads of branches and tags, the snapshots the lander's progress marks are read from
    /// (at most 100, see ARCHITECTURE.md), and, in a model's input, any snapshot after the
    /// model's watermark ([MODELS.md](MODELS.md#snapshot-expiry-and-maintenance)). This is
    /// the window of time travel.
    #[serde(with = "humantime_serde")]
    pub expire_older_than: Duration,
    /// Keep at most this many snapshots per table (the same exceptions apply;
    /// ≥ `retain_last`). At 1 s commits the count decides: 500 snapshots are about 8
    /// minutes of history; a table committed to every minute keeps the hour
    /// `expire_older_than` gives.
    pub max_snapshots: usize,
    /// Keep at least this many snapshots per table (≥ 1).
    pub retain_last: usize,
    /// Files under a table's location (a directory or an S3 prefix, listed through
    /// `object_store`) that no snapshot or metadata file references are deleted once older
    /// than this, by modification time. At least `10m`: younger files may belong to a
    /// commit in progress. With expiry removing what it frees, only files of commits cut
    /// off by a crash are left for it.
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

//! `[buffer]`: the write-ahead log's settings in the agent's config file.

use bytesize::ByteSize;
use serde::Deserialize;

use super::{WalOptions, WhenFull};

/// `[buffer]`: the write-ahead log every batch is stored in until the sink has it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BufferConfig {
    /// Cap on each stream's log (≥ 1 MiB + 2 × `batch.max_bytes`).
    pub max_size: ByteSize,
    /// At the cap: `"block"` holds the sources back until acknowledgements free space
    /// (nothing is lost); `"drop_oldest"` deletes the oldest segment, acknowledged or not,
    /// logs it and counts its rows in `sluice_agent_lost_rows_total{reason="wal_full"}`.
    pub when_full: WhenFull,
    /// Size of one segment file (64 KiB – `max_size / 2`). Space is freed a whole segment
    /// at a time.
    /// Default: the smaller of 64 MiB and `max_size / 8`.
    pub segment_size: Option<ByteSize>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_size: ByteSize::gib(1),
            when_full: WhenFull::Block,
            segment_size: None,
        }
    }
}

impl BufferConfig {
    /// The log's options, with the segment size resolved.
    pub fn wal_options(&self) -> WalOptions {
        let max_size = self.max_size.as_u64();
        WalOptions {
            segment_size: self
                .segment_size
                .map(|s| s.as_u64())
                .unwrap_or_else(|| (max_size / 8).min(64 << 20)),
            max_size,
            when_full: self.when_full,
        }
    }
}

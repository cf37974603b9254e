//! `[batch]`: the batcher's limits in the agent's config file.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// `[batch]`: when the batcher cuts a batch. Whichever limit is reached first wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Cut a batch at this many rows. A chunk that carries a source checkpoint (connectors,
    /// simulator) is never split, so such a batch is cut before the chunk that would
    /// overflow it (simulator chunks are at most `max_rows` rows).
    pub max_rows: usize,
    /// …or once this much Arrow memory is buffered (≥ 1 KiB).
    pub max_bytes: ByteSize,
    /// …or when the oldest buffered row is this old.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 65_536,
            max_bytes: ByteSize::mib(8),
            max_age: Duration::from_millis(500),
        }
    }
}

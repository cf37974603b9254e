//! What one plugin instance may take: memory over all its linear memories together, a few
//! memories, tables and instances, bounded tables; and how much it may log.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;

/// Linear memories a store may create. A component holds several core modules (the guest,
/// a WASI adapter, a language runtime's helpers: 3 for a Rust connector, 14 for a Python
/// one), but they share the one memory the guest defines and the others import.
pub const MAX_MEMORIES: usize = 1;
/// Tables a store may create.
pub const MAX_TABLES: usize = 64;
/// Core instances a store may create.
pub const MAX_INSTANCES: usize = 64;
/// Elements one table may hold (function references: a large program has tens of
/// thousands).
pub const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// The store's resource limiter: `memory_limit` bytes over every memory of the instance
/// (should the count above ever be raised), and the counts above. Growing past a limit traps, and the
/// trap names the limit.
pub struct Budget {
    memory_limit: usize,
    /// Bytes held by all memories now.
    memory_used: usize,
}

impl Budget {
    pub fn new(memory_limit: usize) -> Self {
        Self {
            memory_limit,
            memory_used: 0,
        }
    }
}

impl ResourceLimiter for Budget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_used
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_limit {
            // The text is how a failure is classified as `memory` (see `classify`).
            wasmtime::bail!(
                "memory limit of {} MiB reached: growing memory to {desired} bytes would hold {total} over all memories",
                self.memory_limit >> 20
            );
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            wasmtime::bail!("table limit of {MAX_TABLE_ELEMENTS} elements reached");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The most bytes of one log line; the rest is cut, and the cut said.
pub const MAX_LOG_LINE: usize = 4096;
/// Lines a plugin may log per second, on average.
pub const LOG_LINES_PER_SECOND: f64 = 100.0;
/// Lines a plugin may log at once, after a quiet spell.
pub const LOG_BURST: f64 = 1000.0;

/// A token bucket over a plugin's `host.log`: lines past the rate are dropped, and how many
/// is said when lines flow again (at most once per second).
pub struct LogBudget {
    plugin: Arc<str>,
    tokens: f64,
    last: Instant,
    dropped: u64,
    dropped_total: u64,
}

impl LogBudget {
    pub fn new(plugin: Arc<str>) -> Self {
        Self {
            plugin,
            tokens: LOG_BURST,
            last: Instant::now(),
            dropped: 0,
            dropped_total: 0,
        }
    }

    /// The line to log, cut to [`MAX_LOG_LINE`], or `None` when over the rate.
    pub fn admit(&mut self, mut line: String) -> Option<String> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * LOG_LINES_PER_SECOND;
        self.tokens = (self.tokens + refill).min(LOG_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            self.dropped_total += 1;
            return None;
        }
        self.tokens -= 1.0;
        if self.dropped > 0 {
            tracing::warn!(
                plugin = %self.plugin,
                dropped = self.dropped,
                total = self.dropped_total,
                "log lines dropped: the plugin logs faster than {LOG_LINES_PER_SECOND} lines/s"
            );
            self.dropped = 0;
        }
        if line.len() > MAX_LOG_LINE {
            let cut = line.len() - MAX_LOG_LINE;
            let mut at = MAX_LOG_LINE;
            while !line.is_char_boundary(at) {
                at -= 1;
            }
            line.truncate(at);
            line.push_str(&format!("… ({cut} more bytes cut)"));
        }
        Some(line)
    }

    /// Lines dropped since the instance started.
    #[cfg(test)]
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_counted_over_every_memory() {
        let mut b = Budget::new(10 << 20);
        // Three memories of 3 MiB fit; a fourth does not, though each alone would.
        for _ in 0..3 {
            assert!(b.memory_growing(0, 3 << 20, None).expect("fits"));
        }
        let e = b
            .memory_growing(0, 3 << 20, None)
            .expect_err("over the budget");
        assert!(e.to_string().contains("memory limit of 10 MiB"), "{e}");
        // Growing one memory counts only the growth.
        assert!(b.memory_growing(3 << 20, 4 << 20, None).expect("fits"));
        assert!(b.table_growing(0, 10, None).expect("small table"));
        assert!(b.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).is_err());
    }

    #[test]
    fn a_flood_of_log_lines_is_cut_to_the_rate_and_long_lines_are_cut() {
        let mut logs = LogBudget::new("p".into());
        let admitted = (0..100_000)
            .filter(|i| logs.admit(format!("line {i}")).is_some())
            .count();
        // The burst, and whatever the rate refilled while the loop ran.
        assert!(
            admitted >= LOG_BURST as usize && admitted < 2 * LOG_BURST as usize,
            "{admitted}"
        );
        assert_eq!(logs.dropped_total(), 100_000 - admitted as u64);
        let mut logs = LogBudget::new("p".into());
        let long = logs.admit("é".repeat(10_000)).expect("admitted");
        assert!(
            long.len() < MAX_LOG_LINE + 64 && long.ends_with("more bytes cut)"),
            "{}",
            long.len()
        );
    }
}

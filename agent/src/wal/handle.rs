//! `WalHandle`: the sequence base and acknowledgements.

use std::sync::Arc;

use super::segment::reclaim;
use super::{Shared, WalError};

/// Acknowledges records and sets the base; cheap to clone.
#[derive(Clone)]
pub struct WalHandle {
    pub(super) shared: Arc<Shared>,
}

impl WalHandle {
    /// The sequence base, if learnt.
    pub fn base(&self) -> Option<u64> {
        self.shared.inner.lock().ok().and_then(|i| i.state.base)
    }

    /// Fix the sequence base. Without `force`, a base already set is kept (and returned).
    /// Stored before it returns.
    pub fn set_base(&self, base: u64, force: bool) -> Result<u64, WalError> {
        let mut inner = self.shared.inner.lock().map_err(|_| WalError::Closed)?;
        if let Some(b) = inner.state.base
            && !force
        {
            return Ok(b);
        }
        inner.state.base = Some(base);
        self.shared.write_state(&inner.state)?;
        Ok(base)
    }

    /// The highest lsn assigned so far (`0` for a new log).
    pub fn last_lsn(&self) -> u64 {
        self.shared
            .inner
            .lock()
            .map(|i| i.state.last_lsn)
            .unwrap_or(0)
    }

    /// The highest acknowledged lsn.
    pub fn acked(&self) -> u64 {
        self.shared.inner.lock().map(|i| i.state.acked).unwrap_or(0)
    }

    /// Everything up to `lsn` is acknowledged: delete the segments that hold nothing else.
    pub fn ack(&self, lsn: u64) -> Result<(), WalError> {
        let mut inner = self.shared.inner.lock().map_err(|_| WalError::Closed)?;
        if lsn <= inner.state.acked {
            return Ok(());
        }
        inner.state.acked = lsn;
        for s in inner.segments.iter_mut() {
            while s.rows.front().is_some_and(|(l, _)| *l <= lsn) {
                s.rows.pop_front();
            }
        }
        // The state is stored before a segment goes: then only it remembers the checkpoint.
        if !reclaim(&self.shared, &mut inner).is_empty() {
            let total = inner.total_bytes;
            drop(inner);
            self.shared.space.notify_all();
            self.shared.report_size(total);
        } else if inner.state_written.elapsed() >= std::time::Duration::from_secs(1) {
            // Now and then, so a restart does not reread what the processor already has
            // (the processor's mark would skip it anyway; this only saves the reading).
            // Written under the lock: two writers would share the temporary file.
            inner.state_written = std::time::Instant::now();
            self.shared.write_state(&inner.state)?;
        }
        Ok(())
    }

    /// Bytes on disk.
    #[cfg(test)]
    pub fn size(&self) -> u64 {
        self.shared.inner.lock().map(|i| i.total_bytes).unwrap_or(0)
    }

    /// Stop a writer waiting for space (at shutdown).
    pub fn close(&self) {
        if let Ok(mut i) = self.shared.inner.lock() {
            i.closed = true;
        }
        self.shared.space.notify_all();
    }
}

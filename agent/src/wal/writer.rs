//! `WalWriter` and the writer thread: appends are group-committed, one sync per group,
//! under the log's size cap.

use std::fs::{self, File};
use std::io::{self, Write};

use tokio::sync::{mpsc, oneshot};

use super::record::{SEGMENT_MAGIC, encode_record};
use super::segment::{reclaim, roll, sync_active};
use super::{Shared, WalError, WhenFull, io_err};
use crate::pipeline::ReadyBatch;

/// Appends batches; cheap to clone.
#[derive(Clone)]
pub struct WalWriter {
    pub(super) tx: mpsc::Sender<Append>,
}

pub(super) struct Append {
    batch: ReadyBatch,
    done: oneshot::Sender<Result<u64, WalError>>,
}

impl WalWriter {
    /// Append a batch; resolves with its lsn once it is on disk.
    pub async fn append(&self, batch: ReadyBatch) -> Result<u64, WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Append { batch, done })
            .await
            .map_err(|_| WalError::Closed)?;
        rx.await.map_err(|_| WalError::Closed)?
    }
}

/// The writer thread: group-commits queued appends until every writer handle is gone.
pub(super) fn write_loop(shared: &Shared, mut rx: mpsc::Receiver<Append>) {
    // Records are written straight to the file (they are whole batches, so a buffer would
    // gain nothing): a failed write (a full disk) then shows at once, on its own record.
    let mut active: Option<File> = None;
    let mut buf = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        let mut results = Vec::with_capacity(group.len());
        let mut bytes = 0u64;
        for a in &group {
            let r = append_one(shared, &mut active, &mut buf, &a.batch);
            if let Ok((_, n)) = r {
                bytes += n;
            }
            results.push(r.map(|(lsn, _)| lsn));
        }
        // One sync for the whole group; nothing is acknowledged before it.
        let synced = active.as_ref().map(File::sync_data).transpose();
        let last_ok = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .max()
            .copied();
        match synced {
            Ok(_) => {
                if let Some(lsn) = last_ok {
                    shared.durable.send_replace(lsn);
                }
                if let Some(f) = &shared.metrics.on_sync {
                    f(bytes, group.len() as u64);
                }
                for (a, r) in group.into_iter().zip(results) {
                    let _ = a.done.send(r);
                }
            }
            Err(e) => {
                // After a failed sync the kernel may have dropped the written pages: what
                // the log holds is unknown, so it stops taking batches (the agent stops
                // with this error; on restart recovery keeps the records that are whole).
                tracing::error!(dir = %shared.dir.display(), "write-ahead log sync failed: {e}");
                if let Ok(mut i) = shared.inner.lock() {
                    i.closed = true;
                }
                let path = shared.dir.clone();
                for a in group {
                    let _ = a.done.send(Err(WalError::Io {
                        path: path.clone(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    }));
                }
                return;
            }
        }
    }
    if let Some(w) = active
        && let Err(e) = w.sync_data()
    {
        tracing::error!(dir = %shared.dir.display(), "cannot sync the write-ahead log on close: {e}");
    }
}

/// Append one batch to the active segment (starting one when needed), honouring the cap.
fn append_one(
    shared: &Shared,
    active: &mut Option<File>,
    buf: &mut Vec<u8>,
    batch: &ReadyBatch,
) -> Result<(u64, u64), WalError> {
    buf.clear();
    let mut inner = shared.inner.lock().map_err(|_| WalError::Closed)?;
    if inner.closed {
        return Err(WalError::Closed);
    }
    let lsn = inner.state.last_lsn + 1;
    encode_record(lsn, batch, buf);
    let size = buf.len() as u64;
    let cap = shared.opts.max_size;
    if size + 2 * SEGMENT_MAGIC.len() as u64 > cap {
        return Err(WalError::TooLarge { size, cap });
    }
    while inner.total_bytes + size > cap {
        // Whatever this group wrote so far becomes readable, so the shipper can move on.
        sync_active(shared, active, inner.state.last_lsn)?;
        // A full active segment whose records are all acknowledged can only be freed once
        // a newer one exists.
        if inner.segments.len() == 1 && inner.segments[0].rows.is_empty() {
            roll(shared, &mut inner, active, lsn)?;
            reclaim(shared, &mut inner);
            continue;
        }
        match shared.opts.when_full {
            WhenFull::Block => {
                if inner.closed {
                    return Err(WalError::Closed);
                }
                inner = shared
                    .space
                    .wait_timeout(inner, std::time::Duration::from_millis(100))
                    .map_err(|_| WalError::Closed)?
                    .0;
            }
            WhenFull::DropOldest => {
                if inner.segments.len() == 1 {
                    roll(shared, &mut inner, active, lsn)?;
                }
                let Some(old) = inner.segments.pop_front() else {
                    break;
                };
                let read = shared.read_upto.load(std::sync::atomic::Ordering::Acquire);
                let lost: u64 = old
                    .rows
                    .iter()
                    .filter(|(lsn, _)| *lsn > read)
                    .map(|(_, r)| u64::from(*r))
                    .sum();
                inner.total_bytes -= old.bytes;
                inner.dropped_below = inner.dropped_below.max(old.last_lsn + 1);
                inner.state.acked = inner.state.acked.max(old.last_lsn);
                if let Err(e) = fs::remove_file(&old.path) {
                    tracing::warn!(segment = %old.path.display(), "cannot delete a dropped segment: {e}");
                }
                tracing::error!(
                    segment = %old.path.display(),
                    rows = lost,
                    "write-ahead log is full (max_size {cap} bytes, when_full = \"drop_oldest\"): dropped its oldest segment"
                );
                if lost > 0
                    && let Some(f) = &shared.metrics.on_dropped
                {
                    f(lost);
                }
            }
        }
    }
    let full = inner
        .segments
        .back()
        .is_none_or(|s| s.bytes + size > shared.opts.segment_size && s.last_lsn >= s.first_lsn);
    if active.is_none() || full {
        roll(shared, &mut inner, active, lsn)?;
    }
    let (Some(w), Some(seg)) = (active.as_mut(), inner.segments.back_mut()) else {
        return Err(WalError::Closed);
    };
    if let Err(e) = w.write_all(buf) {
        // A full disk, typically. Cut the segment back to its last whole record (dropping
        // the buffer unwritten) so the next append starts clean; the lsn is not used.
        if let Some(file) = active.take()
            && let Err(e) = file.set_len(seg.bytes)
        {
            tracing::error!(segment = %seg.path.display(), "cannot cut a failed write from the write-ahead log: {e}");
        }
        return Err(io_err(&seg.path)(e));
    }
    seg.bytes += size;
    seg.last_lsn = lsn;
    seg.rows.push_back((lsn, batch.rows));
    inner.total_bytes += size;
    inner.state.last_lsn = lsn;
    if batch.checkpoint.is_some() {
        inner.state.checkpoint = batch.checkpoint.clone();
    }
    let total = inner.total_bytes;
    let first_use = !inner.state.used;
    inner.state.used = true;
    // The record is written: failing the append now would have it stored twice on retry.
    // An unstored `used` flag only matters once every segment is gone, and the state is
    // written again before that happens.
    if first_use && let Err(e) = shared.write_state(&inner.state) {
        tracing::warn!("cannot store the write-ahead log's state: {e}");
    }
    drop(inner);
    shared.report_size(total);
    Ok((lsn, size))
}

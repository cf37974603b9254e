//! Segment files: scanned on recovery, created and rolled by the writer, synced, and
//! reclaimed once acknowledged.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::record::{SEGMENT_MAGIC, decode_record};
use super::{Inner, Shared, WalError, io_err, sync_dir};

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) first_lsn: u64,
    /// Last lsn written to it (`first_lsn - 1` while empty).
    pub(super) last_lsn: u64,
    pub(super) path: PathBuf,
    pub(super) bytes: u64,
    /// Rows in records not yet acknowledged (for the loss count when dropped).
    pub(super) rows: VecDeque<(u64, u32)>,
}

pub(super) struct Scan {
    pub(super) len: u64,
    pub(super) valid_len: u64,
    pub(super) records: u64,
    pub(super) last_lsn: u64,
    pub(super) corrupt: u64,
    /// The newest checkpoint a record carries.
    pub(super) checkpoint: Option<String>,
    /// `(lsn, rows)` of records above the acknowledged mark.
    pub(super) rows: VecDeque<(u64, u32)>,
}

/// Read a segment's records, stopping at the first damaged one.
pub(super) fn scan_segment(path: &Path, first: u64, acked: u64) -> io::Result<Scan> {
    let data = fs::read(path)?;
    let mut scan = Scan {
        len: data.len() as u64,
        valid_len: 0,
        records: 0,
        last_lsn: 0,
        corrupt: 0,
        checkpoint: None,
        rows: VecDeque::new(),
    };
    if data.len() < SEGMENT_MAGIC.len() || &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        scan.corrupt = u64::from(!data.is_empty());
        return Ok(scan);
    }
    let mut pos = SEGMENT_MAGIC.len();
    scan.valid_len = pos as u64;
    let mut expect = first;
    while pos < data.len() {
        match decode_record(&data[pos..]) {
            Some((record, used)) if record.lsn == expect => {
                if record.lsn > acked {
                    scan.rows.push_back((record.lsn, record.batch.rows));
                }
                if record.batch.checkpoint.is_some() {
                    scan.checkpoint = record.batch.checkpoint;
                }
                scan.last_lsn = record.lsn;
                scan.records += 1;
                expect += 1;
                pos += used;
                scan.valid_len = pos as u64;
            }
            _ => {
                scan.corrupt = 1;
                break;
            }
        }
    }
    Ok(scan)
}

/// Flush and sync the active segment, then publish `last_lsn` as readable.
pub(super) fn sync_active(
    shared: &Shared,
    active: &mut Option<File>,
    last_lsn: u64,
) -> Result<(), WalError> {
    if let Some(w) = active.as_ref() {
        w.sync_data().map_err(io_err(&shared.dir))?;
        shared.durable.send_replace(last_lsn);
    }
    Ok(())
}

/// Close the active segment and start a new one whose first record is `lsn`.
pub(super) fn roll(
    shared: &Shared,
    inner: &mut Inner,
    active: &mut Option<File>,
    lsn: u64,
) -> Result<(), WalError> {
    sync_active(shared, active, inner.state.last_lsn)?;
    *active = None;
    // An empty newest segment (from an earlier roll) is reused rather than duplicated.
    if inner.segments.back().is_none_or(|s| s.first_lsn != lsn) {
        let seg = new_segment(shared, lsn)?;
        inner.total_bytes += seg.bytes;
        inner.segments.push_back(seg);
        // The closed segment may be all acknowledged already: free it now rather than at
        // the next ack (which a full disk may be waiting for).
        if !reclaim(shared, inner).is_empty() {
            shared.report_size(inner.total_bytes);
        }
    }
    let Some(seg) = inner.segments.back() else {
        return Err(WalError::Closed);
    };
    let file = OpenOptions::new()
        .append(true)
        .open(&seg.path)
        .map_err(io_err(&seg.path))?;
    *active = Some(file);
    Ok(())
}

/// Delete leading segments whose records are all acknowledged, except the newest.
pub(super) fn reclaim(shared: &Shared, inner: &mut Inner) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    while inner.segments.len() > 1
        && inner
            .segments
            .front()
            .is_some_and(|s| s.last_lsn <= inner.state.acked)
    {
        if let Some(s) = inner.segments.pop_front() {
            inner.total_bytes -= s.bytes;
            removed.push(s.path);
        }
    }
    if !removed.is_empty() {
        if let Err(e) = shared.write_state(&inner.state) {
            tracing::warn!("cannot store the write-ahead log's state: {e}");
        }
        for p in &removed {
            if let Err(e) = fs::remove_file(p) {
                tracing::warn!(segment = %p.display(), "cannot delete an acknowledged segment: {e}");
            }
        }
    }
    removed
}

/// Create a segment file whose first record will be `first_lsn`.
fn new_segment(shared: &Shared, first_lsn: u64) -> Result<Segment, WalError> {
    let path = shared.dir.join(format!("{first_lsn:020}.wal"));
    let mut f = File::create(&path).map_err(io_err(&path))?;
    f.write_all(SEGMENT_MAGIC).map_err(io_err(&path))?;
    f.sync_data().map_err(io_err(&path))?;
    sync_dir(&shared.dir)?;
    Ok(Segment {
        first_lsn,
        last_lsn: first_lsn - 1,
        path,
        bytes: SEGMENT_MAGIC.len() as u64,
        rows: VecDeque::new(),
    })
}

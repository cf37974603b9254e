//! The write-ahead log (the agent's disk buffer). Every batch of a stream is appended here
//! before it is shipped and stays until the processor (QUIC) or the broker (Kafka) has
//! acknowledged it, so a killed agent loses nothing it had buffered.
//!
//! Each stream has a directory of segments, `<first lsn>.wal`, and a small `state` file.
//! Records are numbered by a log sequence number (lsn) that starts at 1 for a new log; the
//! sequence a batch is shipped with is `base + lsn`, where `base` is learnt once (from the
//! processor's mark on the first handshake) and then stored, so numbering stays contiguous
//! per agent and stream even across a lost disk buffer.
//!
//! Appends are group-committed: a writer thread takes every append queued while it was busy,
//! writes them, and syncs once. A record is only visible to readers once it is synced.
//!
//! Record layout (little-endian): `len: u32`, `crc32(body): u32`, then the body: `lsn: u64`,
//! `created_at_us: i64`, `rows: u32`, `schema_fingerprint: u64`, `checkpoint_len: u32`
//! (`u32::MAX` for none), the checkpoint's bytes, then the batch's Arrow IPC bytes.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::batcher::ReadyBatch;

const SEGMENT_MAGIC: &[u8; 8] = b"SLUWAL01";
const RECORD_HEADER: usize = 8;
const BODY_FIXED: usize = 8 + 8 + 4 + 8 + 4;
/// A record larger than this is taken for corruption (batches are far smaller).
const MAX_RECORD: usize = 1 << 30;
const NO_CHECKPOINT: u32 = u32::MAX;

/// What to do when the log has reached its size cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop taking batches until acknowledgements free space: sources are slowed down.
    #[default]
    Block,
    /// Delete the oldest segment, acknowledged or not, and count its rows as lost.
    DropOldest,
}

/// Settings of one stream's log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size at which the active segment is closed and a new one started.
    pub segment_size: u64,
    /// Cap on the bytes of all segments of the stream.
    pub max_size: u64,
    pub when_full: WhenFull,
}

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "write-ahead log {path}: state file is unreadable ({reason}); move it away to start a new log"
    )]
    State { path: PathBuf, reason: String },
    #[error("write-ahead log is closed")]
    Closed,
    #[error("a batch of {size} bytes does not fit a log capped at {cap} bytes")]
    TooLarge { size: u64, cap: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One record read back from the log.
#[derive(Debug, Clone)]
pub struct WalRecord {
    pub lsn: u64,
    pub batch: ReadyBatch,
}

/// What the log held when it was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The sequence base, once learnt (`None` for a log that has never shipped).
    pub base: Option<u64>,
    /// Records kept and not yet acknowledged.
    pub pending_records: u64,
    pub pending_rows: u64,
    /// The newest checkpoint the log holds: `None` when the log is new (the source
    /// resumes from what the lake says), `Some(None)` when its batches carried none.
    pub checkpoint: Option<Option<String>>,
    /// Records found damaged (skipped, with the rest of their segment).
    pub corrupt_records: u64,
    /// Bytes cut from the end of the last segment: a write the agent died in the middle of.
    pub torn_bytes: u64,
}

/// Persistent facts that outlive the segments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    base: Option<u64>,
    /// Highest acknowledged lsn.
    acked: u64,
    /// Highest lsn ever assigned (so numbering continues after every segment is deleted).
    last_lsn: u64,
    /// Newest durable checkpoint, kept for when every segment has been deleted.
    checkpoint: Option<String>,
    /// Whether any batch was ever written (a used log with no checkpoint resumes at `None`).
    used: bool,
}

#[derive(Debug)]
struct Segment {
    first_lsn: u64,
    /// Last lsn written to it (`first_lsn - 1` while empty).
    last_lsn: u64,
    path: PathBuf,
    bytes: u64,
    /// Rows in records not yet acknowledged (for the loss count when dropped).
    rows: VecDeque<(u64, u32)>,
}

/// Shared between the writer thread, the handles and readers.
struct Shared {
    dir: PathBuf,
    opts: WalOptions,
    inner: Mutex<Inner>,
    /// Signalled when space is freed (for a writer blocked by the cap).
    space: Condvar,
    /// Highest durable lsn, for readers.
    durable: watch::Sender<u64>,
    /// Set when the writer thread has ended: readers stop at the durable end.
    finished: std::sync::atomic::AtomicBool,
    /// Highest lsn handed to the reader: the shipper holds those records in memory, so a
    /// segment dropped by the cap does not lose them.
    read_upto: std::sync::atomic::AtomicU64,
    metrics: WalMetricsSink,
}

struct Inner {
    segments: VecDeque<Segment>,
    state: State,
    total_bytes: u64,
    /// Lsns below this were dropped by the size cap; readers skip past them.
    dropped_below: u64,
    /// When the state file was last written (acks are stored at most once a second).
    state_written: std::time::Instant,
    closed: bool,
}

/// Counters the log reports (the agent wires them to Prometheus).
#[derive(Clone, Default)]
pub struct WalMetricsSink {
    /// Called with the total bytes on disk after each change.
    pub on_size: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Called with the rows lost when the cap drops unacknowledged records.
    pub on_dropped: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Called with the bytes and records of each group commit.
    pub on_sync: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

impl Shared {
    fn report_size(&self, bytes: u64) {
        if let Some(f) = &self.metrics.on_size {
            f(bytes);
        }
    }

    /// Store the state (atomically, by rename). Callers hold the `inner` lock: writers
    /// share the temporary file.
    fn write_state(&self, state: &State) -> Result<(), WalError> {
        let path = self.dir.join("state");
        let tmp = self.dir.join("state.tmp");
        let text = serde_json::to_vec(state).map_err(|e| WalError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&text).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Appends batches; cheap to clone.
#[derive(Clone)]
pub struct WalWriter {
    tx: mpsc::Sender<Append>,
}

struct Append {
    batch: ReadyBatch,
    done: oneshot::Sender<Result<u64, WalError>>,
}

/// Acknowledges records and sets the base; cheap to clone.
#[derive(Clone)]
pub struct WalHandle {
    shared: Arc<Shared>,
}

/// Reads synced records in order, waiting for new ones.
pub struct WalReader {
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    /// Next lsn to read.
    next: u64,
    file: Option<(u64, File)>,
}

/// Open (or create) the log of one stream in `dir`, recovering what it holds.
pub fn open(
    dir: &Path,
    opts: WalOptions,
    metrics: WalMetricsSink,
) -> Result<(WalWriter, WalHandle, WalReader, Recovered), WalError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let state_path = dir.join("state");
    let mut state: State = match fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WalError::State {
            path: state_path.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(io_err(&state_path)(e)),
    };
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "wal")
            && let Some(first) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
        {
            names.push((first, path));
        }
    }
    names.sort();

    let mut recovered = Recovered::default();
    let mut segments = VecDeque::new();
    let mut checkpoint: Option<String> = None;
    let last_index = names.len().saturating_sub(1);
    for (i, (first, path)) in names.into_iter().enumerate() {
        let scan = scan_segment(&path, first, state.acked).map_err(io_err(&path))?;
        recovered.corrupt_records += scan.corrupt;
        if scan.corrupt > 0 {
            tracing::error!(
                segment = %path.display(),
                valid_records = scan.records,
                "write-ahead log segment is damaged: the records after byte {} are skipped",
                scan.valid_len
            );
        }
        if i == last_index && scan.valid_len < scan.len {
            // The agent died in the middle of a write: the tail was never synced, so no
            // one was told it was stored. Cut it so appends continue from a clean end.
            recovered.torn_bytes = scan.len - scan.valid_len;
            recovered.corrupt_records -= scan.corrupt;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(scan.valid_len).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        if scan.records == 0 && scan.valid_len <= SEGMENT_MAGIC.len() as u64 && i != last_index {
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        if scan.checkpoint.is_some() {
            checkpoint = scan.checkpoint;
        }
        state.last_lsn = state.last_lsn.max(scan.last_lsn);
        recovered.pending_records += scan.rows.len() as u64;
        recovered.pending_rows += scan.rows.iter().map(|(_, r)| u64::from(*r)).sum::<u64>();
        segments.push_back(Segment {
            first_lsn: first,
            last_lsn: scan.last_lsn.max(first.saturating_sub(1)),
            path,
            bytes: scan.valid_len,
            rows: scan.rows,
        });
    }
    recovered.base = state.base;
    recovered.checkpoint = match checkpoint {
        Some(c) => Some(Some(c)),
        None if state.used => Some(state.checkpoint.clone()),
        None => None,
    };
    let total_bytes = segments.iter().map(|s| s.bytes).sum();
    let first_unacked = state.acked + 1;
    let (durable, durable_rx) = watch::channel(state.last_lsn);
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        opts,
        inner: Mutex::new(Inner {
            segments,
            state,
            total_bytes,
            dropped_below: 0,
            state_written: std::time::Instant::now(),
            closed: false,
        }),
        space: Condvar::new(),
        durable,
        finished: Default::default(),
        read_upto: Default::default(),
        metrics,
    });
    shared.report_size(total_bytes);
    let (tx, rx) = mpsc::channel(16);
    let writer_shared = shared.clone();
    std::thread::Builder::new()
        .name("sluice-wal".into())
        .spawn(move || {
            write_loop(&writer_shared, rx);
            writer_shared
                .finished
                .store(true, std::sync::atomic::Ordering::Release);
            // Wake readers waiting for more.
            writer_shared.durable.send_modify(|_| {});
        })
        .map_err(io_err(dir))?;
    let reader = WalReader {
        shared: shared.clone(),
        durable: durable_rx,
        next: first_unacked,
        file: None,
    };
    Ok((WalWriter { tx }, WalHandle { shared }, reader, recovered))
}

struct Scan {
    len: u64,
    valid_len: u64,
    records: u64,
    last_lsn: u64,
    corrupt: u64,
    /// The newest checkpoint a record carries.
    checkpoint: Option<String>,
    /// `(lsn, rows)` of records above the acknowledged mark.
    rows: VecDeque<(u64, u32)>,
}

/// Read a segment's records, stopping at the first damaged one.
fn scan_segment(path: &Path, first: u64, acked: u64) -> io::Result<Scan> {
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

/// Decode one record from the front of `buf`: the record and the bytes it took, or `None`
/// if it is incomplete or damaged.
fn decode_record(buf: &[u8]) -> Option<(WalRecord, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    if !(BODY_FIXED..=MAX_RECORD).contains(&len) {
        return None;
    }
    let body = buf.get(RECORD_HEADER..RECORD_HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap_or_default());
    let lsn = u64_at(0);
    let created_at_us = u64_at(8) as i64;
    let rows = u32::from_le_bytes(body[16..20].try_into().ok()?);
    let schema_fingerprint = u64_at(20);
    let cp_len = u32::from_le_bytes(body[28..32].try_into().ok()?);
    let (checkpoint, ipc_start) = if cp_len == NO_CHECKPOINT {
        (None, BODY_FIXED)
    } else {
        let end = BODY_FIXED.checked_add(cp_len as usize)?;
        let text = std::str::from_utf8(body.get(BODY_FIXED..end)?).ok()?;
        (Some(text.to_string()), end)
    };
    let ipc = Bytes::copy_from_slice(body.get(ipc_start..)?);
    Some((
        WalRecord {
            lsn,
            batch: ReadyBatch {
                ipc,
                rows,
                schema_fingerprint,
                created_at_us,
                checkpoint,
            },
        },
        RECORD_HEADER + len,
    ))
}

fn encode_record(lsn: u64, b: &ReadyBatch, out: &mut Vec<u8>) {
    let cp = b.checkpoint.as_deref().map(str::as_bytes);
    let len = BODY_FIXED + cp.map_or(0, <[u8]>::len) + b.ipc.len();
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&b.created_at_us.to_le_bytes());
    out.extend_from_slice(&b.rows.to_le_bytes());
    out.extend_from_slice(&b.schema_fingerprint.to_le_bytes());
    match cp {
        Some(c) => {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        None => out.extend_from_slice(&NO_CHECKPOINT.to_le_bytes()),
    }
    out.extend_from_slice(&b.ipc);
    let crc = crc32fast::hash(&out[start + RECORD_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The writer thread: group-commits queued appends until every writer handle is gone.
fn write_loop(shared: &Shared, mut rx: mpsc::Receiver<Append>) {
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

/// Flush and sync the active segment, then publish `last_lsn` as readable.
fn sync_active(shared: &Shared, active: &mut Option<File>, last_lsn: u64) -> Result<(), WalError> {
    if let Some(w) = active.as_ref() {
        w.sync_data().map_err(io_err(&shared.dir))?;
        shared.durable.send_replace(last_lsn);
    }
    Ok(())
}

/// Close the active segment and start a new one whose first record is `lsn`.
fn roll(
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
fn reclaim(shared: &Shared, inner: &mut Inner) -> Vec<PathBuf> {
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

impl WalReader {
    /// The next synced record, waiting until there is one; `None` once the log is closed
    /// and everything has been read.
    pub async fn next(&mut self) -> Result<Option<WalRecord>, WalError> {
        loop {
            let durable = *self.durable.borrow_and_update();
            if self.next <= durable
                && let Some(r) = self.read_next()?
            {
                return Ok(Some(r));
            }
            if self
                .shared
                .finished
                .load(std::sync::atomic::Ordering::Acquire)
                && self.next > *self.durable.borrow()
            {
                return Ok(None);
            }
            if self.durable.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// After a read error, go on with the segment after the one that failed (what was
    /// left of the damaged one is lost; the caller counts it).
    pub fn skip_damaged(&mut self) {
        let Ok(inner) = self.shared.inner.lock() else {
            return;
        };
        let next_first = inner
            .segments
            .iter()
            .map(|s| s.first_lsn)
            .find(|f| *f > self.next);
        self.file = None;
        self.next = next_first.unwrap_or(inner.state.last_lsn + 1);
    }

    /// Read on a thread of its own (segment reads are blocking file I/O), handing records
    /// on through a channel of `capacity`. A damaged record is handed on as an error and
    /// reading goes on after its segment.
    pub fn spawn(
        mut self,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Result<WalRecord, WalError>>, WalError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let dir = self.shared.dir.clone();
        std::thread::Builder::new()
            .name("sluice-wal-read".into())
            .spawn(move || {
                loop {
                    let r = futures::executor::block_on(self.next());
                    let failed = r.is_err();
                    let item = match r {
                        Ok(Some(rec)) => Ok(rec),
                        Ok(None) => break,
                        Err(e) => Err(e),
                    };
                    if tx.blocking_send(item).is_err() {
                        break;
                    }
                    if failed {
                        self.skip_damaged();
                    }
                }
            })
            .map_err(io_err(&dir))?;
        Ok(rx)
    }

    /// Read the record `self.next` from its segment.
    fn read_next(&mut self) -> Result<Option<WalRecord>, WalError> {
        let (first_lsn, path) = {
            let inner = self.shared.inner.lock().map_err(|_| WalError::Closed)?;
            if self.next < inner.dropped_below {
                self.next = inner.dropped_below;
                self.file = None;
            }
            // The first segment holding `next` or, past a gap left by a damaged segment,
            // the first after it.
            match inner
                .segments
                .iter()
                .find(|s| self.next <= s.last_lsn && s.first_lsn <= s.last_lsn)
            {
                Some(s) => {
                    if s.first_lsn > self.next {
                        tracing::warn!(
                            from = self.next,
                            to = s.first_lsn - 1,
                            "write-ahead log records missing (damaged segment): skipped"
                        );
                        self.next = s.first_lsn;
                        self.file = None;
                    }
                    (s.first_lsn, s.path.clone())
                }
                None => return Ok(None),
            }
        };
        if self.file.as_ref().is_none_or(|(f, _)| *f != first_lsn) {
            let mut f = File::open(&path).map_err(io_err(&path))?;
            f.seek(SeekFrom::Start(SEGMENT_MAGIC.len() as u64))
                .map_err(io_err(&path))?;
            self.file = Some((first_lsn, f));
        }
        loop {
            let Some((_, f)) = self.file.as_mut() else {
                return Ok(None);
            };
            let mut header = [0u8; RECORD_HEADER];
            f.read_exact(&mut header).map_err(io_err(&path))?;
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if !(BODY_FIXED..=MAX_RECORD).contains(&len) {
                return Err(WalError::Io {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "damaged record length"),
                });
            }
            let mut record = vec![0u8; RECORD_HEADER + len];
            record[..RECORD_HEADER].copy_from_slice(&header);
            f.read_exact(&mut record[RECORD_HEADER..])
                .map_err(io_err(&path))?;
            let Some((r, _)) = decode_record(&record) else {
                return Err(WalError::Io {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "record checksum mismatch"),
                });
            };
            // Records before `next` in this segment (after a seek) are passed over.
            if r.lsn < self.next {
                continue;
            }
            self.next = r.lsn + 1;
            self.shared
                .read_upto
                .fetch_max(r.lsn, std::sync::atomic::Ordering::AcqRel);
            return Ok(Some(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(i: u32, checkpoint: Option<&str>) -> ReadyBatch {
        ReadyBatch {
            ipc: Bytes::from(vec![i as u8; 1000 + i as usize]),
            rows: i,
            schema_fingerprint: 42,
            created_at_us: i64::from(i),
            checkpoint: checkpoint.map(str::to_string),
        }
    }

    fn opts(segment_size: u64, max_size: u64, when_full: WhenFull) -> WalOptions {
        WalOptions {
            segment_size,
            max_size,
            when_full,
        }
    }

    async fn read_all(reader: &mut WalReader, n: usize) -> Vec<WalRecord> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
                .await
                .expect("record in time")
                .expect("readable")
                .expect("a record");
            out.push(r);
        }
        out
    }

    #[tokio::test]
    async fn appends_are_read_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(8 * 1024, 1 << 30, WhenFull::Block);
        {
            let (w, h, mut r, rec) = open(dir.path(), o.clone(), Default::default()).unwrap();
            assert!(rec.checkpoint.is_none() && rec.base.is_none());
            for i in 1..=20 {
                let cp = format!("cp{i}");
                assert_eq!(w.append(batch(i, Some(&cp))).await.unwrap(), u64::from(i));
            }
            let got = read_all(&mut r, 20).await;
            assert_eq!(
                got.iter().map(|r| r.lsn).collect::<Vec<_>>(),
                (1..=20).collect::<Vec<_>>()
            );
            assert_eq!(got[4].batch.ipc, batch(5, None).ipc);
            assert_eq!(got[4].batch.checkpoint.as_deref(), Some("cp5"));
            assert!(
                fs::read_dir(dir.path()).unwrap().count() > 3,
                "several segments"
            );
            h.set_base(100, false).unwrap();
            h.ack(12).unwrap();
        }
        // Reopened: the unacknowledged records are still there, numbering continues.
        let (w, h, mut r, rec) = open(dir.path(), o, Default::default()).unwrap();
        assert_eq!(rec.base, Some(100));
        assert_eq!(rec.checkpoint, Some(Some("cp20".into())));
        assert_eq!(rec.pending_records, 8);
        assert_eq!(rec.pending_rows, (13..=20).sum::<u64>());
        let got = read_all(&mut r, 8).await;
        assert_eq!(got.first().unwrap().lsn, 13);
        assert_eq!(w.append(batch(21, None)).await.unwrap(), 21);
        assert_eq!(read_all(&mut r, 1).await[0].lsn, 21);
        // Everything acknowledged: only the newest segment stays, and the state keeps the
        // checkpoint for a restart.
        h.ack(21).unwrap();
        drop((w, h, r));
        let (_w, _h, _r, rec) = open(
            dir.path(),
            opts(8 * 1024, 1 << 30, WhenFull::Block),
            Default::default(),
        )
        .unwrap();
        assert_eq!(rec.pending_records, 0);
        assert_eq!(rec.checkpoint, Some(Some("cp20".into())));
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_a_damaged_segment_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let o = opts(4 * 1024, 1 << 30, WhenFull::Block);
        {
            let (w, _h, _r, _) = open(dir.path(), o.clone(), Default::default()).unwrap();
            for i in 1..=12 {
                w.append(batch(i, None)).await.unwrap();
            }
        }
        let mut segs: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3);
        // Flip a byte inside the first segment's second record; leave half a record at the end.
        let mut first = fs::read(&segs[0]).unwrap();
        let second_record = SEGMENT_MAGIC.len() + RECORD_HEADER + BODY_FIXED + 1001 + 20;
        first[second_record] ^= 0xff;
        fs::write(&segs[0], first).unwrap();
        let last = segs.last().unwrap();
        let mut f = OpenOptions::new().append(true).open(last).unwrap();
        f.write_all(&[7u8; 50]).unwrap();
        drop(f);

        let (w, _h, mut r, rec) = open(dir.path(), o, Default::default()).unwrap();
        assert_eq!(rec.corrupt_records, 1);
        assert_eq!(rec.torn_bytes, 50);
        let first_seg_records = {
            let mut n = 0;
            let mut lsns = Vec::new();
            for rcd in read_all(&mut r, 1).await {
                lsns.push(rcd.lsn);
                n += 1;
            }
            assert_eq!(lsns, vec![1]);
            n
        };
        assert_eq!(first_seg_records, 1);
        // The next record read is the first of the second segment (lsn 2 is lost).
        let next = read_all(&mut r, 1).await[0].lsn;
        assert!(next > 2);
        // Appends continue after the cut tail.
        assert_eq!(w.append(batch(13, None)).await.unwrap(), 13);
    }

    #[tokio::test]
    async fn drop_oldest_frees_space_and_counts_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let d = dropped.clone();
        let metrics = WalMetricsSink {
            on_dropped: Some(Arc::new(move |n| {
                d.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })),
            ..Default::default()
        };
        let (w, h, mut r, _) = open(
            dir.path(),
            opts(4 * 1024, 12 * 1024, WhenFull::DropOldest),
            metrics,
        )
        .unwrap();
        for i in 1..=40 {
            w.append(batch(i, None)).await.unwrap();
            assert!(h.size() <= 12 * 1024, "cap kept: {}", h.size());
        }
        let lost = dropped.load(std::sync::atomic::Ordering::Relaxed);
        assert!(lost > 0);
        // The reader skips what was dropped and reads the rest, up to the newest.
        let mut rows = 0u64;
        let mut last = 0;
        while last < 40 {
            let rec = read_all(&mut r, 1).await.remove(0);
            rows += u64::from(rec.batch.rows);
            last = rec.lsn;
        }
        assert_eq!(rows + lost, (1..=40).sum::<u64>());
    }

    #[tokio::test]
    async fn block_waits_for_acknowledgements() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h, mut r, _) = open(
            dir.path(),
            opts(4 * 1024, 12 * 1024, WhenFull::Block),
            Default::default(),
        )
        .unwrap();
        let writer = tokio::spawn(async move {
            for i in 1..=40 {
                w.append(batch(i, None)).await.unwrap();
            }
        });
        // Without acks the writer stalls under the cap.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!writer.is_finished());
        assert!(h.size() <= 12 * 1024);
        for i in 1..=40u64 {
            let rec = read_all(&mut r, 1).await.remove(0);
            assert_eq!(rec.lsn, i);
            h.ack(i).unwrap();
        }
        writer.await.unwrap();
    }
}

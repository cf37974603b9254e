//! The write-ahead log (the agent's disk buffer). Every batch of a stream is appended here
//! before it is shipped and stays until the processor (QUIC) or the broker (Kafka) has
//! acknowledged it, so a killed agent loses nothing it had buffered.
//!
//! | file | job |
//! |---|---|
//! | `record.rs` | the on-disk format: segment magic, record layout, encoding and decoding |
//! | `segment.rs` | segment files: the recovery scan, creating, rolling, reclaiming, syncing |
//! | `writer.rs` | `WalWriter` and the writer thread: group commits under the size cap |
//! | `handle.rs` | `WalHandle`: the sequence base, acknowledgements, closing |
//! | `reader.rs` | `WalReader`: synced records in order, on a thread of its own if asked |
//! | `tests.rs` | the log end to end: reopening, damage, both `when_full` modes |
//! | `config.rs` | `[buffer]` |
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

mod config;
mod handle;
mod reader;
mod record;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::pipeline::ReadyBatch;

pub use config::BufferConfig;
pub use handle::WalHandle;
pub use reader::WalReader;
pub use writer::WalWriter;

use record::SEGMENT_MAGIC;
use segment::{Segment, scan_segment};
use writer::write_loop;

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
    /// What an append does once `max_size` is reached (`[buffer] when_full`).
    pub when_full: WhenFull,
}

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file or directory of the log could not be created, read, written or synced (a
    /// full disk, say).
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The `state` file does not parse (or the state could not be encoded); the log is not
    /// opened rather than renumbered.
    #[error(
        "write-ahead log {path}: state file is unreadable ({reason}); move it away to start a new log"
    )]
    State {
        /// The `state` file.
        path: PathBuf,
        /// The JSON error.
        reason: String,
    },
    /// The log was closed (the agent is stopping), or its writer thread is gone.
    #[error("write-ahead log is closed")]
    Closed,
    /// One batch's record is larger than the whole log may be, so waiting cannot help.
    #[error("a batch of {size} bytes does not fit a log capped at {cap} bytes")]
    TooLarge {
        /// The record's size on disk, in bytes.
        size: u64,
        /// [`WalOptions::max_size`], in bytes.
        cap: u64,
    },
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
    /// The record's log sequence number; the batch ships as `base + lsn`.
    pub lsn: u64,
    /// The batch as it was appended.
    pub batch: ReadyBatch,
}

/// What the log held when it was opened.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The sequence base, once learnt (`None` for a log that has never shipped).
    pub base: Option<u64>,
    /// Records kept and not yet acknowledged.
    pub pending_records: u64,
    /// Rows in those records.
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

//! `WalReader`: synced records in order, read in place or on a thread of its own.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::record::{BODY_FIXED, MAX_RECORD, RECORD_HEADER, SEGMENT_MAGIC, decode_record};
use super::{Shared, WalError, WalRecord, io_err};

/// Reads synced records in order, waiting for new ones.
pub struct WalReader {
    pub(super) shared: Arc<Shared>,
    pub(super) durable: watch::Receiver<u64>,
    /// Next lsn to read.
    pub(super) next: u64,
    pub(super) file: Option<(u64, File)>,
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

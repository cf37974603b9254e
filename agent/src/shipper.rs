//! The QUIC shipper: one connection to the processor, one lane (a bidirectional QUIC stream)
//! per data stream.
//!
//! A lane ships what the stream's write-ahead log holds, in order. It opens with `Hello`;
//! the processor answers `Welcome` with the highest sequence it has committed for this agent
//! and stream. A batch's sequence is the log's base plus its lsn; the base is learnt from the
//! first `Welcome` a new log sees, so numbering continues where the lake left off. At most
//! `window` batches are unacknowledged; they are acked in the log (and so deleted from disk)
//! only once the processor acks them (after the Iceberg commit), and resent in order after
//! a reconnect. The processor recognises resent batches by sequence and acks them as
//! duplicates.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{
    Ack, AckStatus, BatchFrame, DEFAULT_MAX_FRAME_BYTES, Envelope, Frame, Hello, ProtocolError,
    read_frame, write_frame,
};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;

use crate::batcher::ReadyBatch;
use crate::config::QuicSinkConfig;
use crate::metrics::Metrics;
use crate::wal::{WalError, WalHandle, WalRecord};

/// Why a lane lost its session (the lane reconnects after each of these).
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("processor did not answer the lane handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("processor closed the lane")]
    Closed,
    #[error("processor refused the stream: {0}")]
    Refused(String),
    #[error("out-of-order ack: expected seq {expected:?}, got {got}")]
    AckOrder { expected: Option<u64>, got: u64 },
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// A stream's write-ahead log, as its lane uses it.
pub struct LaneLog {
    /// Records in lsn order, read on a thread of their own.
    pub records: mpsc::Receiver<Result<WalRecord, WalError>>,
    pub handle: WalHandle,
}

/// Outcome of a lane once its input has closed.
#[derive(Debug, Default, Clone, Copy)]
pub struct LaneSummary {
    pub acked_batches: u64,
    pub rejected_batches: u64,
    /// Batches not yet acknowledged when the drain deadline passed: they stay in the
    /// write-ahead log and ship at the next start.
    pub unshipped_batches: u64,
}

/// Shared connection to the processor.
pub struct QuicShipper {
    agent: String,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    cfg: QuicSinkConfig,
    conn: Mutex<Option<quinn::Connection>>,
    metrics: Arc<Metrics>,
}

impl QuicShipper {
    /// Resolve the endpoint and prepare the client; no connection is made yet.
    pub fn new(
        agent: String,
        cfg: QuicSinkConfig,
        client: quinn::ClientConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        use std::net::ToSocketAddrs;
        let addr = cfg
            .endpoint
            .to_socket_addrs()
            .with_context(|| format!("sink.endpoint {:?} does not resolve", cfg.endpoint))?
            .next()
            .with_context(|| format!("sink.endpoint {:?} has no address", cfg.endpoint))?;
        let server_name = cfg.server_name.clone().unwrap_or_else(|| {
            cfg.endpoint
                .rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                .unwrap_or_default()
        });
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
        endpoint.set_default_client_config(client);
        Ok(Self {
            agent,
            endpoint,
            addr,
            server_name,
            cfg,
            conn: Mutex::new(None),
            metrics,
        })
    }

    /// The live connection, connecting if there is none.
    async fn connection(&self) -> Result<quinn::Connection, LaneError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        self.metrics.set_connected(false);
        let connect_err = |reason: String| LaneError::Connect {
            addr: self.addr,
            reason,
        };
        let connecting = self
            .endpoint
            .connect(self.addr, &self.server_name)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = tokio::time::timeout(self.cfg.connect_timeout, connecting)
            .await
            .map_err(|_| connect_err(format!("timed out after {:?}", self.cfg.connect_timeout)))?
            .map_err(|e| connect_err(e.to_string()))?;
        tracing::info!(processor = %self.addr, "connected to processor");
        self.metrics.reconnected();
        self.metrics.set_connected(true);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Ship everything the log yields. Returns once the log is closed and every batch is
    /// acknowledged, or once `stop` fires and the drain timeout has passed.
    pub async fn run_lane(
        self: Arc<Self>,
        stream: Arc<str>,
        log: LaneLog,
        resume: watch::Sender<Option<Option<String>>>,
        mut stop: watch::Receiver<bool>,
    ) -> LaneSummary {
        let LaneLog {
            records: mut input,
            handle,
        } = log;
        let mut lane = Lane {
            stream: stream.clone(),
            log: handle,
            pending: VecDeque::new(),
            base: None,
            committed: 0,
            input_done: false,
            summary: LaneSummary::default(),
        };
        let mut backoff = self.cfg.backoff_initial;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if lane.input_done && lane.pending.is_empty() {
                break;
            }
            if drain_deadline.is_none() && *stop.borrow() {
                drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
            }
            let session = self.session(&mut lane, &mut input, &resume, &mut backoff);
            let result = match drain_deadline {
                Some(d) => match tokio::time::timeout_at(d, session).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
                None => {
                    tokio::select! {
                        r = session => r,
                        // Stop requested: loop around to arm the drain deadline.
                        _ = stop.changed() => continue,
                    }
                }
            };
            match result {
                Ok(()) => {}
                Err(e) => {
                    self.metrics.sink_error(&stream, &e);
                    if let LaneError::Refused(_) = e {
                        // Not transient, but fixable on the processor's side: retry slowly.
                        backoff = self.cfg.backoff_max;
                        tracing::error!(stream = %stream, retry_in = ?backoff, "{e}");
                    } else {
                        tracing::warn!(
                            stream = %stream,
                            unacked = lane.pending.len(),
                            retry_in = ?backoff,
                            "lane interrupted: {e}"
                        );
                    }
                    let sleep = tokio::time::sleep(jitter(backoff));
                    match drain_deadline {
                        Some(d) => {
                            if tokio::time::timeout_at(d, sleep).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            tokio::select! {
                                _ = sleep => {}
                                _ = stop.changed() => {}
                            }
                        }
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                }
            }
        }
        let left = lane.pending.len() as u64;
        if left > 0 || !lane.input_done {
            let rows: u64 = lane.pending.iter().map(|r| u64::from(r.batch.rows)).sum();
            tracing::warn!(
                stream = %stream,
                batches_in_flight = left,
                rows_in_flight = rows,
                "drain timeout: what is not acknowledged stays in the write-ahead log and ships at the next start"
            );
        }
        lane.summary.unshipped_batches = left;
        // Wake a writer waiting for space that will not come now.
        lane.log.close();
        self.metrics.set_inflight(&stream, &VecDeque::new());
        lane.summary
    }

    /// One connected session of a lane: handshake, resend what is unacked, then stream.
    async fn session(
        &self,
        lane: &mut Lane,
        input: &mut mpsc::Receiver<Result<WalRecord, WalError>>,
        resume: &watch::Sender<Option<Option<String>>>,
        backoff: &mut Duration,
    ) -> Result<(), LaneError> {
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                self.metrics.set_connected(false);
                return Err(e);
            }
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(
            &mut send,
            &Frame::Hello(Hello {
                agent: self.agent.clone(),
                stream: lane.stream.to_string(),
            }),
        )
        .await?;
        let handshake = Duration::from_secs(30);
        let welcome = match tokio::time::timeout(handshake, read_frame(&mut recv, 1 << 16)).await {
            Err(_) => return Err(LaneError::HandshakeTimeout(handshake)),
            Ok(r) => match r? {
                Some(Frame::Welcome(w)) => w,
                Some(Frame::Refused(r)) => return Err(LaneError::Refused(r.reason)),
                Some(other) => {
                    return Err(ProtocolError::UnexpectedFrame {
                        expected: "welcome",
                        got: other.kind(),
                    }
                    .into());
                }
                None => return Err(LaneError::Closed),
            },
        };
        *backoff = self.cfg.backoff_initial;
        self.metrics.sink_recovered(&lane.stream);
        if lane.base.is_none() {
            lane.base = Some(learn_base(&lane.log, &lane.stream, welcome.committed_seq).await?);
        }
        lane.resume_after(welcome.committed_seq, &self.metrics);
        // The first Welcome tells checkpointing sources where the lake left off.
        resume.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(welcome.checkpoint.clone());
                true
            } else {
                false
            }
        });
        tracing::debug!(
            stream = %lane.stream,
            committed_seq = welcome.committed_seq,
            resend = lane.pending.len(),
            "lane open"
        );

        // Acks are read by their own task so a blocked write never stalls them.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut recv, 1 << 20).await;
                let end = !matches!(r, Ok(Some(_)));
                if ack_tx.send(r).is_err() || end {
                    break;
                }
            }
        });
        let _abort_reader = AbortOnDrop(reader);

        for r in &lane.pending {
            self.send_batch(&mut send, &lane.stream, lane.seq(r.lsn), &r.batch)
                .await?;
        }
        self.metrics.set_inflight(&lane.stream, &lane.pending);

        let window = self.cfg.window;
        loop {
            if lane.input_done && lane.pending.is_empty() {
                let _ = send.finish();
                return Ok(());
            }
            tokio::select! {
                frame = ack_rx.recv() => {
                    let ack = match frame {
                        Some(Ok(Some(Frame::Ack(a)))) => a,
                        Some(Ok(Some(other))) => {
                            return Err(ProtocolError::UnexpectedFrame { expected: "ack", got: other.kind() }.into());
                        }
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(None)) | None => return Err(LaneError::Closed),
                    };
                    lane.on_ack(ack, &self.metrics)?;
                    self.metrics.set_inflight(&lane.stream, &lane.pending);
                }
                next = input.recv(), if !lane.input_done && lane.pending.len() < window => {
                    match next {
                        Some(Ok(r)) => {
                            let seq = lane.seq(r.lsn);
                            if seq <= lane.committed {
                                // Shipped by an earlier run whose ack was lost: the lake
                                // has it.
                                self.metrics.acked(&lane.stream, r.batch.rows);
                                lane.summary.acked_batches += 1;
                                lane.ack_log(r.lsn);
                                continue;
                            }
                            // Pending before it is sent: a send that fails leaves it to be
                            // sent again after the reconnect. (Taken from the log's reader
                            // and dropped on that error, it was skipped, and acks of later
                            // batches then removed it from the log.)
                            lane.pending.push_back(r);
                            self.metrics.set_inflight(&lane.stream, &lane.pending);
                            if let Some(r) = lane.pending.back() {
                                self.send_batch(&mut send, &lane.stream, seq, &r.batch).await?;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::error!(stream = %lane.stream, "write-ahead log damaged, the rest of the segment is skipped: {e}");
                            self.metrics.wal_corrupt(&lane.stream, 1);
                        }
                        None => lane.input_done = true,
                    }
                }
            }
        }
    }

    async fn send_batch(
        &self,
        send: &mut quinn::SendStream,
        stream: &str,
        seq: u64,
        b: &ReadyBatch,
    ) -> Result<(), LaneError> {
        let frame = Frame::Batch(BatchFrame {
            envelope: Envelope {
                agent: self.agent.clone(),
                stream: stream.to_string(),
                seq,
                schema_fingerprint: b.schema_fingerprint,
                created_at_us: b.created_at_us,
                rows: b.rows,
                checkpoint: b.checkpoint.clone(),
            },
            ipc: b.ipc.clone(),
        });
        debug_assert!(b.ipc.len() < DEFAULT_MAX_FRAME_BYTES);
        write_frame(send, &frame).await?;
        self.metrics.sent(stream, b.rows, b.ipc.len());
        Ok(())
    }

    /// Close the connection politely.
    pub async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close(quinn::VarInt::from_u32(0), b"agent stopping");
        }
        self.endpoint.wait_idle().await;
    }
}

/// Per-lane state that survives reconnects.
struct Lane {
    stream: Arc<str>,
    log: WalHandle,
    /// Sent (or to be resent) and not yet acknowledged, in lsn order.
    pending: VecDeque<WalRecord>,
    /// The log's sequence base, once known.
    base: Option<u64>,
    /// Highest sequence the processor has said it committed.
    committed: u64,
    input_done: bool,
    summary: LaneSummary,
}

impl Lane {
    /// The sequence a record ships with.
    fn seq(&self, lsn: u64) -> u64 {
        self.base.unwrap_or(0) + lsn
    }

    /// Everything up to `lsn` is in the lake: let the log delete it (off the async
    /// threads, as that may sync files).
    fn ack_log(&self, lsn: u64) {
        let log = self.log.clone();
        let stream = self.stream.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = log.ack(lsn) {
                tracing::warn!(%stream, "cannot record an acknowledgement in the write-ahead log: {e}");
            }
        });
    }

    /// Apply the processor's committed mark after a (re)connect.
    fn resume_after(&mut self, committed: u64, metrics: &Metrics) {
        self.committed = self.committed.max(committed);
        // Committed before the previous connection dropped, but the ack never arrived.
        let mut last = None;
        while let Some(r) = self.pending.front() {
            if self.seq(r.lsn) > committed {
                break;
            }
            metrics.acked(&self.stream, r.batch.rows);
            self.summary.acked_batches += 1;
            last = Some(r.lsn);
            self.pending.pop_front();
        }
        if let Some(lsn) = last {
            self.ack_log(lsn);
        }
    }

    fn on_ack(&mut self, ack: Ack, metrics: &Metrics) -> Result<(), LaneError> {
        let expected = self.pending.front().map(|r| self.seq(r.lsn));
        if expected != Some(ack.seq) {
            return Err(LaneError::AckOrder {
                expected,
                got: ack.seq,
            });
        }
        let Some(r) = self.pending.pop_front() else {
            return Err(LaneError::AckOrder {
                expected,
                got: ack.seq,
            });
        };
        self.committed = self.committed.max(ack.seq);
        self.ack_log(r.lsn);
        let b = &r.batch;
        match ack.status {
            AckStatus::Committed => {
                metrics.acked(&self.stream, b.rows);
                self.summary.acked_batches += 1;
            }
            AckStatus::Duplicate => {
                metrics.duplicate(&self.stream, b.rows);
                self.summary.acked_batches += 1;
            }
            AckStatus::Rejected => {
                // Resending cannot help: the batch leaves the log, counted as lost.
                tracing::error!(
                    stream = %self.stream,
                    seq = ack.seq,
                    rows = b.rows,
                    "processor rejected batch: {}",
                    ack.message
                );
                metrics.lost(&self.stream, "rejected", u64::from(b.rows));
                self.summary.rejected_batches += 1;
            }
        }
        Ok(())
    }
}

/// The log's sequence base: stored, or learnt from the processor's mark for a new log.
async fn learn_base(log: &WalHandle, stream: &str, committed: u64) -> Result<u64, LaneError> {
    let log = log.clone();
    let stream = stream.to_string();
    let base = tokio::task::spawn_blocking(move || match log.base() {
        None => log.set_base(committed, false),
        Some(base) if committed > base + log.last_lsn() => {
            // The lake holds sequences this log never produced: the log is older than the
            // lake (restored from a backup, or another agent ran with this id). Renumber
            // what is unacknowledged to follow the lake rather than have it taken for
            // duplicates.
            let rebased = committed - log.acked();
            tracing::warn!(
                %stream,
                committed,
                log_base = base,
                log_last = log.last_lsn(),
                "the lake is ahead of this write-ahead log; renumbering its unacknowledged batches"
            );
            log.set_base(rebased, true)
        }
        Some(base) => Ok(base),
    })
    .await
    .map_err(|_| WalError::Closed)??;
    Ok(base)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Up to 25% random jitter so many agents do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

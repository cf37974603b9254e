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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{
    AckStatus, BatchFrame, DEFAULT_MAX_FRAME_BYTES, Envelope, Frame, Hello, ProtocolError,
    read_frame, write_frame,
};
use tokio::sync::{Mutex, mpsc};

use super::config::QuicSinkConfig;
use super::lane::{Delivery, Failure, LaneState, Outcome, Pacing, ResumeTx, Session, Transport};
use crate::telemetry::Metrics;
use crate::wal::{WalError, WalRecord};

/// Why a QUIC session ended (the lane reconnects after each of these).
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// No connection could be made.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The processor's address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The connection dropped.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The processor sent something the protocol does not allow, or a frame was cut.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The processor did not say `Welcome` in time.
    #[error("processor did not answer the lane handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The processor ended the lane.
    #[error("processor closed the lane")]
    Closed,
    /// The processor refused the stream (not granted, over quota, ...).
    #[error("processor refused the stream: {0}")]
    Refused(String),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl Failure for QuicError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Connection(_) => "connection",
            Self::Protocol(_) => "protocol",
            Self::HandshakeTimeout(_) => "handshake_timeout",
            Self::Closed => "closed",
            Self::Refused(_) => "refused",
            Self::Wal(_) => "wal",
        }
    }

    fn retry_slowly(&self) -> bool {
        // Not transient, but fixable on the processor's side.
        matches!(self, Self::Refused(_))
    }
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
    async fn connection(&self) -> Result<quinn::Connection, QuicError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        self.metrics.set_connected(false);
        let connect_err = |reason: String| QuicError::Connect {
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

    /// Close the connection politely.
    pub async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close(quinn::VarInt::from_u32(0), b"agent stopping");
        }
        self.endpoint.wait_idle().await;
    }
}

impl Transport for QuicShipper {
    type Error = QuicError;
    type Session = QuicSession;
    const INTERRUPTED: &'static str = "lane interrupted";
    const OPEN_PROVES_PEER: bool = true;

    fn pacing(&self) -> Pacing {
        Pacing {
            window: self.cfg.window,
            backoff_initial: self.cfg.backoff_initial,
            backoff_max: self.cfg.backoff_max,
            drain_timeout: self.cfg.drain_timeout,
        }
    }

    async fn prepare(&self, lane: &mut LaneState, _resume: &ResumeTx) -> Result<(), QuicError> {
        // The base of a new log is learnt from the first Welcome.
        lane.destination = format!("processor {}", self.addr);
        Ok(())
    }

    /// Handshake: `Hello`, and the processor's `Welcome` with what it has committed.
    async fn open(
        &self,
        lane: &mut LaneState,
        resume: &ResumeTx,
    ) -> Result<QuicSession, QuicError> {
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
            Err(_) => return Err(QuicError::HandshakeTimeout(handshake)),
            Ok(r) => match r? {
                Some(Frame::Welcome(w)) => w,
                Some(Frame::Refused(r)) => return Err(QuicError::Refused(r.reason)),
                Some(other) => {
                    return Err(ProtocolError::UnexpectedFrame {
                        expected: "welcome",
                        got: other.kind(),
                    }
                    .into());
                }
                None => return Err(QuicError::Closed),
            },
        };
        if lane.base.is_none() {
            lane.base = Some(learn_base(lane, welcome.committed_seq).await?);
        }
        lane.settle_through(welcome.committed_seq, &self.metrics);
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
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut recv, 1 << 20).await;
                let end = !matches!(r, Ok(Some(_)));
                if ack_tx.send(r).is_err() || end {
                    break;
                }
            }
        });
        Ok(QuicSession {
            agent: self.agent.clone(),
            stream: lane.stream.to_string(),
            send,
            acks,
            _reader: AbortOnDrop(reader),
        })
    }
}

/// One lane's bidirectional stream: batches out, acks (after the Iceberg commit) back.
pub struct QuicSession {
    agent: String,
    stream: String,
    send: quinn::SendStream,
    acks: mpsc::UnboundedReceiver<Result<Option<Frame>, ProtocolError>>,
    _reader: AbortOnDrop,
}

impl Session for QuicSession {
    type Error = QuicError;

    async fn send(&mut self, seq: u64, r: &WalRecord) -> Result<(), QuicError> {
        let b = &r.batch;
        let frame = Frame::Batch(BatchFrame {
            envelope: Envelope {
                agent: self.agent.clone(),
                stream: self.stream.clone(),
                seq,
                schema_fingerprint: b.schema_fingerprint,
                created_at_us: b.created_at_us,
                rows: b.rows,
                checkpoint: b.checkpoint.clone(),
            },
            ipc: b.ipc.clone(),
        });
        debug_assert!(b.ipc.len() < DEFAULT_MAX_FRAME_BYTES);
        write_frame(&mut self.send, &frame).await?;
        Ok(())
    }

    async fn delivered(&mut self) -> Result<Delivery, QuicError> {
        let ack = match self.acks.recv().await {
            Some(Ok(Some(Frame::Ack(a)))) => a,
            Some(Ok(Some(other))) => {
                return Err(ProtocolError::UnexpectedFrame {
                    expected: "ack",
                    got: other.kind(),
                }
                .into());
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(None)) | None => return Err(QuicError::Closed),
        };
        let outcome = match ack.status {
            AckStatus::Committed => Outcome::Committed,
            AckStatus::Duplicate => Outcome::Duplicate,
            AckStatus::Rejected => Outcome::Rejected {
                reason: "rejected",
                message: format!("the processor rejected it: {}", ack.message),
            },
        };
        Ok(Delivery {
            seq: ack.seq,
            outcome,
        })
    }

    fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// The log's sequence base: stored, or learnt from the processor's mark for a new log.
async fn learn_base(lane: &LaneState, committed: u64) -> Result<u64, QuicError> {
    let log = lane.log.clone();
    let stream = lane.stream.clone();
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

//! The QUIC receiver: accepts agent connections (mutual TLS), and on each lane reads
//! `Hello`, answers `Welcome`, then turns `Batch` frames into landing requests and writes
//! the verdicts back as `Ack` frames, in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::{
    Ack, AckStatus, Frame, ProtocolError, Refused, Welcome, read_frame, read_frame_within,
    write_frame,
};
use tokio::sync::{mpsc, oneshot};

use crate::land::lander::{LandRequest, Lander, LanderError, Verdict};
use crate::receive::access::{Access, Denied};
use crate::receive::batch::validate;
use crate::receive::tls;
use crate::telemetry::metrics::Metrics;

/// Settings of the receiver.
#[derive(Clone)]
pub struct Receiver {
    /// Where accepted batches go; their verdicts become the agents' acks.
    pub lander: Lander,
    /// Where connections, lanes and refused frames are counted.
    pub metrics: Arc<Metrics>,
    /// Larger frames are refused before being read (`quic.max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Which streams each agent may write.
    pub access: Arc<Access>,
    /// The lander's namespace, to name tables in metrics.
    pub namespace: String,
    /// Each agent's share of connections, lanes and bytes in flight.
    pub quotas: Arc<crate::receive::quota::Quotas>,
    /// A frame whose header arrived must be whole within this.
    pub frame_timeout: Duration,
    /// Set when the processor stops: lanes take no further batch, and end once the
    /// verdicts of those taken are written.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Why a lane was closed.
#[derive(Debug, thiserror::Error)]
enum LaneError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("lane closed before its hello")]
    NoHello,
    #[error("no hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("batch for agent {got:?} on a lane opened by agent {lane:?}")]
    WrongAgent { lane: String, got: String },
    #[error("hello from agent {claimed:?} over a connection authenticated as {certified:?}")]
    IdentityMismatch { claimed: String, certified: String },
    #[error("lander unavailable: {0}")]
    Lander(LanderError),
    #[error("refused: {0}")]
    Denied(Denied),
    #[error("refused: {0}")]
    Quota(crate::receive::quota::Exceeded),
}

impl LaneError {
    fn reason(&self) -> &'static str {
        match self {
            LaneError::Protocol(e) => e.reason(),
            LaneError::NoHello | LaneError::HelloTimeout(_) => "no_hello",
            LaneError::WrongAgent { .. } => "wrong_agent",
            LaneError::IdentityMismatch { .. } => "identity_mismatch",
            LaneError::Lander(_) => "lander",
            LaneError::Denied(d) => d.reason(),
            LaneError::Quota(e) => e.reason(),
        }
    }
}

impl Receiver {
    /// Accept connections until the endpoint is closed.
    pub async fn serve(self, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let this = self.clone();
            tokio::spawn(async move { this.connection(incoming).await });
        }
    }

    async fn connection(self, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                let reason = match &e {
                    quinn::ConnectionError::TransportError(_)
                    | quinn::ConnectionError::ConnectionClosed(_) => "tls_handshake",
                    quinn::ConnectionError::TimedOut => "timeout",
                    _ => "other",
                };
                tracing::warn!(%remote, "refused connection: {e}");
                self.metrics.connection_rejected(reason);
                return;
            }
        };
        let Some(peer) = tls::peer_name(&conn) else {
            tracing::warn!(%remote, "refused connection: the client certificate has no common name");
            self.metrics.connection_rejected("no_identity");
            conn.close(
                quinn::VarInt::from_u32(3),
                b"certificate has no common name",
            );
            return;
        };
        let peer: Arc<str> = peer.into();
        let _slot = match self.quotas.connection(&peer) {
            Ok(slot) => slot,
            Err(e) => {
                tracing::warn!(%remote, "refused connection: {e}");
                self.metrics.connection_rejected(e.reason());
                conn.close(quinn::VarInt::from_u32(4), e.to_string().as_bytes());
                return;
            }
        };
        tracing::info!(%remote, agent = %peer, "agent connected");
        self.metrics.connection_opened();
        loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let this = self.clone();
                    let peer = peer.clone();
                    tokio::spawn(async move { this.lane(remote, peer, send, recv).await });
                }
                Err(e) => {
                    tracing::info!(%remote, "agent disconnected: {e}");
                    break;
                }
            }
        }
        self.metrics.connection_closed();
    }

    async fn lane(
        self,
        remote: SocketAddr,
        peer: Arc<str>,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let result = match self.quotas.lane(&peer) {
            Ok(_slot) => self.lane_inner(&peer, send, &mut recv).await,
            Err(e) => Err(LaneError::Quota(e)),
        };
        if let Err(e) = result {
            let reason = e.reason();
            if let LaneError::Denied(d) = &e {
                tracing::warn!(%remote, "refused lane: {d}");
            } else if reason != "io" {
                self.metrics.frame_rejected(reason);
                tracing::warn!(%remote, "closed lane: {e}");
            } else {
                tracing::debug!(%remote, "lane ended: {e}");
            }
            // Tell the peer we will not read further.
            let _ = recv.stop(quinn::VarInt::from_u32(1));
        }
    }

    async fn lane_inner(
        &self,
        peer: &Arc<str>,
        mut send: quinn::SendStream,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), LaneError> {
        let hello_timeout = Duration::from_secs(10);
        let hello = match tokio::time::timeout(hello_timeout, read_frame(recv, 1 << 16)).await {
            Err(_) => return Err(LaneError::HelloTimeout(hello_timeout)),
            Ok(r) => match r? {
                Some(Frame::Hello(h)) => h,
                Some(other) => {
                    return Err(ProtocolError::UnexpectedFrame {
                        expected: "hello",
                        got: other.kind(),
                    }
                    .into());
                }
                None => return Err(LaneError::NoHello),
            },
        };
        // A stopping processor takes no new lane: the agent backs off and comes back to
        // the next one. (The lanes it has deliver their acknowledgements meanwhile.)
        if *self.stopping.borrow() {
            write_frame(
                &mut send,
                &Frame::Refused(Refused {
                    stream: hello.stream.clone(),
                    reason: "the processor is stopping".into(),
                }),
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
        // An agent may only speak for the identity its certificate carries.
        if hello.agent != **peer {
            return Err(LaneError::IdentityMismatch {
                claimed: hello.agent,
                certified: peer.to_string(),
            });
        }
        // Authorised streams only; the agent is told why (it keeps retrying, slowly, so a
        // fixed [access] takes effect without restarting it).
        if let Err(denied) = self.access.check(&hello.agent, &hello.stream) {
            self.metrics.lane_refused(denied.reason());
            write_frame(
                &mut send,
                &Frame::Refused(Refused {
                    stream: hello.stream.clone(),
                    reason: denied.to_string(),
                }),
            )
            .await?;
            let _ = send.finish();
            return Err(LaneError::Denied(denied));
        }
        let (committed, checkpoint) = self
            .lander
            .committed_mark(&hello.agent, &hello.stream)
            .await
            .map_err(LaneError::Lander)?;
        write_frame(
            &mut send,
            &Frame::Welcome(Welcome {
                stream: hello.stream.clone(),
                committed_seq: committed,
                checkpoint,
            }),
        )
        .await?;

        // Verdicts are written in arrival order by their own task, so reading never waits
        // for a commit.
        let (verdict_tx, verdict_rx) = mpsc::unbounded_channel::<Pending>();
        let stream_name = hello.stream.clone();
        let writer = tokio::spawn(write_acks(send, stream_name, verdict_rx));

        let mut stopping = self.stopping.clone();
        let result = loop {
            let read = tokio::select! {
                biased;
                // A frame cut short here is not acknowledged: the agent sends it again.
                _ = stopping.wait_for(|s| *s) => {
                    let _ = recv.stop(quinn::VarInt::from_u32(0));
                    break Ok(());
                }
                read = read_frame_within(recv, self.max_frame_bytes, Some(self.frame_timeout)) => read,
            };
            let frame = match read {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(LaneError::from(e)),
            };
            let batch = match frame {
                Frame::Batch(b) => b,
                other => {
                    break Err(ProtocolError::UnexpectedFrame {
                        expected: "batch",
                        got: other.kind(),
                    }
                    .into());
                }
            };
            let env = batch.envelope;
            if env.agent != hello.agent || env.stream != hello.stream {
                break Err(LaneError::WrongAgent {
                    lane: format!("{}/{}", hello.agent, hello.stream),
                    got: format!("{}/{}", env.agent, env.stream),
                });
            }
            let seq = env.seq;
            // The agent's share of bytes in flight, held until the verdict is written.
            let permit = tokio::select! {
                biased;
                _ = stopping.wait_for(|s| *s) => break Ok(()),
                p = self.quotas.bytes(peer, batch.ipc.len()) => p,
            };
            let (reply, verdict) = oneshot::channel();
            match validate(&env, batch.ipc.clone()) {
                Ok(decoded) => {
                    let req = LandRequest {
                        envelope: env,
                        batch: decoded,
                        wire_bytes: batch.ipc.len(),
                        received_at_us: chrono::Utc::now().timestamp_micros(),
                        origin: None,
                        quarantine: true,
                        reply,
                    };
                    if self.lander.land(req).await.is_err() {
                        break Err(LaneError::Lander(LanderError::Stopped));
                    }
                }
                Err(e) => {
                    tracing::warn!(agent = %env.agent, stream = %env.stream, seq, "rejected batch: {e}");
                    self.metrics.frame_rejected(e.reason());
                    self.metrics.batch_rejected(
                        &format!("{}.{}", self.namespace, env.stream),
                        e.reason(),
                        env.rows as usize,
                    );
                    let _ = reply.send(Verdict::Rejected(e.to_string()));
                }
            }
            if verdict_tx.send((seq, verdict, permit)).is_err() {
                break Ok(());
            }
        };
        drop(verdict_tx);
        // On a clean end, let pending verdicts be written; on an error, stop now (the agent
        // resends whatever it did not get an ack for).
        if result.is_ok() {
            let _ = writer.await;
        } else {
            writer.abort();
        }
        result
    }
}

/// A batch handed on: its sequence number, its verdict to come, and its share of the
/// agent's bytes in flight.
type Pending = (
    u64,
    oneshot::Receiver<Verdict>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

async fn write_acks(
    mut send: quinn::SendStream,
    stream: String,
    mut verdicts: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some((seq, verdict, _permit)) = verdicts.recv().await {
        // A dropped reply means the lander could not take the batch (e.g. the catalog is
        // down): send no ack; closing the lane makes the agent resend it.
        let Ok(verdict) = verdict.await else {
            let _ = send.reset(quinn::VarInt::from_u32(2));
            return;
        };
        let (status, message) = match verdict {
            Verdict::Committed => (AckStatus::Committed, String::new()),
            Verdict::Duplicate => (AckStatus::Duplicate, String::new()),
            Verdict::Rejected(m) => (AckStatus::Rejected, m),
            Verdict::Quarantined(m) => (AckStatus::Quarantined, m),
        };
        let ack = Frame::Ack(Ack {
            stream: stream.clone(),
            seq,
            status,
            message,
        });
        if write_frame(&mut send, &ack).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

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
    const ACKS_ARE_COMMITS: bool = true;

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

        // Acks are read by their own task so a blocked write never stalls them. The queue
        // is bounded: a processor that floods acks is held back by QUIC flow control, not
        // buffered here without end.
        let (ack_tx, acks) = mpsc::channel(ACK_QUEUE);
        let reader = tokio::spawn(async move {
            loop {
                let r = read_frame(&mut recv, 1 << 20).await;
                let end = !matches!(r, Ok(Some(_)));
                if ack_tx.send(r).await.is_err() || end {
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

/// Acks read ahead of the lane: more wait in the QUIC stream.
const ACK_QUEUE: usize = 256;

/// One lane's bidirectional stream: batches out, acks (after the Iceberg commit) back.
pub struct QuicSession {
    agent: String,
    stream: String,
    send: quinn::SendStream,
    acks: mpsc::Receiver<Result<Option<Frame>, ProtocolError>>,
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
            AckStatus::Quarantined => Outcome::Quarantined {
                message: ack.message,
            },
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

#[cfg(test)]
mod tests {
    //! The QUIC shipper against a processor stand-in on loopback that speaks the protocol
    //! over real mutual TLS: it lands a batch when it reads it, then acks it, unless told to
    //! drop the connection first or refuse the stream.

    use std::sync::Mutex;

    use bytes::Bytes;
    use rcgen::{CertificateParams, DnType, IsCa, KeyPair};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use sluice_protocol::{Ack, Refused, Welcome};
    use tokio::sync::watch;

    use super::*;
    use crate::pipeline::ReadyBatch;
    use crate::sink::lane::{self, LaneLog, LaneSummary};
    use crate::wal::{self, WalMetricsSink, WalOptions, WhenFull};

    #[derive(Default)]
    struct Script {
        /// What the processor says it has committed, and with which checkpoint.
        committed: u64,
        checkpoint: Option<String>,
        /// Batches landed, each once, in order.
        landed: Vec<u64>,
        /// Lanes opened (each `Hello`).
        hellos: usize,
        /// Refuse the first lane.
        refuse_first: bool,
        /// Drop the connection after landing this many batches of the first lane, acks
        /// unsent.
        drop_after: Option<usize>,
    }

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let ca_key = KeyPair::generate().expect("key");
            let mut ca = CertificateParams::new(Vec::new()).expect("params");
            ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca.distinguished_name.push(DnType::CommonName, "test ca");
            let ca_cert = ca.self_signed(&ca_key).expect("ca");
            let issuer = rcgen::Issuer::new(ca, ca_key);
            std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write");
            for (name, san) in [("server", "localhost"), ("agent", "edge-01")] {
                let key = KeyPair::generate().expect("key");
                let mut params = CertificateParams::new(vec![san.to_string()]).expect("params");
                params.distinguished_name.push(DnType::CommonName, san);
                let cert = params.signed_by(&key, &issuer).expect("cert");
                std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).expect("write");
                std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())
                    .expect("write");
            }
            Self { dir }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }
    }

    /// A processor stand-in listening on loopback.
    fn processor(pki: &Pki, script: Arc<Mutex<Script>>) -> SocketAddr {
        let ca = CertificateDer::from_pem_file(pki.path("ca.pem")).expect("ca");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .expect("verifier");
        let chain = vec![CertificateDer::from_pem_file(pki.path("server.pem")).expect("cert")];
        let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).expect("key");
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server config");
        tls.alpn_protocols = vec![sluice_protocol::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic");
        let endpoint = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("endpoint");
        let addr = endpoint.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let script = script.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve_lane(conn.clone(), send, recv, script.clone()));
                    }
                });
            }
        });
        addr
    }

    async fn serve_lane(
        conn: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        script: Arc<Mutex<Script>>,
    ) {
        let Ok(Some(Frame::Hello(hello))) = read_frame(&mut recv, 1 << 16).await else {
            return;
        };
        let answer = {
            let mut s = script.lock().unwrap();
            s.hellos += 1;
            if s.refuse_first && s.hellos == 1 {
                Frame::Refused(Refused {
                    stream: hello.stream.clone(),
                    reason: "not granted".into(),
                })
            } else {
                Frame::Welcome(Welcome {
                    stream: hello.stream.clone(),
                    committed_seq: s.committed,
                    checkpoint: s.checkpoint.clone(),
                })
            }
        };
        let refused = matches!(answer, Frame::Refused(_));
        write_frame(&mut send, &answer).await.expect("answer");
        if refused {
            let _ = send.finish();
            return;
        }
        let mut read = 0;
        while let Ok(Some(Frame::Batch(b))) = read_frame(&mut recv, 1 << 24).await {
            read += 1;
            let seq = b.envelope.seq;
            let status = {
                let mut s = script.lock().unwrap();
                if seq > s.committed {
                    s.committed = seq;
                    s.landed.push(seq);
                    s.checkpoint = b.envelope.checkpoint.clone();
                    AckStatus::Committed
                } else {
                    AckStatus::Duplicate
                }
            };
            let drop_now = {
                let mut s = script.lock().unwrap();
                if s.drop_after == Some(read) {
                    s.drop_after = None;
                    true
                } else {
                    false
                }
            };
            if drop_now {
                conn.close(quinn::VarInt::from_u32(1), b"gone");
                return;
            }
            let ack = Frame::Ack(Ack {
                stream: hello.stream.clone(),
                seq,
                status,
                message: String::new(),
            });
            if write_frame(&mut send, &ack).await.is_err() {
                return;
            }
        }
    }

    fn config(pki: &Pki, addr: SocketAddr) -> QuicSinkConfig {
        let text = format!(
            "endpoint = \"localhost:{}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\nwindow = 3\nbackoff_initial = \"5ms\"\nbackoff_max = \"200ms\"\ndrain_timeout = \"5s\"\n",
            addr.port(),
            pki.path("ca.pem"),
            pki.path("agent.pem"),
            pki.path("agent.key"),
        );
        toml::from_str(&text).expect("sink config")
    }

    /// Ship `n` batches (checkpoints `c1`..) of a new log of stream `cpu` to `addr`.
    async fn ship(
        pki: &Pki,
        addr: SocketAddr,
        n: u32,
    ) -> (LaneSummary, Option<Option<String>>, Arc<Metrics>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = config(pki, addr);
        let client =
            super::super::tls::client_config(&cfg.ca, &cfg.cert, &cfg.key, cfg.idle_timeout)
                .expect("client tls");
        let metrics = Arc::new(Metrics::default());
        let shipper = Arc::new(
            QuicShipper::new("edge-01".into(), cfg, client, metrics.clone()).expect("shipper"),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = WalOptions {
            segment_size: 1 << 20,
            max_size: 1 << 30,
            when_full: WhenFull::Block,
        };
        let (writer, handle, reader, _) =
            wal::open(dir.path(), opts, WalMetricsSink::default()).expect("log");
        for i in 1..=n {
            let batch = ReadyBatch {
                ipc: Bytes::from(vec![1; 64]),
                rows: 1,
                schema_fingerprint: 9,
                created_at_us: 0,
                checkpoint: Some(format!("c{i}")),
            };
            writer.append(batch).await.expect("append");
        }
        drop(writer);
        let log = LaneLog {
            records: reader.spawn(2).expect("reader"),
            handle,
        };
        let (resume_tx, resume) = watch::channel(None);
        let (committed, _) = watch::channel(None);
        let (_stop_tx, stop) = watch::channel(false);
        let summary = tokio::time::timeout(
            Duration::from_secs(30),
            lane::run(
                shipper.clone(),
                metrics.clone(),
                "cpu".into(),
                log,
                lane::Feedback {
                    resume: resume_tx,
                    committed,
                },
                stop,
            ),
        )
        .await
        .expect("the lane ends");
        shipper.close().await;
        let resumed = resume.borrow().clone();
        (summary, resumed, metrics)
    }

    #[tokio::test]
    async fn a_new_log_numbers_on_from_the_processors_mark_and_resumes_sources_from_its_checkpoint()
    {
        let pki = Pki::new();
        let script = Arc::new(Mutex::new(Script {
            committed: 500,
            checkpoint: Some("from-the-lake".into()),
            ..Script::default()
        }));
        let addr = processor(&pki, script.clone());
        let (summary, resumed, _) = ship(&pki, addr, 5).await;
        assert_eq!(resumed, Some(Some("from-the-lake".into())));
        assert_eq!(summary.acked_batches, 5);
        let s = script.lock().unwrap();
        assert_eq!(s.landed, vec![501, 502, 503, 504, 505]);
        assert_eq!(s.checkpoint.as_deref(), Some("c5"));
    }

    #[tokio::test]
    async fn a_dropped_connection_reconnects_and_what_was_committed_is_not_landed_again() {
        let pki = Pki::new();
        let script = Arc::new(Mutex::new(Script {
            drop_after: Some(2),
            ..Script::default()
        }));
        let addr = processor(&pki, script.clone());
        let (summary, _, metrics) = ship(&pki, addr, 6).await;
        assert_eq!(summary.acked_batches, 6);
        let s = script.lock().unwrap();
        assert_eq!(
            s.landed,
            vec![1, 2, 3, 4, 5, 6],
            "each batch landed once, in order"
        );
        assert_eq!(s.hellos, 2, "one reconnect");
        let text = sluice_ops::ApiMetrics::render(&*metrics);
        assert!(
            // Which reason depends on where the loss is noticed: reading an ack or sending.
            text.lines().any(
                |l| l.starts_with(r#"sluice_agent_sink_errors_total{stream="cpu","#)
                    && l.ends_with(" 1")
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_refused_stream_is_counted_and_retried_until_the_processor_takes_it() {
        let pki = Pki::new();
        let script = Arc::new(Mutex::new(Script {
            refuse_first: true,
            ..Script::default()
        }));
        let addr = processor(&pki, script.clone());
        let (summary, _, metrics) = ship(&pki, addr, 2).await;
        assert_eq!(summary.acked_batches, 2);
        assert_eq!(script.lock().unwrap().landed, vec![1, 2]);
        let text = sluice_ops::ApiMetrics::render(&*metrics);
        assert!(
            text.lines()
                .any(|l| l == r#"sluice_agent_sink_errors_total{stream="cpu",reason="refused"} 1"#),
            "{text}"
        );
    }
}

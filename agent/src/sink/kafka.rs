//! The Kafka sink: each stream's write-ahead log is produced to its topic, one message per
//! batch (Arrow IPC value, envelope in headers, the agent id as key), and a batch leaves the
//! log once the brokers have it (`acks=all`).
//!
//! Order is what makes the processor's deduplication exact: it drops a batch whose sequence
//! is not above the highest it has seen for the agent and stream. So the producer is
//! idempotent (no reordering or duplicates on retry) with the gapless guarantee (a batch
//! that fails for good stops the producer rather than let a later one through), messages
//! never time out, and after any failure the lane starts a new producer and resends, in
//! order, everything not yet acknowledged. What a crash makes it send twice arrives later
//! in the partition than the first copy, with the same sequence, and is dropped.
//!
//! There is no handshake with the processor on this path, so a new log numbers its batches
//! from the wall clock (microseconds at its creation): sequences keep increasing even if
//! the agent loses its data directory.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext};
use sluice_protocol::Envelope;

use super::config::KafkaSinkConfig;
use super::lane::{Delivery, Failure, LaneState, Outcome, Pacing, ResumeTx, Session, Transport};
use super::tls::BatchSigner;
use crate::wal::{WalError, WalRecord};

/// librdkafka producer properties the sink sets itself: exactly-once landing depends on
/// them.
pub const RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "compression.type",
    "compression.codec",
    "message.max.bytes",
];

/// Produces the agent's streams to Kafka.
pub struct KafkaShipper {
    agent: String,
    cfg: KafkaSinkConfig,
    /// Signs each batch: the processor takes only batches its CA's agents signed.
    signer: Arc<BatchSigner>,
}

/// Why a producer session ended (the lane starts a new one).
#[derive(Debug, thiserror::Error)]
pub enum KafkaSinkError {
    /// librdkafka refused the producer settings.
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
    /// A message was not delivered (the gapless guarantee stops the producer).
    #[error("delivery failed: {0}")]
    Delivery(KafkaError),
    /// The producer was dropped under a delivery.
    #[error("the producer went away")]
    Canceled,
    /// The batch could not be signed.
    #[error("cannot sign the batch: {0}")]
    Sign(rustls::Error),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl Failure for KafkaSinkError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Create(_) => "producer",
            Self::Delivery(_) => "delivery",
            Self::Canceled => "canceled",
            Self::Sign(_) => "sign",
            Self::Wal(_) => "wal",
        }
    }
}

impl KafkaShipper {
    /// Check the producer settings (no connection is made yet).
    pub fn new(agent: String, cfg: KafkaSinkConfig) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let signer = BatchSigner::load(&cfg.cert, &cfg.key)
            .context("sink.cert and sink.key sign the batches produced to Kafka")?;
        let this = Self {
            agent,
            cfg,
            signer: Arc::new(signer),
        };
        // Fail at start on an option librdkafka does not take, not on the first batch.
        drop(this.producer().context("invalid Kafka producer settings")?);
        Ok(this)
    }

    fn producer(&self) -> Result<FutureProducer<Logged>, KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.cfg.brokers)
            .set("client.id", format!("sluice-agent-{}", self.agent))
            .set("enable.idempotence", "true")
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0")
            .set("compression.type", self.cfg.compression.as_str())
            .set(
                "message.max.bytes",
                self.cfg.max_message_bytes.as_u64().to_string(),
            )
            .set("linger.ms", "5");
        for (k, v) in &self.cfg.options {
            c.set(k, v);
        }
        c.create_with_context(Logged)
    }

    /// The topic a stream's batches go to.
    pub fn topic(&self, stream: &str) -> String {
        self.cfg.topic.replace("{stream}", stream)
    }
}

impl Transport for KafkaShipper {
    type Error = KafkaSinkError;
    type Session = KafkaSession;
    const INTERRUPTED: &'static str = "Kafka producer restarting";
    const OPEN_PROVES_PEER: bool = false;
    const ACKS_ARE_COMMITS: bool = false;

    fn pacing(&self) -> Pacing {
        Pacing {
            window: self.cfg.window,
            backoff_initial: self.cfg.backoff_initial,
            backoff_max: self.cfg.backoff_max,
            drain_timeout: self.cfg.drain_timeout,
        }
    }

    async fn prepare(&self, lane: &mut LaneState, resume: &ResumeTx) -> Result<(), KafkaSinkError> {
        lane.destination = format!("topic {}", self.topic(&lane.stream));
        // The log's checkpoint, if any, is where sources resume; a new log starts them
        // afresh (the lake is not asked on this path).
        resume.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(None);
                true
            } else {
                false
            }
        });
        lane.base = Some(sequence_base(lane).await?);
        Ok(())
    }

    async fn open(
        &self,
        lane: &mut LaneState,
        _resume: &ResumeTx,
    ) -> Result<KafkaSession, KafkaSinkError> {
        Ok(KafkaSession {
            producer: Dropped(Some(self.producer().map_err(KafkaSinkError::Create)?)),
            agent: self.agent.clone(),
            stream: lane.stream.to_string(),
            topic: self.topic(&lane.stream),
            signer: self.signer.clone(),
            deliveries: FuturesOrdered::new(),
            stopped: None,
        })
    }
}

/// A batch's sequence and fate, once known: the producer's delivery report, or its refusal
/// when the batch was handed over.
type Report = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Fate)> + Send>>;

/// What became of a batch handed to the producer.
enum Fate {
    Delivered,
    /// Refused when handed over (too large for `message.max.bytes`): never queued, so the
    /// producer goes on.
    RefusedAtOnce,
    /// Refused by the delivery report.
    Refused(KafkaError),
    /// The producer went away before reporting.
    Canceled,
}

/// The fate a delivery report tells.
async fn fate(delivery: DeliveryFuture) -> Fate {
    match delivery.await {
        Ok(Ok(_)) => Fate::Delivered,
        Ok(Err((e, _))) => Fate::Refused(e),
        Err(_) => Fate::Canceled,
    }
}

/// One producer's life.
pub struct KafkaSession {
    producer: Dropped,
    agent: String,
    stream: String,
    topic: String,
    signer: Arc<BatchSigner>,
    /// Per batch handed over, in order: its sequence and what became of it.
    deliveries: FuturesOrdered<Report>,
    /// Set when a refused batch stopped the producer (the gapless guarantee).
    stopped: Option<KafkaSinkError>,
}

impl Session for KafkaSession {
    type Error = KafkaSinkError;

    /// Hand one batch to the producer, signed.
    async fn send(&mut self, seq: u64, r: &WalRecord) -> Result<(), KafkaSinkError> {
        let Some(producer) = self.producer.0.as_ref() else {
            return Err(KafkaSinkError::Canceled);
        };
        let b = &r.batch;
        let envelope = Envelope {
            agent: self.agent.clone(),
            stream: self.stream.clone(),
            seq,
            schema_fingerprint: b.schema_fingerprint,
            created_at_us: b.created_at_us,
            rows: b.rows,
            checkpoint: b.checkpoint.clone(),
        };
        let signature = self
            .signer
            .sign(&envelope, &b.ipc)
            .map_err(KafkaSinkError::Sign)?;
        let mut headers = OwnedHeaders::new();
        for (key, value) in envelope
            .to_kafka_headers()
            .into_iter()
            .chain(signature.to_kafka_headers())
        {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(&self.topic)
            .key(self.agent.as_bytes())
            .payload(b.ipc.as_ref())
            .headers(headers);
        let report: Report = match producer.send_result(record) {
            Ok(delivery) => Box::pin(async move { (seq, fate(delivery).await) }),
            // librdkafka checks the size before queueing: this batch will never go, and
            // retrying the session would refuse it again for ever.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                Box::pin(std::future::ready((seq, Fate::RefusedAtOnce)))
            }
            Err((e, _)) => return Err(KafkaSinkError::Delivery(e)),
        };
        self.deliveries.push_back(report);
        Ok(())
    }

    async fn delivered(&mut self) -> Result<Delivery, KafkaSinkError> {
        if let Some(e) = self.stopped.take() {
            return Err(e);
        }
        let Some((seq, fate)) = self.deliveries.next().await else {
            // Nothing in flight: nothing to report until something is sent.
            return std::future::pending().await;
        };
        let too_large = |topic: &str| Outcome::Rejected {
            reason: "too_large",
            message: format!(
                "the brokers of topic {topic} refuse a batch this large (lower batch.max_bytes or raise sink.max_message_bytes and the topic's max.message.bytes)"
            ),
        };
        match fate {
            Fate::Delivered => Ok(Delivery {
                seq,
                outcome: Outcome::Committed,
            }),
            Fate::RefusedAtOnce => Ok(Delivery {
                seq,
                outcome: too_large(&self.topic),
            }),
            Fate::Refused(
                e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            ) => {
                // The gapless guarantee has stopped this producer: the next call says so.
                self.stopped = Some(KafkaSinkError::Delivery(e));
                Ok(Delivery {
                    seq,
                    outcome: too_large(&self.topic),
                })
            }
            Fate::Refused(e) => Err(KafkaSinkError::Delivery(e)),
            Fate::Canceled => Err(KafkaSinkError::Canceled),
        }
    }

    fn finish(self) {}
}

/// Routes librdkafka's log lines to `tracing`.
struct Logged;

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // The gapless guarantee is flagged experimental on every producer start; the sink
        // depends on it knowingly (see the module docs).
        if fac == "CONFWARN" && message.contains("enable.gapless.guarantee") {
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac}: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Mostly a broker away: librdkafka reconnects by itself, and the log keeps the
        // batches meanwhile.
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
    }
}

/// The log's sequence base: stored, or the wall clock in microseconds for a new log.
async fn sequence_base(lane: &LaneState) -> Result<u64, WalError> {
    let log = lane.log.clone();
    tokio::task::spawn_blocking(move || match log.base() {
        Some(b) => Ok(b),
        None => {
            let now = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
            log.set_base(now, false)
        }
    })
    .await
    .map_err(|_| WalError::Closed)?
}

/// Drops a producer off the async threads: dropping one purges what it still holds and
/// waits (up to half a second) for librdkafka to let go of it.
struct Dropped(Option<FutureProducer<Logged>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rcgen::{CertificateParams, KeyPair};

    use super::*;
    use crate::pipeline::ReadyBatch;

    #[tokio::test]
    async fn a_batch_too_large_for_the_producer_is_refused_for_good_and_the_session_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["edge-01".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (cert_path, key_path) = (dir.path().join("a.pem"), dir.path().join("a.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        // No broker: librdkafka refuses an oversized message before queueing it.
        let producer: FutureProducer<Logged> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("message.max.bytes", "1000")
            .create_with_context(Logged)
            .expect("producer");
        let mut session = KafkaSession {
            producer: Dropped(Some(producer)),
            agent: "edge-01".into(),
            stream: "s".into(),
            topic: "t".into(),
            signer: Arc::new(BatchSigner::load(&cert_path, &key_path).expect("signer")),
            deliveries: FuturesOrdered::new(),
            stopped: None,
        };
        let big = WalRecord {
            lsn: 1,
            batch: ReadyBatch {
                ipc: Bytes::from(vec![0u8; 10_000]),
                rows: 1,
                schema_fingerprint: 0,
                created_at_us: 0,
                checkpoint: None,
            },
        };
        session
            .send(7, &big)
            .await
            .expect("handed over: refused for good, not a session error");
        let d = session.delivered().await.expect("its fate");
        assert_eq!(d.seq, 7);
        assert!(
            matches!(
                d.outcome,
                Outcome::Rejected {
                    reason: "too_large",
                    ..
                }
            ),
            "{:?}",
            d.outcome
        );
        assert!(session.stopped.is_none(), "the producer goes on");
    }
}

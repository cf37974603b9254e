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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext};
use sluice_protocol::Envelope;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::KafkaSinkConfig;
use crate::metrics::Metrics;
use crate::shipper::{LaneLog, LaneSummary};
use crate::wal::{WalError, WalHandle, WalRecord};

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
    metrics: Arc<Metrics>,
    /// Signs each batch: the processor takes only batches its CA's agents signed.
    signer: crate::tls::BatchSigner,
}

/// Why a producer session ended (the lane starts a new one).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
    #[error("delivery failed: {0}")]
    Delivery(KafkaError),
    #[error("the producer went away")]
    Canceled,
    #[error("cannot sign the batch: {0}")]
    Sign(rustls::Error),
    #[error(transparent)]
    Wal(#[from] WalError),
}

impl KafkaShipper {
    /// Check the producer settings (no connection is made yet).
    pub fn new(agent: String, cfg: KafkaSinkConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let signer = crate::tls::BatchSigner::load(&cfg.cert, &cfg.key)
            .context("sink.cert and sink.key sign the batches produced to Kafka")?;
        let this = Self {
            agent,
            cfg,
            metrics,
            signer,
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

    /// Produce everything the log yields. Returns once the log is closed and every batch is
    /// acknowledged by the brokers, or once `stop` fires and the drain timeout has passed.
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
        let mut lane = Lane {
            stream: stream.clone(),
            topic: self.topic(&stream),
            log: handle,
            pending: VecDeque::new(),
            base: 0,
            input_done: false,
            summary: LaneSummary::default(),
        };
        match sequence_base(&lane.log).await {
            Ok(b) => lane.base = b,
            Err(e) => {
                tracing::error!(%stream, "cannot number the write-ahead log's batches: {e}");
                lane.log.close();
                return lane.summary;
            }
        }
        let mut backoff = self.cfg.backoff_initial;
        let mut drain_deadline: Option<Instant> = None;
        loop {
            if lane.input_done && lane.pending.is_empty() {
                break;
            }
            if drain_deadline.is_none() && *stop.borrow() {
                drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
            }
            let session = self.session(&mut lane, &mut input, &mut backoff);
            let result = match drain_deadline {
                Some(d) => match tokio::time::timeout_at(d, session).await {
                    Ok(r) => r,
                    Err(_) => break,
                },
                None => tokio::select! {
                    r = session => r,
                    _ = stop.changed() => continue,
                },
            };
            if let Err(e) = result {
                self.metrics.sink_error(&stream, &e);
                tracing::warn!(
                    stream = %stream,
                    topic = %lane.topic,
                    unacked = lane.pending.len(),
                    retry_in = ?backoff,
                    "Kafka producer restarting: {e}"
                );
                let sleep = tokio::time::sleep(backoff);
                match drain_deadline {
                    Some(d) => {
                        if tokio::time::timeout_at(d, sleep).await.is_err() {
                            break;
                        }
                    }
                    None => tokio::select! {
                        _ = sleep => {}
                        _ = stop.changed() => {}
                    },
                }
                backoff = (backoff * 2).min(self.cfg.backoff_max);
            }
        }
        let left = lane.pending.len() as u64;
        if left > 0 || !lane.input_done {
            let rows: u64 = lane.pending.iter().map(|r| u64::from(r.batch.rows)).sum();
            tracing::warn!(
                stream = %stream,
                batches_in_flight = left,
                rows_in_flight = rows,
                "drain timeout: what the brokers have not acknowledged stays in the write-ahead log and is produced at the next start"
            );
        }
        lane.summary.unshipped_batches = left;
        lane.log.close();
        self.metrics.set_inflight(&stream, &VecDeque::new());
        lane.summary
    }

    /// One producer's life: resend what is unacknowledged, then produce from the log.
    async fn session(
        &self,
        lane: &mut Lane,
        input: &mut mpsc::Receiver<Result<WalRecord, WalError>>,
        backoff: &mut Duration,
    ) -> Result<(), SessionError> {
        let producer = Dropped(Some(self.producer().map_err(SessionError::Create)?));
        let Some(p) = producer.0.as_ref() else {
            return Err(SessionError::Canceled);
        };
        let mut deliveries: FuturesOrdered<DeliveryFuture> = FuturesOrdered::new();
        for r in &lane.pending {
            deliveries.push_back(self.produce(p, lane, r)?);
        }
        self.metrics.set_inflight(&lane.stream, &lane.pending);
        loop {
            if lane.input_done && lane.pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                Some(delivered) = deliveries.next(), if !deliveries.is_empty() => {
                    let Some(r) = lane.pending.pop_front() else {
                        return Err(SessionError::Canceled);
                    };
                    match delivered {
                        Ok(Ok(_)) => {
                            *backoff = self.cfg.backoff_initial;
                            self.metrics.acked(&lane.stream, r.batch.rows);
                            lane.summary.acked_batches += 1;
                            lane.ack_log(r.lsn);
                        }
                        Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))) => {
                            // Resending cannot help: the batch leaves the log, counted as lost.
                            tracing::error!(
                                stream = %lane.stream,
                                topic = %lane.topic,
                                rows = r.batch.rows,
                                bytes = r.batch.ipc.len(),
                                "the brokers refuse a batch this large (lower batch.max_bytes or raise sink.max_message_bytes and the topic's max.message.bytes)"
                            );
                            self.metrics.lost(&lane.stream, "too_large", u64::from(r.batch.rows));
                            lane.summary.rejected_batches += 1;
                            lane.ack_log(r.lsn);
                            // The gapless guarantee has stopped this producer.
                            return Err(SessionError::Delivery(KafkaError::MessageProduction(
                                RDKafkaErrorCode::MessageSizeTooLarge,
                            )));
                        }
                        Ok(Err((e, _))) => {
                            lane.pending.push_front(r);
                            return Err(SessionError::Delivery(e));
                        }
                        Err(_) => {
                            lane.pending.push_front(r);
                            return Err(SessionError::Canceled);
                        }
                    }
                    self.metrics.set_inflight(&lane.stream, &lane.pending);
                }
                next = input.recv(), if !lane.input_done && lane.pending.len() < self.cfg.window => {
                    match next {
                        Some(Ok(r)) => {
                            // Pending first: if the producer refuses it, the next session
                            // sends it again.
                            let produced = self.produce(p, lane, &r);
                            lane.pending.push_back(r);
                            deliveries.push_back(produced?);
                            self.metrics.set_inflight(&lane.stream, &lane.pending);
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

    /// Hand one batch to the producer.
    fn produce(
        &self,
        producer: &FutureProducer<Logged>,
        lane: &Lane,
        r: &WalRecord,
    ) -> Result<DeliveryFuture, SessionError> {
        let b = &r.batch;
        let envelope = Envelope {
            agent: self.agent.clone(),
            stream: lane.stream.to_string(),
            seq: lane.base + r.lsn,
            schema_fingerprint: b.schema_fingerprint,
            created_at_us: b.created_at_us,
            rows: b.rows,
            checkpoint: b.checkpoint.clone(),
        };
        let signature = self
            .signer
            .sign(&envelope, &b.ipc)
            .map_err(SessionError::Sign)?;
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
        let record = FutureRecord::to(&lane.topic)
            .key(self.agent.as_bytes())
            .payload(b.ipc.as_ref())
            .headers(headers);
        let delivery = producer
            .send_result(record)
            .map_err(|(e, _)| SessionError::Delivery(e))?;
        self.metrics.sent(&lane.stream, b.rows, b.ipc.len());
        Ok(delivery)
    }
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

/// Per-lane state that survives producer restarts.
struct Lane {
    stream: Arc<str>,
    topic: String,
    log: WalHandle,
    /// Produced (or to be produced again) and not yet acknowledged, in lsn order.
    pending: VecDeque<WalRecord>,
    base: u64,
    input_done: bool,
    summary: LaneSummary,
}

impl Lane {
    /// The brokers have everything up to `lsn`: let the log delete it (off the async
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
}

/// The log's sequence base: stored, or the wall clock in microseconds for a new log.
async fn sequence_base(log: &WalHandle) -> Result<u64, WalError> {
    let log = log.clone();
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

//! `[sink]`: where the agent ships its batches.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use sluice_ops::config::Invalid;

/// `[sink]`: where batches go.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkConfig {
    /// `type = "quic"`: straight to a processor, over QUIC with mutual TLS.
    Quic(QuicSinkConfig),
    /// `type = "kafka"`: to Kafka topics the processor consumes.
    Kafka(KafkaSinkConfig),
}

/// `[sink] type = "kafka"`: produce batches to Kafka (or any Kafka-compatible broker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// This agent's certificate (PEM), from the processor's CA: sent with each batch
    /// (`sluice-cert`), whose signature the processor checks against its CA.
    pub cert: PathBuf,
    /// The certificate's private key (PEM): signs each batch (ECDSA P-256/P-384, Ed25519 or
    /// RSA keys).
    pub key: PathBuf,
    /// Topic of a stream's batches; `{stream}` is replaced by the stream name. Without
    /// `{stream}` every stream goes to one topic. Must give valid topic names
    /// (`[A-Za-z0-9._-]`, ≤ 249).
    #[serde(default = "default_topic")]
    pub topic: String,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`. Compress (`lz4`, or `zstd` for the fewest
    /// bytes) when the link to the brokers is slow or metered; on a fast link it can cost
    /// more than it saves, as some brokers decompress what they store (tansu with SQLite
    /// storage lands a third as many rows/s with `lz4`, see PERFORMANCE.md).
    #[serde(default)]
    pub compression: KafkaCompression,
    /// The largest message the brokers take (their `message.max.bytes`, the topic's
    /// `max.message.bytes`; ≥ 64 KiB); batches are cut at 90 % of it (or at
    /// `batch.max_bytes`, if smaller). A batch the brokers still refuse as too large is
    /// dropped and counted in `sluice_agent_lost_rows_total{reason="too_large"}`.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: ByteSize,
    /// Batches produced and not yet acknowledged, per stream.
    #[serde(default = "default_kafka_window")]
    pub window: usize,
    /// Delay before a restarted producer; doubles after each failure, up to `backoff_max`.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest delay before a restarted producer.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// On stop, keep delivering for this long; the rest stays in the write-ahead log.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The processor's API, `http://host:port` (its `[api] listen`): asked every
    /// `committed_interval` where the lake stands for this agent's streams
    /// (`/api/committed`), so that connectors which release upstream data when the lake
    /// holds it (`committed`: a replication slot, message acknowledgements) are told behind
    /// Kafka too. Without it they are never told, since the brokers' acknowledgements say
    /// nothing of the lake.
    #[serde(default)]
    pub committed_api: Option<String>,
    /// A file holding the bearer token for `committed_api` (a token with the `committed`
    /// role, from `sluice-processor token --role committed`).
    #[serde(default)]
    pub committed_token_file: Option<PathBuf>,
    /// How often `committed_api` is asked, per stream.
    #[serde(default = "default_committed_interval", with = "humantime_serde")]
    pub committed_interval: Duration,
    /// Extra librdkafka producer properties (`security.protocol`, `sasl.*`, `linger.ms`,
    /// ...). The ones the guarantees depend on (`enable.idempotence`, `acks`,
    /// `message.timeout.ms`, `compression.type`, `message.max.bytes`, ...) are refused.
    #[serde(default)]
    pub options: sluice_ops::Options,
}

/// Kafka message compression.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaCompression {
    /// The default, as in Kafka's producer and Vector: a broker may decompress what it
    /// stores (tansu does), which can cost it more than the bytes saved on a fast link.
    #[default]
    None,
    /// Small output, but the slowest of the four to compress.
    Gzip,
    /// Fast, and the least saving of the four.
    Snappy,
    /// Fast, with a fair saving: for a slow link to the brokers.
    Lz4,
    /// The fewest bytes, for more CPU: for a metered link.
    Zstd,
}

impl KafkaCompression {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

fn default_topic() -> String {
    "sluice.{stream}".into()
}
fn default_max_message() -> ByteSize {
    ByteSize::mib(1)
}
fn default_kafka_window() -> usize {
    64
}

/// `[sink] type = "quic"`: ship to a processor over QUIC with mutual TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicSinkConfig {
    /// `host:port` of the processor.
    pub endpoint: String,
    /// Name the processor's certificate must carry.
    /// Default: the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificate (PEM) that signed the processor's certificate.
    pub ca: PathBuf,
    /// This agent's certificate (PEM), from the same CA.
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
    /// Unacknowledged batches in flight per stream.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Give up a connection attempt after this long (then back off).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection that hears nothing from the processor for this long is dead, and the
    /// agent reconnects; keep-alives are sent every fifth of it (≥ 500 ms).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// First reconnect delay; doubles after each failed attempt, up to `backoff_max`, with
    /// 0–25 % jitter so a fleet does not retry in lockstep.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// On stop, keep delivering buffered batches for this long; what is still
    /// unacknowledged then stays in the write-ahead log for the next start.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn default_window() -> usize {
    16
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(5)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_committed_interval() -> Duration {
    Duration::from_secs(2)
}

impl SinkConfig {
    /// Semantic checks, given the names of the streams it will ship.
    pub fn validate(&self, streams: impl IntoIterator<Item = String>) -> Result<(), Invalid> {
        match self {
            SinkConfig::Quic(q) => {
                check_delivery(q.window, q.backoff_initial, q.backoff_max)?;
                if q.idle_timeout < Duration::from_millis(500) {
                    return Err(Invalid::new("sink.idle_timeout", "must be at least 500ms"));
                }
                if !q.endpoint.contains(':') {
                    return Err(Invalid::new(
                        "sink.endpoint",
                        format!("{:?} must be host:port", q.endpoint),
                    ));
                }
            }
            SinkConfig::Kafka(k) => {
                if k.brokers.split(',').any(|b| !b.trim().contains(':')) {
                    return Err(Invalid::new(
                        "sink.brokers",
                        format!("{:?} must be host:port[,host:port...]", k.brokers),
                    ));
                }
                check_delivery(k.window, k.backoff_initial, k.backoff_max)?;
                if k.max_message_bytes.as_u64() < 64 * 1024 {
                    return Err(Invalid::new(
                        "sink.max_message_bytes",
                        "must be at least 64 KiB",
                    ));
                }
                if let Some(o) = k
                    .options
                    .keys()
                    .find(|o| super::kafka::RESERVED_OPTIONS.contains(&o.as_str()))
                {
                    return Err(Invalid::new(
                        format!("sink.options.{o}"),
                        "set by the agent (delivery guarantees depend on it); use the sink's own keys",
                    ));
                }
                if let Some(api) = &k.committed_api
                    && super::committed::authority(api).is_none()
                {
                    return Err(Invalid::new(
                        "sink.committed_api",
                        format!("{api:?}: write http://host:port (the processor's [api] listen)"),
                    ));
                }
                if k.committed_interval < Duration::from_millis(100) {
                    return Err(Invalid::new(
                        "sink.committed_interval",
                        "must be at least 100ms",
                    ));
                }
                // Every stream's topic must be a valid Kafka topic name.
                for stream in streams {
                    let topic = k.topic.replace("{stream}", &stream);
                    let valid = !topic.is_empty()
                        && topic.len() <= 249
                        && topic
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                    if !valid {
                        return Err(Invalid::new(
                            "sink.topic",
                            format!(
                                "{topic:?} (stream {stream:?}) is not a Kafka topic name: 1-249 of ASCII letters, digits, '.', '_', '-'"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The delivery settings both sinks share: a window and a retry backoff.
fn check_delivery(
    window: usize,
    backoff_initial: Duration,
    backoff_max: Duration,
) -> Result<(), Invalid> {
    if window == 0 {
        return Err(Invalid::new("sink.window", "must be at least 1"));
    }
    if backoff_initial.is_zero() || backoff_initial > backoff_max {
        return Err(Invalid::new(
            "sink.backoff_initial",
            "must be greater than zero and at most sink.backoff_max",
        ));
    }
    Ok(())
}

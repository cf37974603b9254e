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
    Quic(QuicSinkConfig),
    Kafka(KafkaSinkConfig),
}

/// `[sink] type = "kafka"`: produce batches to Kafka (or any Kafka-compatible broker).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The agent's certificate (PEM, from the processor's CA): sent with each batch, whose
    /// signature the processor checks against its CA.
    pub cert: PathBuf,
    /// The certificate's private key (PEM): signs each batch.
    pub key: PathBuf,
    /// Topic of a stream's batches; `{stream}` is replaced by the stream's name. Without
    /// `{stream}`, every stream goes to one topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Message compression: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: KafkaCompression,
    /// The largest message the brokers take (their `message.max.bytes` and the topic's
    /// `max.message.bytes`); batches are cut at 90% of it.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: ByteSize,
    /// Batches produced and not yet acknowledged by the brokers, per stream.
    #[serde(default = "default_kafka_window")]
    pub window: usize,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// On shutdown, how long to keep trying to deliver what is still unacknowledged.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Extra librdkafka producer properties (security settings, `linger.ms`, ...).
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
    Gzip,
    Snappy,
    Lz4,
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
    /// Name the processor's certificate must carry; defaults to the endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificate (PEM) that signed the processor's certificate.
    pub ca: PathBuf,
    /// This agent's certificate (PEM), signed by the same CA.
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
    /// Unacknowledged batches allowed in flight per stream.
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A connection that hears nothing from the processor for this long is considered dead
    /// (keep-alives are sent at a fifth of it), and the agent reconnects.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// On shutdown, how long to keep trying to deliver what is still unacknowledged.
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

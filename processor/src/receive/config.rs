//! `[quic]`, `[kafka]` and `[access]`: where batches come from, and who may write what.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// `[quic]`: the QUIC receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    pub listen: SocketAddr,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) that agent certificates must chain to.
    pub ca: PathBuf,
    /// The CA's certificate revocation list (PEM, `certs revoke` writes it): a revoked
    /// agent certificate is refused. Read at start.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Largest frame accepted; bigger frames are refused before being read.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: ByteSize,
    /// A frame whose header has arrived must be whole within this (a peer cannot hold a
    /// lane by trickling bytes).
    #[serde(default = "default_frame_timeout", with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Connections one agent may hold at once.
    #[serde(default = "default_max_connections_per_agent")]
    pub max_connections_per_agent: usize,
    /// Lanes (streams) one agent may hold open at once.
    #[serde(default = "default_max_lanes_per_agent")]
    pub max_lanes_per_agent: usize,
    /// Bytes of one agent's batches read and not yet committed or refused; past it, its
    /// lanes are not read until some are settled.
    #[serde(default = "default_max_inflight_bytes_per_agent")]
    pub max_inflight_bytes_per_agent: ByteSize,
    /// Moved to `[access.allow]` (it applies to Kafka too); kept to say so when found.
    #[serde(default)]
    pub allow: Option<toml::Value>,
}

/// `[access]`: which streams each agent may write, over QUIC and Kafka alike. Nothing is
/// granted by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Agent id (its certificate's common name), or `"*"` for every agent → stream
    /// patterns, where `*` matches any run of characters.
    pub allow: BTreeMap<String, Vec<String>>,
    /// Let every agent the CA certified write every stream (logged as a warning).
    pub allow_all: bool,
}

/// `[kafka]`: consume the topics agents' Kafka sinks write, as one member of a consumer
/// group (processors sharing a group share the partitions).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group id.
    #[serde(default = "default_group")]
    pub group: String,
    /// Topics of agent batches; a name starting with `^` is a regular expression.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Plain JSON topics (any producer), keyed by topic name.
    #[serde(default)]
    pub json: BTreeMap<String, JsonTopicConfig>,
    /// Table (in the lander's namespace) that keeps the messages that could not be
    /// landed, with their raw bytes and the reason.
    #[serde(default = "default_dead_letter_table")]
    pub dead_letter_table: String,
    /// Rejoin the group when a partition another member holds has unread messages and no
    /// committed progress for this long (doubling after each rejoin, up to ten minutes);
    /// `"0s"` never does.
    #[serde(default = "default_rejoin", with = "humantime_serde")]
    pub rejoin_when_stalled: Duration,
    /// CA (PEM) whose agents' signatures on batches are accepted; default `quic.ca`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Revocation list of that CA; default `quic.crl` when `ca` is `quic.ca`.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Take only batches an agent of the CA signed (the broker authenticates no one to the
    /// processor). `false` also lands unsigned batches, as their headers claim: only for a
    /// migration, and warned at start.
    #[serde(default = "default_true")]
    pub require_signed: bool,
    /// Extra librdkafka consumer properties (security settings, timeouts).
    #[serde(default)]
    pub options: sluice_ops::Options,
}

/// `[kafka.json.TOPIC]`: a topic of JSON objects, one per message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTopicConfig {
    /// Table in the lander's namespace; default: the topic name with characters other
    /// than letters, digits, `_` and `-` replaced by `_`.
    pub table: Option<String>,
    /// Column name → type (`string`, `long`, `int`, `double`, `float`, `boolean`,
    /// `timestamp`). Absent: the table's columns if it exists, else inferred from the first
    /// message that parses, then fixed.
    pub schema: Option<indexmap::IndexMap<String, crate::receive::json_topic::JsonType>>,
}

impl KafkaConfig {
    /// The table of a JSON topic.
    pub fn json_table(&self, topic: &str) -> String {
        self.json
            .get(topic)
            .and_then(|j| j.table.clone())
            .unwrap_or_else(|| {
                topic
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect()
            })
    }
}

fn default_group() -> String {
    "sluice-processor".into()
}
fn default_frame_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_max_connections_per_agent() -> usize {
    4
}
fn default_max_lanes_per_agent() -> usize {
    256
}
fn default_max_inflight_bytes_per_agent() -> ByteSize {
    ByteSize::mib(512)
}

fn default_true() -> bool {
    true
}

fn default_dead_letter_table() -> String {
    "dead_letters".into()
}
fn default_rejoin() -> Duration {
    Duration::from_secs(30)
}

/// librdkafka consumer properties the processor sets itself: its exactly-once landing
/// depends on them.
pub const KAFKA_RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "partition.assignment.strategy",
];

fn default_max_frame() -> ByteSize {
    ByteSize::b(sluice_protocol::DEFAULT_MAX_FRAME_BYTES as u64)
}

/// Kafka's rule for topic names.
pub fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

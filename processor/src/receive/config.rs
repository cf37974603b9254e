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
    /// UDP address to receive on.
    pub listen: SocketAddr,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// The server certificate's private key (PEM).
    pub key: PathBuf,
    /// CA (PEM) agent certificates must chain to. Connections without one are refused.
    pub ca: PathBuf,
    /// The CA's certificate revocation list (PEM; `sluice-processor certs revoke` writes
    /// `crl.pem`). A connection with a revoked agent certificate is refused. Read at start.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Larger frames are refused before being read (≥ 1 KiB).
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: ByteSize,
    /// A frame whose header has arrived must be whole within this (≥ 1 s), or its lane is
    /// closed (`frame_timeout`): a peer cannot hold a lane by trickling bytes. A frame's
    /// memory is given to the bytes that arrive (the first MiB, then the rest once it
    /// comes), not to what its header declares.
    #[serde(default = "default_frame_timeout", with = "humantime_serde")]
    pub frame_timeout: Duration,
    /// Connections one agent (certificate) may hold at once (≥ 1); more are closed with the
    /// reason, counted in `connections_rejected{reason="too_many_connections"}`.
    #[serde(default = "default_max_connections_per_agent")]
    pub max_connections_per_agent: usize,
    /// Lanes (streams) one agent may hold open at once (≥ 1); more are closed, counted in
    /// `frames_rejected{reason="too_many_lanes"}`.
    #[serde(default = "default_max_lanes_per_agent")]
    pub max_lanes_per_agent: usize,
    /// Bytes of one agent's batches read and not yet committed or refused
    /// (≥ `max_frame_bytes`); past it the agent's lanes are not read until some settle,
    /// and QUIC flow control holds it back.
    #[serde(default = "default_max_inflight_bytes_per_agent")]
    pub max_inflight_bytes_per_agent: ByteSize,
    /// Not a setting any more: stream permissions moved to `[access.allow]` (they apply to
    /// Kafka too), and a config that still has it is refused with a message saying so.
    #[serde(default)]
    pub allow: Option<toml::Value>,
}

/// `[access]`: which streams each agent may write, over QUIC and Kafka alike. Nothing is
/// granted by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Agent id (the common name of the agent's certificate) or `"*"` for every agent →
    /// list of stream names, where `*` matches any run of characters. An agent may write
    /// what its own entry and the `"*"` entry list; an agent with neither is refused
    /// altogether.
    pub allow: BTreeMap<String, Vec<String>>,
    /// Every agent the CA certified may write every stream (and create its table). Logged
    /// as a warning at start; not allowed together with `allow`.
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
    /// Topics of agent batches; a name starting with `^` is a regular expression (new
    /// matching topics are found within 10 s). At least one topic here or in
    /// `[kafka.json]`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Plain JSON topics (any producer), keyed by topic name (`[kafka.json.TOPIC]`).
    #[serde(default)]
    pub json: BTreeMap<String, JsonTopicConfig>,
    /// Table, in the lander's namespace, for messages that cannot be landed (kept with
    /// their raw bytes and the reason).
    #[serde(default = "default_dead_letter_table")]
    pub dead_letter_table: String,
    /// Rejoin the group when a partition another member holds has unread messages and its
    /// committed offset has not moved for this long (checked every 5 s; the wait doubles
    /// after each rejoin, up to 10 minutes; `"0s"`: never). Live members commit their
    /// progress every second; a partition that stands still is held by a member that is
    /// gone, which some brokers (tansu 0.6) can keep assigning after its session expired.
    #[serde(default = "default_rejoin", with = "humantime_serde")]
    pub rejoin_when_stalled: Duration,
    /// CA (PEM) whose agents' signatures are accepted. Required with `topics` (and
    /// `require_signed`) when there is no `[quic]` section.
    ///
    /// Default: `quic.ca`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Revocation list of `ca`: a batch signed with a revoked certificate is dead-lettered
    /// (`untrusted_certificate`).
    ///
    /// Default: `quic.crl` when `ca` is `quic.ca`.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Take only batches signed by an agent certificate of `ca` that names the agent the
    /// headers claim (the broker authenticates no one to the processor). An unsigned,
    /// forged or tampered message, or one signed by another agent or another CA, goes to
    /// the dead-letter table with the reason, counted in
    /// `sluice_processor_kafka_unverified_batches_total{reason}`, and never moves that
    /// agent's marks. `false` also lands unsigned batches as their headers say (any
    /// producer on the topic could forge them): only while migrating agents, warned at
    /// start.
    #[serde(default = "default_true")]
    pub require_signed: bool,
    /// Extra librdkafka consumer properties (security settings, `session.timeout.ms` —
    /// 10 s by default here, `heartbeat.interval.ms`, `fetch.wait.max.ms` — 10 ms by
    /// default here, as some brokers (tansu) wait that long on every fetch, even with data
    /// ready). `group.id`, `enable.auto.commit`, `auto.offset.reset`,
    /// `partition.assignment.strategy` and the like are refused.
    #[serde(default)]
    pub options: sluice_ops::Options,
}

/// `[kafka.json.TOPIC]`: a topic of JSON objects, one per message.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonTopicConfig {
    /// Table in the lander's namespace (one per topic).
    ///
    /// Default: the topic name, characters other than `[A-Za-z0-9_-]` replaced by `_`.
    pub table: Option<String>,
    /// Column → type: `string`, `long`, `int`, `double`, `float`, `boolean` or `timestamp`
    /// (RFC 3339 text, or an integer count of microseconds; stored in UTC). Without it the
    /// columns are the table's if it exists, else inferred from the first message that
    /// parses (its numbers, strings and booleans, in name order; lists, objects and nulls
    /// are left out). Either way a later key that is no column becomes one (typed by its
    /// first value) while the table's `[streams.TABLE] schema` is `evolve`, and sends its
    /// message to the dead-letter table when it is `strict`. If given, at least one column.
    ///
    /// Default: inferred.
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

//! Processor configuration: TOML, validated when loaded; unknown keys are errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytesize::ByteSize;
use serde::Deserialize;

use crate::models::{ModelConfig, ModelGraph};

/// The whole processor config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    #[serde(default)]
    pub processor: ProcessorSection,
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// The QUIC receiver agents ship to (at least one of `[quic]` and `[kafka]`).
    #[serde(default)]
    pub quic: Option<QuicConfig>,
    /// Kafka topics to consume.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    #[serde(default)]
    pub api: Option<sluice_ops::ApiConfig>,
    #[serde(default)]
    pub lander: LanderConfig,
    /// SQL models, keyed by target table (`silver.cpu`).
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    #[serde(default)]
    pub query: QueryConfig,
    #[serde(default)]
    pub access: AccessConfig,
}

/// `[query]`: what SQL from the query API (and `sluice-processor query`) may use, so that
/// a query cannot take the memory or the CPU that landing needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Memory all running queries may hold together. A query that needs more fails; none
    /// spills to disk.
    pub memory_limit: ByteSize,
    /// Queries the API runs at once; more are refused (429) until one ends.
    pub max_concurrent: usize,
    /// A query running longer is cancelled.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: ByteSize::gib(1),
            max_concurrent: 4,
            timeout: Duration::from_secs(60),
        }
    }
}

/// `[processor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorSection {
    /// Root of everything the processor keeps on disk by default (catalog, warehouse).
    pub data_dir: PathBuf,
    /// How often models with `schedule = "on_change"` look for new input snapshots.
    #[serde(with = "humantime_serde")]
    pub model_poll_interval: Duration,
}

impl Default for ProcessorSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            model_poll_interval: Duration::from_millis(500),
        }
    }
}

/// `[maintenance]`: compaction, snapshot expiry and orphan cleanup run by `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Run maintenance inside `serve` (`sluice-processor maintain` works either way).
    pub enabled: bool,
    /// Time between compaction and orphan cleanup passes over every table (the first one
    /// comes after it).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time between snapshot expiry passes over every table.
    #[serde(with = "humantime_serde")]
    pub expire_interval: Duration,
    /// Compaction writes files of about this size and packs smaller ones.
    pub target_file_size: ByteSize,
    /// Snapshots older than this are expired (never the current one, nor one the marks
    /// are read from or a model still reads from).
    #[serde(with = "humantime_serde")]
    pub expire_older_than: Duration,
    /// Keep at most this many snapshots per table (the same exceptions apply).
    pub max_snapshots: usize,
    /// Keep at least this many snapshots.
    pub retain_last: usize,
    /// Unreferenced files older than this are deleted (local and S3 warehouses).
    #[serde(with = "humantime_serde")]
    pub orphans_older_than: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(600),
            expire_interval: Duration::from_secs(60),
            target_file_size: ByteSize::mib(128),
            expire_older_than: Duration::from_secs(3600),
            max_snapshots: 500,
            retain_last: 10,
            orphans_older_than: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

/// `[catalog]`: the Iceberg catalog and warehouse.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Catalog name recorded in the catalog database (readers must use the same name).
    pub name: Option<String>,
    /// SQL catalog database URI; default `sqlite:<data_dir>/catalog.db`.
    pub uri: Option<String>,
    /// Warehouse root: a directory, or `s3://bucket/prefix`; default `<data_dir>/warehouse`.
    pub warehouse: Option<String>,
    /// How to reach the object store of an `s3://` warehouse.
    pub s3: crate::storage::S3Config,
}

impl std::fmt::Debug for CatalogConfig {
    /// The URI without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("name", &self.name)
            .field("uri", &self.uri.as_deref().map(sluice_ops::redact_uri))
            .field("warehouse", &self.warehouse)
            .field("s3", &self.s3)
            .finish()
    }
}

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
    pub schema: Option<indexmap::IndexMap<String, crate::json_topic::JsonType>>,
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

/// `[lander]`: how batches become Iceberg commits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LanderConfig {
    /// Iceberg namespace of the landed tables.
    pub namespace: String,
    /// Commit at least this often while batches are waiting.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Commit as soon as this many rows are waiting.
    pub commit_max_rows: usize,
    /// Commit as soon as this many bytes (in memory) are waiting.
    pub commit_max_bytes: ByteSize,
    /// Parquet compression: `zstd`, `snappy`, `lz4` or `none`.
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    Zstd,
    Snappy,
    Lz4,
    None,
}

impl Default for LanderConfig {
    fn default() -> Self {
        Self {
            namespace: "bronze".into(),
            commit_interval: Duration::from_secs(1),
            commit_max_rows: 1_000_000,
            commit_max_bytes: ByteSize::mib(256),
            compression: Compression::Zstd,
        }
    }
}

impl ProcessorConfig {
    /// Read, parse and validate a config file; relative paths are resolved against its
    /// directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut cfg = Self::parse(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parse TOML text; errors carry line, column and key.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        sluice_protocol::validate_name("lander.namespace", &self.lander.namespace)
            .context("lander.namespace")?;
        if self.lander.commit_interval.is_zero() {
            bail!("lander.commit_interval: must be greater than zero");
        }
        if self.lander.commit_max_rows == 0 {
            bail!("lander.commit_max_rows: must be at least 1");
        }
        if self.quic.is_none() && self.kafka.is_none() {
            bail!("[quic] or [kafka] is required: the processor needs something to receive from");
        }
        if let Some(quic) = &self.quic {
            if quic.max_frame_bytes.as_u64() < 1024 {
                bail!("quic.max_frame_bytes: must be at least 1 KiB");
            }
            if quic.max_connections_per_agent == 0 || quic.max_lanes_per_agent == 0 {
                bail!(
                    "quic.max_connections_per_agent and quic.max_lanes_per_agent: must be at least 1"
                );
            }
            if quic.max_inflight_bytes_per_agent < quic.max_frame_bytes {
                bail!("quic.max_inflight_bytes_per_agent: must be at least quic.max_frame_bytes");
            }
            if quic.frame_timeout < Duration::from_secs(1) {
                bail!("quic.frame_timeout: must be at least 1s");
            }
            if quic.allow.is_some() {
                bail!(
                    "quic.allow: stream permissions moved to [access.allow] (they apply to \
                     Kafka too); move the rules there"
                );
            }
        }
        if let Some(kafka) = &self.kafka {
            if kafka.brokers.trim().is_empty() {
                bail!("kafka.brokers: must list at least one host:port");
            }
            if kafka.group.trim().is_empty() {
                bail!("kafka.group: must not be empty");
            }
            if kafka.topics.is_empty() && kafka.json.is_empty() {
                bail!("kafka.topics: list at least one topic (or declare [kafka.json.TOPIC])");
            }
            if !kafka.topics.is_empty() && kafka.require_signed && self.kafka_ca().is_none() {
                bail!(
                    "kafka.ca: agents sign their batches with their certificate's key; give the \
                     CA (PEM) that issued them (or a [quic] section, whose ca is used)"
                );
            }
            sluice_protocol::validate_name("kafka.dead_letter_table", &kafka.dead_letter_table)
                .context("kafka.dead_letter_table")?;
            let mut tables = BTreeMap::new();
            for (topic, j) in &kafka.json {
                if !valid_topic(topic) {
                    bail!(
                        "kafka.json.{topic:?}: not a Kafka topic name (1-249 of ASCII letters, digits, '.', '_', '-')"
                    );
                }
                if kafka.topics.contains(topic) {
                    bail!(
                        "kafka.json.{topic:?}: also listed in kafka.topics (a topic holds agent batches or JSON, not both)"
                    );
                }
                let table = kafka.json_table(topic);
                sluice_protocol::validate_name("table", &table)
                    .with_context(|| format!("kafka.json.{topic:?}.table"))?;
                if table == kafka.dead_letter_table {
                    bail!("kafka.json.{topic:?}.table: {table:?} is the dead-letter table");
                }
                if let Some(other) = tables.insert(table.clone(), topic) {
                    bail!(
                        "kafka.json.{topic:?}.table: {table:?} is also the table of topic {other:?}"
                    );
                }
                if j.schema.as_ref().is_some_and(|s| s.is_empty()) {
                    bail!(
                        "kafka.json.{topic:?}.schema: declare at least one column, or leave it out to infer them"
                    );
                }
            }
            for t in &kafka.topics {
                if !t.starts_with('^') && !valid_topic(t) {
                    bail!(
                        "kafka.topics: {t:?} is not a Kafka topic name (1-249 of ASCII letters, digits, '.', '_', '-')"
                    );
                }
            }
            if let Some(k) = kafka
                .options
                .keys()
                .find(|k| KAFKA_RESERVED_OPTIONS.contains(&k.as_str()))
            {
                bail!(
                    "kafka.options.{k:?}: set by the processor (exactly-once landing depends on it)"
                );
            }
        }
        if let Some(name) = &self.catalog.name {
            sluice_protocol::validate_name("catalog.name", name).context("catalog.name")?;
        }
        crate::access::Access::new(&self.access).map_err(anyhow::Error::msg)?;
        if self.query.max_concurrent == 0 {
            bail!("query.max_concurrent: must be at least 1");
        }
        if self.query.timeout.is_zero() {
            bail!("query.timeout: must be greater than zero");
        }
        if self.query.memory_limit.as_u64() < 1024 * 1024 {
            bail!("query.memory_limit: must be at least 1 MiB");
        }
        if self.processor.model_poll_interval.is_zero() {
            bail!("processor.model_poll_interval: must be greater than zero");
        }
        let m = &self.maintenance;
        if m.interval.is_zero() {
            bail!("maintenance.interval: must be greater than zero");
        }
        if m.expire_interval.is_zero() {
            bail!("maintenance.expire_interval: must be greater than zero");
        }
        if m.max_snapshots < m.retain_last {
            bail!("maintenance.max_snapshots: must be at least maintenance.retain_last");
        }
        if m.target_file_size.as_u64() < 1024 * 1024 {
            bail!("maintenance.target_file_size: must be at least 1 MiB");
        }
        if m.orphans_older_than < Duration::from_secs(600) {
            bail!(
                "maintenance.orphans_older_than: must be at least 10m (younger files may belong to a commit in progress)"
            );
        }
        if m.retain_last == 0 {
            bail!("maintenance.retain_last: must be at least 1");
        }
        self.model_graph()?;
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.processor.data_dir);
        if let Some(quic) = &mut self.quic {
            abs(&mut quic.cert);
            abs(&mut quic.key);
            abs(&mut quic.ca);
            if let Some(crl) = &mut quic.crl {
                abs(crl);
            }
        }
        if let Some(kafka) = &mut self.kafka {
            for p in [&mut kafka.ca, &mut kafka.crl].into_iter().flatten() {
                abs(p);
            }
        }
        if let Some(w) = &mut self.catalog.warehouse
            && !w.contains("://")
            && Path::new(w.as_str()).is_relative()
        {
            *w = base.join(&*w).display().to_string();
        }
    }

    /// The CA that Kafka batches' signatures must chain to, and its revocation list.
    pub fn kafka_ca(&self) -> Option<(&Path, Option<&Path>)> {
        let kafka = self.kafka.as_ref()?;
        match (&kafka.ca, &self.quic) {
            (Some(ca), _) => Some((ca, kafka.crl.as_deref())),
            (None, Some(q)) => Some((&q.ca, kafka.crl.as_deref().or(q.crl.as_deref()))),
            (None, None) => None,
        }
    }

    /// The catalog database URI in effect, without its password: for messages.
    pub fn catalog_uri_shown(&self) -> String {
        sluice_ops::redact_uri(&self.catalog_uri())
    }

    /// The catalog database URI in effect.
    pub fn catalog_uri(&self) -> String {
        self.catalog.uri.clone().unwrap_or_else(|| {
            format!(
                "sqlite:{}?mode=rwc",
                self.processor.data_dir.join("catalog.db").display()
            )
        })
    }

    /// The warehouse root in effect: a local directory or an `s3://` URL.
    pub fn warehouse(&self) -> String {
        self.catalog.warehouse.clone().unwrap_or_else(|| {
            self.processor
                .data_dir
                .join("warehouse")
                .display()
                .to_string()
        })
    }

    /// The models, checked and in run order.
    pub fn model_graph(&self) -> anyhow::Result<ModelGraph> {
        ModelGraph::build(&self.models, &self.lander.namespace)
    }

    pub fn catalog_name(&self) -> &str {
        self.catalog.name.as_deref().unwrap_or("sluice")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[quic]
listen = "127.0.0.1:7400"
cert = "certs/server.pem"
key = "certs/server.key"
ca = "certs/ca.pem"
"#;

    #[test]
    fn defaults() {
        let cfg = ProcessorConfig::parse(GOOD).expect("valid");
        cfg.validate().expect("valid");
        assert_eq!(cfg.lander.namespace, "bronze");
        assert_eq!(cfg.lander.commit_interval, Duration::from_secs(1));
        assert!(cfg.catalog_uri().starts_with("sqlite:data/catalog.db"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_messages() {
        let cfg = ProcessorConfig::parse(&format!(
            "{GOOD}
[catalog]
uri = \"postgres://sluice:hunter2@db:5432/lake\"
warehouse = \"s3://lake/wh\"
[catalog.s3]
access_key_id = \"AKIA\"
secret_access_key = \"hunter3\"
[kafka]
brokers = \"b:9092\"
topics = [\"t\"]
options = {{ \"sasl.password\" = \"hunter4\", \"sasl.username\" = \"u\" }}
"
        ))
        .expect("valid");
        let shown = format!("{cfg:?} {}", cfg.catalog_uri_shown());
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("sluice:***@db") && shown.contains("\"sasl.username\": \"u\""));
        assert!(
            cfg.catalog_uri().contains("hunter2"),
            "the catalog still gets it"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = ProcessorConfig::parse(&format!("{GOOD}\n[lander]\ncommit_every = \"1s\"\n"))
            .unwrap_err();
        assert!(err.contains("commit_every"), "{err}");
        assert!(err.contains("line 9"), "{err}");
        let err =
            ProcessorConfig::parse(&format!("{GOOD}\n[lander]\ncommit_interval = \"soon\"\n"))
                .unwrap_err();
        assert!(err.contains("commit_interval"), "{err}");
        let err = ProcessorConfig::parse(&GOOD.replace("127.0.0.1:7400", "nowhere")).unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let cfg = ProcessorConfig::parse(&format!("{GOOD}\n[lander]\nnamespace = \"a.b\"\n"))
            .expect("parses");
        let err = format!("{:#}", cfg.validate().unwrap_err());
        assert!(err.contains("lander.namespace"), "{err}");
    }

    #[test]
    fn kafka_section() {
        let unsigned = "[kafka]\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"sluice.cpu\", \"^sluice\\\\..*\"]\n";
        // Agent batches are signed: their CA is needed (from [quic], or kafka.ca).
        let err = ProcessorConfig::parse(unsigned)
            .expect("parses")
            .validate()
            .unwrap_err();
        assert!(err.to_string().starts_with("kafka.ca"), "{err}");
        let kafka = format!("{unsigned}ca = \"certs/ca.pem\"\n");
        let kafka = kafka.as_str();
        let cfg = ProcessorConfig::parse(kafka).expect("kafka alone is enough");
        cfg.validate().expect("valid");
        assert!(
            cfg.kafka_ca()
                .is_some_and(|(ca, crl)| ca.ends_with("certs/ca.pem") && crl.is_none())
        );
        let k = cfg.kafka.as_ref().expect("kafka");
        assert_eq!(k.group, "sluice-processor");
        assert_eq!(k.topics[1], "^sluice\\..*");
        let err = ProcessorConfig::parse("")
            .expect("parses")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("[quic] or [kafka]"), "{err}");
        let bad =
            ProcessorConfig::parse(&kafka.replace("sluice.cpu", "sluice cpu")).expect("parses");
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("kafka.topics")
        );
        let json = ProcessorConfig::parse(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.json.\"app.logs\"]\nschema = { ts = \"timestamp\", level = \"string\" }\n[kafka.json.clicks]\n",
        )
        .expect("json topics alone are enough");
        json.validate().expect("valid");
        let k = json.kafka.as_ref().expect("kafka");
        assert_eq!(k.json_table("app.logs"), "app_logs");
        assert_eq!(k.dead_letter_table, "dead_letters");
        let clash = ProcessorConfig::parse(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.json.\"a.b\"]\n[kafka.json.a_b]\n",
        )
        .expect("parses");
        let err = format!("{:#}", clash.validate().unwrap_err());
        assert!(err.contains("also the table"), "{err}");
        let bad_type = ProcessorConfig::parse(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.json.t]\nschema = { a = \"decimal\" }\n",
        )
        .unwrap_err();
        assert!(bad_type.contains("decimal"), "{bad_type}");
        let reserved = ProcessorConfig::parse(&format!(
            "{kafka}options = {{ \"enable.auto.commit\" = \"true\" }}\n"
        ))
        .expect("parses");
        let err = reserved.validate().unwrap_err().to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
    }
}

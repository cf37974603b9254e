//! Processor configuration: TOML, validated when loaded; unknown keys are errors.

//!
//! Each section's type lives in the stage that owns it (`[lander]` in `land/`, `[quic]` in
//! `receive/`...); this file composes them, and re-exports them so that `crate::config::X`
//! names every section.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::http::query::QueryConfig;
pub use crate::lake::{CatalogConfig, CatalogSettings, Compression};
pub use crate::land::{LanderConfig, SchemaPolicy, StreamConfig, Streams};
pub use crate::maintenance::MaintenanceConfig;
use crate::models::{ModelConfig, ModelGraph, ModelSettings};
pub use crate::receive::{
    AccessConfig, JsonTopicConfig, KAFKA_RESERVED_OPTIONS, KafkaConfig, QuicConfig, valid_topic,
};
pub use sluice_ops::config::{ConfigError, Invalid};

/// The whole processor config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// `[processor]`: where the processor keeps its data, and how often models are looked at.
    #[serde(default)]
    pub processor: ProcessorSection,
    /// `[catalog]`: the Iceberg catalog and warehouse.
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// The QUIC receiver agents ship to (at least one of `[quic]` and `[kafka]`).
    #[serde(default)]
    pub quic: Option<QuicConfig>,
    /// Kafka topics to consume.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// `[api]`: the HTTP endpoint (metrics, health, queries, status page); none without it.
    #[serde(default)]
    pub api: Option<sluice_ops::ApiConfig>,
    /// `[lander]`: how batches become Iceberg commits.
    #[serde(default)]
    pub lander: LanderConfig,
    /// `[streams.NAME]`: how each stream's bronze table is kept (schema evolution).
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    /// SQL models, keyed by target table (`silver.cpu`).
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// `[maintenance]`: compaction, snapshot expiry and orphan cleanup run by `serve`.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// `[query]`: the limits of the queries the API and `sluice-processor query` run.
    #[serde(default)]
    pub query: QueryConfig,
    /// `[access]`: which streams each agent may write, over QUIC and Kafka alike.
    #[serde(default)]
    pub access: AccessConfig,
}

/// `[processor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorSection {
    /// Root of the default catalog database and warehouse: everything the processor keeps
    /// on disk unless `[catalog]` says otherwise.
    pub data_dir: PathBuf,
    /// How often `serve` goes through the models and runs those whose schedule is due and
    /// whose inputs have new snapshots (> 0).
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

impl ProcessorConfig {
    /// Read, parse and validate a config file; relative paths are resolved against its
    /// directory. A refused value is reported with its key and line.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        sluice_ops::config::load(path, |cfg: &mut Self, base| {
            // The checks read no file, so they see the paths as written.
            cfg.validate()?;
            cfg.resolve_paths(base);
            Ok(())
        })
    }

    /// The `[streams.NAME]` sections, for the lander.
    pub fn streams(&self) -> Streams {
        Streams(std::sync::Arc::new(self.streams.clone()))
    }

    /// Parse TOML text; errors carry line, column and key.
    pub fn parse(text: &str) -> Result<Self, String> {
        sluice_ops::config::parse(text)
    }

    /// Semantic checks that serde cannot express; the error names the key refused.
    pub fn validate(&self) -> Result<(), Invalid> {
        let name = |key: &str, what: &'static str, value: &str| {
            sluice_protocol::validate_name(what, value)
                .map_err(|e| Invalid::new(key, e.to_string()))
        };
        name(
            "lander.namespace",
            "lander.namespace",
            &self.lander.namespace,
        )?;
        if self.lander.commit_interval.is_zero() {
            return Err(Invalid::new(
                "lander.commit_interval",
                "must be greater than zero",
            ));
        }
        for stream in self.streams.keys() {
            name(&format!("streams.{stream:?}"), "stream", stream)?;
        }
        if self.lander.commit_max_rows == 0 {
            return Err(Invalid::new("lander.commit_max_rows", "must be at least 1"));
        }
        if self.quic.is_none() && self.kafka.is_none() {
            return Err(Invalid::new(
                "quic",
                "[quic] or [kafka] is required: the processor needs something to receive from",
            ));
        }
        if let Some(quic) = &self.quic {
            if quic.max_frame_bytes.as_u64() < 1024 {
                return Err(Invalid::new(
                    "quic.max_frame_bytes",
                    "must be at least 1 KiB",
                ));
            }
            if quic.max_connections_per_agent == 0 {
                return Err(Invalid::new(
                    "quic.max_connections_per_agent",
                    "must be at least 1",
                ));
            }
            if quic.max_lanes_per_agent == 0 {
                return Err(Invalid::new(
                    "quic.max_lanes_per_agent",
                    "must be at least 1",
                ));
            }
            if quic.max_inflight_bytes_per_agent < quic.max_frame_bytes {
                return Err(Invalid::new(
                    "quic.max_inflight_bytes_per_agent",
                    "must be at least quic.max_frame_bytes",
                ));
            }
            if quic.frame_timeout < Duration::from_secs(1) {
                return Err(Invalid::new("quic.frame_timeout", "must be at least 1s"));
            }
            if quic.allow.is_some() {
                return Err(Invalid::new(
                    "quic.allow",
                    "stream permissions moved to [access.allow] (they apply to Kafka too); \
                     move the rules there",
                ));
            }
        }
        if let Some(kafka) = &self.kafka {
            if kafka.brokers.trim().is_empty() {
                return Err(Invalid::new(
                    "kafka.brokers",
                    "must list at least one host:port",
                ));
            }
            if kafka.group.trim().is_empty() {
                return Err(Invalid::new("kafka.group", "must not be empty"));
            }
            if kafka.topics.is_empty() && kafka.json.is_empty() {
                return Err(Invalid::new(
                    "kafka.topics",
                    "list at least one topic (or declare [kafka.json.TOPIC])",
                ));
            }
            if !kafka.topics.is_empty() && kafka.require_signed && self.kafka_ca().is_none() {
                return Err(Invalid::new(
                    "kafka.ca",
                    "agents sign their batches with their certificate's key; give the CA (PEM) \
                     that issued them (or a [quic] section, whose ca is used)",
                ));
            }
            name(
                "kafka.dead_letter_table",
                "kafka.dead_letter_table",
                &kafka.dead_letter_table,
            )?;
            let mut tables = BTreeMap::new();
            for (topic, j) in &kafka.json {
                let key = format!("kafka.json.{topic:?}");
                if !valid_topic(topic) {
                    return Err(Invalid::new(
                        key,
                        "not a Kafka topic name (1-249 of ASCII letters, digits, '.', '_', '-')",
                    ));
                }
                if kafka.topics.contains(topic) {
                    return Err(Invalid::new(
                        key,
                        "also listed in kafka.topics (a topic holds agent batches or JSON, not both)",
                    ));
                }
                let table = kafka.json_table(topic);
                name(&format!("{key}.table"), "table", &table)?;
                if table == kafka.dead_letter_table {
                    return Err(Invalid::new(
                        format!("{key}.table"),
                        format!("{table:?} is the dead-letter table"),
                    ));
                }
                if let Some(other) = tables.insert(table.clone(), topic) {
                    return Err(Invalid::new(
                        format!("{key}.table"),
                        format!("{table:?} is also the table of topic {other:?}"),
                    ));
                }
                if j.schema.as_ref().is_some_and(|s| s.is_empty()) {
                    return Err(Invalid::new(
                        format!("{key}.schema"),
                        "declare at least one column, or leave it out to infer them",
                    ));
                }
            }
            for t in &kafka.topics {
                if !t.starts_with('^') && !valid_topic(t) {
                    return Err(Invalid::new(
                        "kafka.topics",
                        format!(
                            "{t:?} is not a Kafka topic name (1-249 of ASCII letters, digits, '.', '_', '-')"
                        ),
                    ));
                }
            }
            if let Some(k) = kafka
                .options
                .keys()
                .find(|k| KAFKA_RESERVED_OPTIONS.contains(&k.as_str()))
            {
                return Err(Invalid::new(
                    format!("kafka.options.{k:?}"),
                    "set by the processor (exactly-once landing depends on it)",
                ));
            }
        }
        if let Some(catalog) = &self.catalog.name {
            name("catalog.name", "catalog.name", catalog)?;
        }
        crate::receive::access::Access::new(&self.access)?;
        if self.query.max_concurrent == 0 {
            return Err(Invalid::new("query.max_concurrent", "must be at least 1"));
        }
        if self.query.timeout.is_zero() {
            return Err(Invalid::new("query.timeout", "must be greater than zero"));
        }
        if self.query.memory_limit.as_u64() < 1024 * 1024 {
            return Err(Invalid::new("query.memory_limit", "must be at least 1 MiB"));
        }
        if self.processor.model_poll_interval.is_zero() {
            return Err(Invalid::new(
                "processor.model_poll_interval",
                "must be greater than zero",
            ));
        }
        let m = &self.maintenance;
        if m.interval.is_zero() {
            return Err(Invalid::new(
                "maintenance.interval",
                "must be greater than zero",
            ));
        }
        if m.expire_interval.is_zero() {
            return Err(Invalid::new(
                "maintenance.expire_interval",
                "must be greater than zero",
            ));
        }
        if m.max_snapshots < m.retain_last {
            return Err(Invalid::new(
                "maintenance.max_snapshots",
                "must be at least maintenance.retain_last",
            ));
        }
        if m.target_file_size.as_u64() < 1024 * 1024 {
            return Err(Invalid::new(
                "maintenance.target_file_size",
                "must be at least 1 MiB",
            ));
        }
        if m.orphans_older_than < Duration::from_secs(600) {
            return Err(Invalid::new(
                "maintenance.orphans_older_than",
                "must be at least 10m (younger files may belong to a commit in progress)",
            ));
        }
        if m.retain_last == 0 {
            return Err(Invalid::new(
                "maintenance.retain_last",
                "must be at least 1",
            ));
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

    /// The catalog in effect, for [`crate::lake::open`] and
    /// [`crate::lake::CatalogSwap::open`].
    pub fn catalog_settings(&self) -> CatalogSettings {
        CatalogSettings {
            name: self.catalog_name().to_string(),
            uri: self.catalog_uri(),
            warehouse: self.warehouse(),
            s3: self.catalog.s3.clone(),
        }
    }

    /// What a model runner takes from this config.
    pub fn model_settings(&self) -> ModelSettings {
        ModelSettings {
            catalog_name: self.catalog_name().to_string(),
            bronze: self.lander.namespace.clone(),
            compression: self.lander.compression,
        }
    }

    /// The models, checked and in run order.
    pub fn model_graph(&self) -> Result<ModelGraph, Invalid> {
        ModelGraph::build(&self.models, &self.lander.namespace)
    }

    /// The catalog name in effect (`sluice` unless `catalog.name` says otherwise).
    pub fn catalog_name(&self) -> &str {
        self.catalog.name.as_deref().unwrap_or("sluice")
    }
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

    #[test]
    fn a_refused_value_is_reported_with_its_key_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("processor.toml");
        std::fs::write(&path, format!("{GOOD}\n[lander]\ncommit_max_rows = 0\n")).expect("write");
        let err = ProcessorConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("lander.commit_max_rows (line 9): must be at least 1"),
            "{err}"
        );
        // Checked as written, then resolved against the file's directory.
        std::fs::write(&path, GOOD).expect("write");
        let cfg = ProcessorConfig::load(&path).expect("valid");
        let quic = cfg.quic.as_ref().expect("quic");
        assert_eq!(quic.ca, dir.path().join("certs/ca.pem"));
        assert_eq!(cfg.processor.data_dir, dir.path().join("data"));
    }
}

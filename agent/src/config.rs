//! Agent configuration: TOML, validated when loaded.
//!
//! Unknown keys are errors (`deny_unknown_fields` everywhere) and every semantic check names
//! the offending key, e.g. `sources.cpu.fields.load: stddev must be > 0`.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

pub use sluice_ops::config::{ConfigError, Invalid};
use sluice_simulator::SimulatorConfig;

pub use crate::pipeline::BatchConfig;
pub use crate::sink::{KafkaSinkConfig, QuicSinkConfig, SinkConfig};
pub use crate::wal::BufferConfig;
use crate::wasm::{WasmSourceConfig, WasmTransformConfig};

/// The whole agent config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `[agent]`: who this agent is and where it keeps its state.
    pub agent: AgentSection,
    /// `[api]`: the HTTP endpoint; without it the agent serves none.
    #[serde(default)]
    pub api: Option<sluice_ops::ApiConfig>,
    /// `[batch]`: when the batcher cuts a batch.
    #[serde(default)]
    pub batch: BatchConfig,
    /// `[buffer]`: the write-ahead log each stream's batches wait in.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// `[sink]`: where batches go, `type = "quic"` or `type = "kafka"`.
    #[serde(deserialize_with = "sluice_ops::config::tagged::one")]
    pub sink: SinkConfig,
    /// `[sources.NAME]`: where rows come from, `type = "simulator"` or `type = "wasm"`.
    #[serde(deserialize_with = "sluice_ops::config::tagged::map")]
    pub sources: IndexMap<String, SourceConfig>,
    /// `[transforms.NAME]`: transforms, applied to the sources that list them.
    #[serde(default, deserialize_with = "sluice_ops::config::tagged::map")]
    pub transforms: IndexMap<String, TransformConfig>,
    /// `[network]`: how plugins' network grants are served (names, TLS roots).
    #[serde(default)]
    pub network: crate::wasm::network::NetworkConfig,
}

/// `[agent]`: identity of this agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Unique id of this agent; lands in `_agent`. `[A-Za-z0-9_-]{1,128}`. Must match its
    /// certificate's common name.
    pub id: String,
    /// Local state: the write-ahead log (`wal/STREAM/`) and the compiled-plugin cache
    /// (`wasm-cache/`). Locked while the agent runs: two agents cannot share one.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("sluice-agent-data")
}

impl AgentConfig {
    /// The batcher's byte limit: `batch.max_bytes`, and below the Kafka message limit.
    pub fn batch_max_bytes(&self) -> u64 {
        let max = self.batch.max_bytes.as_u64();
        match &self.sink {
            SinkConfig::Quic(_) => max,
            SinkConfig::Kafka(k) => max.min(k.max_message_bytes.as_u64() / 10 * 9),
        }
    }
}

/// `[sources.NAME]`: one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    /// `type = "simulator"`: the built-in telemetry simulator.
    Simulator(SimulatorConfig),
    /// `type = "wasm"`: a WebAssembly connector component.
    Wasm(WasmSourceConfig),
}

impl SourceConfig {
    /// The streams this source feeds: one (defaulting to the source's name), or a
    /// scenario's streams.
    pub fn streams(&self, source_name: &str) -> Vec<String> {
        match self {
            SourceConfig::Simulator(s) => s.stream_names(source_name),
            SourceConfig::Wasm(w) => {
                vec![w.stream.clone().unwrap_or_else(|| source_name.to_string())]
            }
        }
    }

    /// Names of the transforms applied to this source's rows, in order.
    pub fn transforms(&self) -> &[String] {
        match self {
            SourceConfig::Simulator(s) => &s.transforms,
            SourceConfig::Wasm(w) => &w.transforms,
        }
    }
}

/// `[transforms.NAME]`: one transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransformConfig {
    /// `type = "wasm"`: a WebAssembly transform component, the only kind so far.
    Wasm(WasmTransformConfig),
}

impl AgentConfig {
    /// Read, parse and validate a config file. Relative paths inside it are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        sluice_ops::config::load(path, |cfg: &mut Self, base| {
            // Paths first: validation reads scenario files.
            cfg.resolve_paths(base);
            cfg.validate()
        })
    }

    /// Parse TOML text without validation; the error carries line, column and key.
    pub fn parse(text: &str) -> Result<Self, String> {
        sluice_ops::config::parse(text)
    }

    /// Semantic checks that serde cannot express.
    pub fn validate(&self) -> Result<(), Invalid> {
        sluice_protocol::validate_name("agent.id", &self.agent.id)
            .map_err(|e| Invalid::new("agent.id", e.to_string()))?;
        if self.batch.max_rows == 0 {
            return Err(Invalid::new("batch.max_rows", "must be at least 1"));
        }
        if self.batch.max_bytes.as_u64() < 1024 {
            return Err(Invalid::new("batch.max_bytes", "must be at least 1 KiB"));
        }
        if self.batch.max_age.is_zero() {
            return Err(Invalid::new("batch.max_age", "must be greater than zero"));
        }
        let wal = self.buffer.wal_options();
        if wal.max_size < 2 * self.batch_max_bytes() + (1 << 20) {
            return Err(Invalid::new(
                "buffer.max_size",
                format!(
                    "must hold at least two batches: 1 MiB + 2 x batch.max_bytes ({})",
                    self.batch.max_bytes
                ),
            ));
        }
        if wal.segment_size < 64 * 1024 || wal.segment_size > wal.max_size / 2 {
            return Err(Invalid::new(
                "buffer.segment_size",
                "must be at least 64 KiB and at most half of buffer.max_size",
            ));
        }
        self.sink
            .validate(self.sources.iter().flat_map(|(n, s)| s.streams(n)))?;
        if self.sources.is_empty() {
            return Err(Invalid::new("sources", "at least one source is required"));
        }
        for (name, TransformConfig::Wasm(t)) in &self.transforms {
            sluice_protocol::validate_name("transform", name)
                .map_err(|e| Invalid::new(format!("transforms.{name}"), e.to_string()))?;
            t.validate(&format!("transforms.{name}"))?;
        }
        let mut schemas: IndexMap<String, (&str, Option<arrow_schema::SchemaRef>)> =
            IndexMap::new();
        for (name, source) in &self.sources {
            let key = format!("sources.{name}");
            let mut seen = std::collections::HashSet::new();
            for t in source.transforms() {
                if !self.transforms.contains_key(t) {
                    return Err(Invalid::new(
                        format!("{key}.transforms"),
                        format!("no transform named {t:?} (define it as [transforms.{t}])"),
                    ));
                }
                if !seen.insert(t) {
                    return Err(Invalid::new(
                        format!("{key}.transforms"),
                        format!("{t:?} is listed twice"),
                    ));
                }
            }
            // The schema of a wasm source, or of any source's transformed rows, is known only
            // once it runs, so such a source gets its own stream.
            let streams: Vec<(String, Option<arrow_schema::SchemaRef>)> = match source {
                SourceConfig::Simulator(sim) => {
                    sim.validate(&key)?;
                    let names = sim.stream_names(name);
                    if names.len() > 1 && !source.transforms().is_empty() {
                        return Err(Invalid::new(
                            format!("{key}.transforms"),
                            "transforms apply to single-stream sources; this scenario has several streams",
                        ));
                    }
                    let schemas = sim.schemas();
                    names
                        .into_iter()
                        .zip(schemas)
                        .map(|(n, s)| (n, source.transforms().is_empty().then_some(s)))
                        .collect()
                }
                SourceConfig::Wasm(w) => {
                    w.validate(&key)?;
                    source
                        .streams(name)
                        .into_iter()
                        .map(|n| (n, None))
                        .collect()
                }
            };
            for (stream, schema) in streams {
                sluice_protocol::validate_name("stream", &stream)
                    .map_err(|e| Invalid::new(format!("{key}.stream"), e.to_string()))?;
                if let Some((other, other_schema)) = schemas.get(&stream)
                    && (schema.is_none() || other_schema.is_none())
                {
                    return Err(Invalid::new(
                        key,
                        format!(
                            "feeds stream {stream:?} already fed by source {other:?}; a wasm source, \
                             or a source with transforms, needs a stream of its own"
                        ),
                    ));
                }
                // Sources sharing a stream share one batcher, so they must agree on the schema.
                if let Some((other, other_schema)) = schemas.get(&stream) {
                    if *other_schema != schema {
                        return Err(Invalid::new(
                            key,
                            format!(
                                "feeds stream {stream:?} with a different schema than source {other:?}"
                            ),
                        ));
                    }
                } else {
                    schemas.insert(stream, (name, schema));
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.agent.data_dir.is_relative() {
            self.agent.data_dir = base.join(&self.agent.data_dir);
        }
        for source in self.sources.values_mut() {
            match source {
                SourceConfig::Wasm(w) => w.resolve_paths(base),
                SourceConfig::Simulator(s) => s.resolve_paths(base),
            }
        }
        for TransformConfig::Wasm(t) in self.transforms.values_mut() {
            t.resolve_paths(base);
        }
        let paths = match &mut self.sink {
            SinkConfig::Quic(q) => vec![&mut q.ca, &mut q.cert, &mut q.key],
            SinkConfig::Kafka(k) => vec![&mut k.cert, &mut k.key],
        };
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::KafkaCompression;

    const GOOD: &str = r#"
[agent]
id = "edge-01"

[sink]
type = "quic"
endpoint = "127.0.0.1:7400"
ca = "certs/ca.pem"
cert = "certs/agent.pem"
key = "certs/agent.key"

[sources.cpu]
type = "simulator"
rate = 100
[sources.cpu.fields]
ts = { type = "timestamp" }
load = { type = "normal", mean = 40.0, stddev = 10.0 }
"#;

    fn check(text: &str) -> Result<AgentConfig, String> {
        let cfg = AgentConfig::parse(text)?;
        cfg.validate()
            .map_err(|e| format!("{}: {}", e.key, e.message))?;
        Ok(cfg)
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let cfg = check(GOOD).expect("valid");
        assert_eq!(cfg.batch.max_rows, 65_536);
        let SinkConfig::Quic(q) = &cfg.sink else {
            panic!("a quic sink");
        };
        assert_eq!(q.window, 16);
        assert_eq!(cfg.sources["cpu"].streams("cpu"), ["cpu"]);
    }

    const KAFKA_SINK: &str = r#"[sink]
type = "kafka"
brokers = "127.0.0.1:9092"
cert = "certs/agent.pem"
key = "certs/agent.key"
"#;

    fn with_kafka(extra: &str) -> String {
        let start = GOOD.find("[sink]").expect("sink");
        let end = GOOD.find("[sources.cpu]").expect("sources");
        format!("{}{KAFKA_SINK}{extra}\n{}", &GOOD[..start], &GOOD[end..])
    }

    #[test]
    fn kafka_sink() {
        let cfg = check(&with_kafka("")).expect("valid");
        let SinkConfig::Kafka(k) = &cfg.sink else {
            panic!("a kafka sink");
        };
        assert_eq!(k.topic, "sluice.{stream}");
        assert_eq!(k.compression, KafkaCompression::None);
        // Batches fit in a message.
        assert_eq!(cfg.batch_max_bytes(), (1 << 20) / 10 * 9);
        let err = check(&with_kafka("topic = \"all streams\"")).unwrap_err();
        assert!(err.starts_with("sink.topic"), "{err}");
        let err = check(&with_kafka("compression = \"brotli\"")).unwrap_err();
        assert!(err.contains("brotli"), "{err}");
        let err = check(&with_kafka("options = { \"acks\" = \"1\" }")).unwrap_err();
        assert!(err.starts_with("sink.options.acks"), "{err}");
        let err = check(&with_kafka("").replace("127.0.0.1:9092", "localhost")).unwrap_err();
        assert!(err.starts_with("sink.brokers"), "{err}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = check(&GOOD.replace("rate = 100", "rate = 100\nrat = 5")).unwrap_err();
        assert!(err.contains("rat"), "{err}");
        assert!(err.contains("line"), "{err}");
        let err = check(&GOOD.replace("[agent]", "[agent]\ncolour = 1")).unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let err = check(&GOOD.replace("stddev = 10.0", "stddev = 10.0, skew = 2")).unwrap_err();
        assert!(
            err.contains("fields: load: skew: unknown field `skew`"),
            "{err}"
        );
        let err = check(&GOOD.replace("key = ", "windoww = 3\nkey = ")).unwrap_err();
        assert!(err.contains("windoww"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = check(&GOOD.replace("stddev = 10.0", "stddev = -1.0")).unwrap_err();
        assert!(err.contains("sources.cpu.fields.load"), "{err}");
        let err = check(&GOOD.replace("id = \"edge-01\"", "id = \"edge 01\"")).unwrap_err();
        assert!(err.starts_with("agent.id"), "{err}");
        let err = check(&GOOD.replace("rate = 100", "rate = \"fast\"")).unwrap_err();
        assert!(err.contains("rate"), "{err}");
        let err = check(&GOOD.replace("type = \"quic\"", "type = \"carrier-pigeon\"")).unwrap_err();
        assert!(err.contains("carrier-pigeon"), "{err}");
        let err =
            check(&GOOD.replace("[sink]", "[batch]\nmax_age = \"soon\"\n[sink]")).unwrap_err();
        assert!(err.contains("max_age"), "{err}");
    }
}

//! The built-in telemetry simulator: scenarios of entities and related streams, with
//! realistic values, anomalies and late events, generated column by column straight into
//! Arrow arrays (docs/SIMULATION.md).
//!
//! A simulator source either names a scenario file (`scenario = "fleet.toml"`) or declares
//! one stream inline (`fields`, `rate`, `entities`, ...); both run on the same engine.
//!
//! | file | job |
//! |---|---|
//! | `scenario.rs` | scenario files: the TOML language of simulations, parsed and checked |
//! | `field.rs` | field specifications (what a column holds) and their checks |
//! | `generator.rs` | the values of each field, chunk after chunk (nested ones included) |
//! | `fake_value.rs` | realistic fake values (hostnames, addresses, ...) from the `fake` crate |
//! | `expr.rs` | derived fields: a small, typed expression language over a row's fields |
//! | `schedule.rs` | when events happen: per-entity arrivals, child delays, late arrivals |
//! | `anomaly.rs` | injected anomalies: when they strike, which entities, what they change |
//! | `calendar.rs` | time units and calendar arithmetic (UTC, microseconds) |
//! | `engine/` | a scenario compiled into a plan, then run chunk by chunk into Arrow |

mod anomaly;
mod calendar;
mod engine;
mod expr;
mod fake_value;
mod field;
mod generator;
mod scenario;
mod schedule;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_schema::SchemaRef;
use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Deserialize;

pub use engine::{RunOptions, Scenario, Simulation, Step};
pub use fake_value::FakeKind;
pub use field::FieldSpec;
pub use scenario::{ScenarioError, ScenarioSpec, compile_file};

use scenario::{EntitySpec, RateKind, RateSpec, StreamSpec};
use sluice_ops::config::Invalid;

/// How a simulator source paces its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// The simulated clock runs at wall-clock speed from its start.
    #[default]
    Realtime,
    /// As fast as the pipeline takes (backfill).
    Fast,
}

/// `[sources.NAME] type = "simulator"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Scenario file (relative to this config file). Each of its streams feeds the agent
    /// stream of the same name (with `stream_prefix`). The inline keys (`fields`, `rate`,
    /// `entities`, `start_time`, `seed`, `stream`) are then errors.
    #[serde(default)]
    pub scenario: Option<PathBuf>,
    /// Scenario sources: prefix of the agent stream names (none: the scenario's stream names
    /// as they are).
    #[serde(default)]
    pub stream_prefix: Option<String>,
    /// Inline: stream (and bronze table) to feed. Sources sharing a stream must have the
    /// same schema (and no transforms).
    /// Default: `NAME`.
    #[serde(default)]
    pub stream: Option<String>,
    /// Transforms applied to this source's rows, in order (`[transforms.NAME]`);
    /// single-stream sources only.
    #[serde(default)]
    pub transforms: Vec<String>,
    /// `"realtime"`: the simulated clock starts at the scenario's `start` (or `start_time`,
    /// or now) and advances with the wall clock. `"fast"`: as fast as the pipeline takes
    /// (backfill).
    #[serde(default)]
    pub pace: Pace,
    /// Inline: events per second across all entities (entities take turns).
    /// Default: unlimited (as fast as the pipeline takes).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Stop each stream after this many events; the agent exits once everything is
    /// acknowledged.
    /// Default: unbounded (until the agent stops, or the scenario's `end`).
    #[serde(default)]
    pub total: Option<u64>,
    /// Inline: seed of every random draw (a scenario file has its own).
    #[serde(default)]
    pub seed: u64,
    /// Inline: number of simulated entities; event *i* belongs to entity *i* mod
    /// `entities`, ids `entity-0000`, ...
    #[serde(default = "default_entities")]
    pub entities: u32,
    /// Inline: RFC 3339 time; event *i* then happens at `start_time + i / rate` (needs
    /// `rate`).
    /// Default: none (wall clock: event time is the wall clock at generation).
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// Largest chunk generated at once (capped at `batch.max_rows` when the agent runs).
    /// Each chunk carries its stream's checkpoint (rows emitted and the clock's start), so a
    /// restarted agent continues the same output.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Inline: table of columns, in order: `name = { type = "...", ... }` — every field type
    /// of [SIMULATION.md](SIMULATION.md#fields) except `attribute` and `parent`.
    /// Default: required inline.
    #[serde(default, deserialize_with = "sluice_ops::config::tagged::map")]
    pub fields: IndexMap<String, FieldSpec>,
    #[serde(skip)]
    compiled: OnceLock<Arc<Scenario>>,
}

fn default_entities() -> u32 {
    1
}
fn default_chunk_rows() -> usize {
    8192
}

impl SimulatorConfig {
    /// Check values that serde cannot; `key` is this source's config path. Compiles the
    /// scenario (reading its file), so that every error shows at load.
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.chunk_rows == 0 {
            return Err(Invalid::new(
                format!("{key}.chunk_rows"),
                "must be at least 1",
            ));
        }
        if self.scenario.is_some() {
            for (k, set) in [
                ("fields", !self.fields.is_empty()),
                ("rate", self.rate.is_some()),
                ("start_time", self.start_time.is_some()),
                ("stream", self.stream.is_some()),
                ("seed", self.seed != 0),
                ("entities", self.entities != 1),
            ] {
                if set {
                    return Err(Invalid::new(
                        format!("{key}.{k}"),
                        "is set by the scenario file, not here",
                    ));
                }
            }
        } else {
            self.validate_inline(key)?;
        }
        self.scenario().map(|_| ()).map_err(|e| match e {
            CompileError::Inline(i) => Invalid::new(format!("{key}.{}", i.key), i.message),
            CompileError::File(e) => Invalid::new(format!("{key}.scenario"), e.to_string()),
        })?;
        Ok(())
    }

    fn validate_inline(&self, key: &str) -> Result<(), Invalid> {
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(Invalid::new(
                format!("{key}.rate"),
                "must be a positive number",
            ));
        }
        if self.entities == 0 {
            return Err(Invalid::new(
                format!("{key}.entities"),
                "must be at least 1",
            ));
        }
        if self.start_time.is_some() && self.rate.is_none() {
            return Err(Invalid::new(
                format!("{key}.start_time"),
                "a simulated clock needs `rate` to space events",
            ));
        }
        if self.fields.is_empty() {
            return Err(Invalid::new(
                format!("{key}.fields"),
                "at least one field is required (or a `scenario` file)",
            ));
        }
        // Each field is checked by the scenario compiler (errors keyed `fields.NAME`).
        Ok(())
    }

    /// Make a relative scenario path relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.scenario
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
    }

    /// The compiled scenario (compiled once).
    pub fn scenario(&self) -> Result<Arc<Scenario>, CompileError> {
        if let Some(s) = self.compiled.get() {
            return Ok(s.clone());
        }
        let compiled = Arc::new(match &self.scenario {
            Some(path) => scenario::compile_file(path, None).map_err(CompileError::File)?,
            None => Scenario::compile(&self.inline_spec(), true).map_err(|e| {
                // Keys of the one inline stream are this source's keys.
                let key = e
                    .key
                    .strip_prefix(&format!("streams.{INLINE}."))
                    .unwrap_or(&e.key)
                    .to_string();
                CompileError::Inline(Invalid::new(key, e.message))
            })?,
        });
        let _ = self.compiled.set(compiled.clone());
        Ok(compiled)
    }

    /// This config with its compiled scenario forgotten (after changing it).
    pub fn recompiled(mut self) -> Self {
        self.compiled = OnceLock::new();
        self
    }

    /// The one-stream scenario an inline source declares.
    fn inline_spec(&self) -> ScenarioSpec {
        let mut entities = IndexMap::new();
        entities.insert(
            INLINE.to_string(),
            EntitySpec {
                count: self.entities.max(1),
                id: Some("entity-{index:04}".into()),
                attributes: IndexMap::new(),
            },
        );
        let rate = self.rate.map(|r| RateSpec {
            kind: RateKind::Constant,
            per_second: Some(r / f64::from(self.entities.max(1))),
            per_minute: None,
            per_hour: None,
            every: None,
            peak_hour: None,
            trough: None,
            weekend: None,
        });
        let mut streams = IndexMap::new();
        streams.insert(
            INLINE.to_string(),
            StreamSpec {
                entity: Some(INLINE.into()),
                rate,
                parent: None,
                late: None,
                fields: self.fields.clone(),
                anomalies: Vec::new(),
            },
        );
        ScenarioSpec {
            seed: self.seed,
            start: self.start_time,
            end: None,
            entities,
            streams,
        }
    }

    /// The agent streams this source feeds, in the scenario's stream order.
    pub fn stream_names(&self, source_name: &str) -> Vec<String> {
        match (&self.scenario, self.scenario()) {
            (Some(_), Ok(s)) => s
                .stream_names()
                .map(|n| format!("{}{n}", self.stream_prefix.as_deref().unwrap_or("")))
                .collect(),
            (Some(_), Err(_)) => Vec::new(),
            (None, _) => vec![
                self.stream
                    .clone()
                    .unwrap_or_else(|| source_name.to_string()),
            ],
        }
    }

    /// The schema of each stream, in [`Self::stream_names`] order.
    pub fn schemas(&self) -> Vec<SchemaRef> {
        match self.scenario() {
            Ok(s) => (0..s.stream_names().count()).map(|i| s.schema(i)).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The schema of an inline source's stream.
    #[cfg(test)]
    pub fn schema(&self) -> SchemaRef {
        self.schemas()
            .into_iter()
            .next()
            .unwrap_or_else(|| Arc::new(arrow_schema::Schema::empty()))
    }

    /// A run of this source: bounded by `total`, clock starting now unless the scenario
    /// says when.
    pub fn simulation(&self, threads: usize) -> Result<Simulation, CompileError> {
        self.simulation_from(threads, Utc::now().timestamp_micros())
    }

    /// A run whose clock starts at `start_us` unless the scenario says when (a resumed
    /// run passes its first start, so it regenerates the same rows).
    pub fn simulation_from(
        &self,
        threads: usize,
        start_us: i64,
    ) -> Result<Simulation, CompileError> {
        Ok(Simulation::new(
            self.scenario()?,
            RunOptions {
                start_us,
                rows: self.total,
                end_us: None,
                threads,
            },
        ))
    }
}

/// The stream (and entity set) name of an inline source's one-stream scenario.
const INLINE: &str = "inline";

/// Why a simulator source's scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// An inline source's keys do not make a valid stream; the key is relative to the
    /// source (`fields.temp.max`).
    #[error("{}: {}", .0.key, .0.message)]
    Inline(Invalid),
    /// The `scenario` file cannot be read, parsed or compiled.
    #[error(transparent)]
    File(ScenarioError),
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow_array::RecordBatch;

    fn config(text: &str) -> SimulatorConfig {
        toml::from_str(text).expect("valid simulator config")
    }

    fn run(cfg: &SimulatorConfig, rows: Option<u64>, threads: usize) -> Simulation {
        Simulation::new(
            cfg.scenario().expect("compiles"),
            RunOptions {
                start_us: 0,
                rows,
                end_us: None,
                threads,
            },
        )
    }

    fn chunk(sim: &mut Simulation, n: usize) -> Option<RecordBatch> {
        match sim.step(n, None).expect("step") {
            Step::Rows { batch, .. } => Some(batch),
            Step::Done => None,
            Step::Wait(_) => panic!("no clock was given"),
        }
    }

    const SAMPLE: &str = r#"
        seed = 42
        entities = 7
        rate = 1000
        start_time = "2026-01-01T00:00:00Z"
        [fields]
        ts = { type = "timestamp" }
        seq = { type = "sequence" }
        host = { type = "fake", fake = "hostname", per = "entity" }
        device = { type = "entity", prefix = "dev-" }
        ip = { type = "fake", fake = "ipv4" }
        region = { type = "choice", values = ["eu", "us", "ap"], weights = [5, 3, 2], per = "entity" }
        load = { type = "normal", mean = 40.0, stddev = 10.0, min = 0.0, max = 100.0 }
        latency = { type = "lognormal", mu = 3.0, sigma = 0.5 }
        errors = { type = "poisson", lambda = 1.5 }
        bytes = { type = "uniform", min = 0, max = 1000000, integer = true }
        ratio = { type = "uniform", min = 0.0, max = 1.0 }
        status = { type = "choice", values = [200, 404, 500], weights = [90, 7, 3] }
        up = { type = "constant", value = true }
    "#;

    fn generate(cfg: &SimulatorConfig, rows: usize, size: usize) -> Vec<RecordBatch> {
        let mut sim = run(cfg, Some(rows as u64), 1);
        std::iter::from_fn(|| chunk(&mut sim, size)).collect()
    }

    #[test]
    fn deterministic_whatever_the_chunk_size() {
        let cfg = config(SAMPLE);
        cfg.validate("s").expect("valid");
        let schema = cfg.schema();
        let a = arrow_select::concat::concat_batches(&schema, &generate(&cfg, 10_000, 10_000))
            .expect("concat");
        let b = arrow_select::concat::concat_batches(&schema, &generate(&cfg, 10_000, 333))
            .expect("concat");
        assert_eq!(a, b);
        assert_eq!(a.num_columns(), 13);
    }

    #[test]
    fn total_bounds_the_source() {
        let mut cfg = config(SAMPLE);
        cfg.total = Some(25);
        let mut sim = cfg.simulation(1).expect("compiles");
        assert_eq!(chunk(&mut sim, 10).expect("rows").num_rows(), 10);
        assert_eq!(chunk(&mut sim, 100).expect("rows").num_rows(), 15);
        assert!(chunk(&mut sim, 100).is_none());
        assert_eq!(sim.rows_emitted(), 25);
    }

    #[test]
    fn distributions_have_the_configured_moments() {
        let cfg = config(SAMPLE);
        let batch =
            arrow_select::concat::concat_batches(&cfg.schema(), &generate(&cfg, 200_000, 8192))
                .expect("concat");
        let load = batch
            .column_by_name("load")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::Float64Array>())
            .expect("load is f64");
        let n = load.len() as f64;
        let mean = load.values().iter().sum::<f64>() / n;
        let var = load
            .values()
            .iter()
            .map(|v| (v - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((mean - 40.0).abs() < 0.2, "mean {mean}");
        assert!((var.sqrt() - 10.0).abs() < 0.2, "stddev {}", var.sqrt());
        assert!(load.values().iter().all(|v| (0.0..=100.0).contains(v)));

        let errors = batch
            .column_by_name("errors")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>())
            .expect("errors is i64");
        let mean = errors.values().iter().sum::<i64>() as f64 / n;
        assert!((mean - 1.5).abs() < 0.02, "poisson mean {mean}");

        let status = batch
            .column_by_name("status")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::Int64Array>())
            .expect("status is i64");
        let ok = status.values().iter().filter(|v| **v == 200).count() as f64 / n;
        assert!((ok - 0.90).abs() < 0.01, "share of 200s {ok}");

        // Per-entity values are constant for an entity; entity i is row i % entities.
        let host = batch
            .column_by_name("host")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>())
            .expect("host is utf8");
        for i in 0..100 {
            assert_eq!(host.value(i), host.value(i + 7));
        }
        let device = batch
            .column_by_name("device")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>())
            .expect("device is utf8");
        assert_eq!(device.value(3), "dev-0003");
    }

    #[test]
    fn timestamps_carry_the_offset_zone() {
        // "UTC" would need arrow's chrono-tz feature, which a standalone agent build lacks
        // (the workspace build hides that by unifying features with the processor's).
        let cfg = config(SAMPLE);
        assert_eq!(
            cfg.schema().field(0).data_type(),
            &arrow_schema::DataType::Timestamp(
                arrow_schema::TimeUnit::Microsecond,
                Some(sluice_protocol::UTC.into())
            )
        );
        let batch = generate(&cfg, 2, 2).remove(0);
        assert_eq!(batch.schema(), cfg.schema());
    }

    #[test]
    fn simulated_clock_spaces_events_by_rate() {
        let cfg = config(SAMPLE);
        let batch = generate(&cfg, 3, 3).remove(0);
        let ts = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::TimestampMicrosecondArray>()
            .expect("timestamp column");
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("date")
            .timestamp_micros();
        assert_eq!(
            ts.values().to_vec(),
            vec![start, start + 1000, start + 2000]
        );
    }
}

//! The built-in telemetry simulator: typed fields drawn from distributions and `fake` values,
//! generated column by column straight into Arrow arrays.
//!
//! Determinism: every field draws from its own random stream, seeded from the source seed
//! and the field name, and rows are generated in order. The same config and seed therefore
//! produce the same rows whatever the chunk size or pacing.

// Used by the scenario engine being built on top of it (issue 4).
#[allow(dead_code)]
mod anomaly;
#[allow(dead_code)]
mod expr;
mod fake_value;
mod field;
#[allow(dead_code)]
mod scenario;
#[allow(dead_code)]
mod schedule;

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Deserialize;

pub use fake_value::FakeKind;
pub use field::FieldSpec;

use crate::config::Invalid;
use field::FieldGenerator;

/// `[sources.NAME] type = "simulator"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Stream to feed; defaults to the source name.
    #[serde(default)]
    pub stream: Option<String>,
    /// Transforms applied to this source's rows, in order (`[transforms.NAME]`).
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Events per second across all entities; absent means as fast as the pipeline takes.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Stop after this many events; absent means run until the agent stops.
    #[serde(default)]
    pub total: Option<u64>,
    /// Seed of every random draw.
    #[serde(default)]
    pub seed: u64,
    /// Number of simulated entities (hosts, devices, ...); rows cycle through them.
    #[serde(default = "default_entities")]
    pub entities: u32,
    /// When set, event time is simulated: event `i` happens at `start_time + i / rate`.
    /// When absent, event time is the wall clock at generation.
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// Largest chunk generated at once (the batcher still cuts batches by its own limits).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Columns, in order.
    #[serde(deserialize_with = "crate::tagged::map")]
    pub fields: IndexMap<String, FieldSpec>,
}

fn default_entities() -> u32 {
    1
}
fn default_chunk_rows() -> usize {
    8192
}

impl SimulatorConfig {
    /// Check values that serde cannot; `key` is this source's config path.
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
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
        if self.chunk_rows == 0 {
            return Err(Invalid::new(
                format!("{key}.chunk_rows"),
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
                "at least one field is required",
            ));
        }
        for (name, spec) in &self.fields {
            let fkey = format!("{key}.fields.{name}");
            if name.starts_with('_') {
                return Err(Invalid::new(
                    fkey,
                    "names starting with '_' are reserved for columns the lake adds",
                ));
            }
            spec.validate().map_err(|m| Invalid::new(fkey, m))?;
        }
        Ok(())
    }

    /// The Arrow schema of the rows this source produces.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|(name, spec)| spec.arrow_field(name))
                .collect::<Vec<_>>(),
        ))
    }
}

/// Generates the rows of one simulator source, chunk by chunk.
pub struct Simulator {
    schema: SchemaRef,
    fields: Vec<FieldGenerator>,
    entities: u32,
    /// Index of the next event.
    next: u64,
    total: Option<u64>,
    clock: Clock,
}

/// Where event time comes from.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Wall,
    Simulated { start_us: i64, step_us: f64 },
}

impl Simulator {
    /// Build a simulator from a validated config.
    pub fn new(cfg: &SimulatorConfig) -> Self {
        let clock = match (cfg.start_time, cfg.rate) {
            (Some(start), Some(rate)) => Clock::Simulated {
                start_us: start.timestamp_micros(),
                step_us: 1e6 / rate,
            },
            _ => Clock::Wall,
        };
        Self {
            schema: cfg.schema(),
            fields: cfg
                .fields
                .iter()
                .map(|(name, spec)| FieldGenerator::new(name, spec, cfg.seed, cfg.entities))
                .collect(),
            entities: cfg.entities,
            next: 0,
            total: cfg.total,
            clock,
        }
    }

    /// Events generated so far.
    pub fn produced(&self) -> u64 {
        self.next
    }

    /// Events still to generate, if the source is bounded.
    pub fn remaining(&self) -> Option<u64> {
        self.total.map(|t| t.saturating_sub(self.next))
    }

    /// Generate the next `n` events (fewer if the source's total is reached).
    pub fn next_chunk(&mut self, n: usize) -> Result<Option<RecordBatch>, ArrowError> {
        let n = match self.remaining() {
            Some(0) => return Ok(None),
            Some(r) => n.min(usize::try_from(r).unwrap_or(usize::MAX)),
            None => n,
        };
        if n == 0 {
            return Ok(None);
        }
        let ctx = field::ChunkContext {
            first: self.next,
            len: n,
            entities: self.entities,
            event_time_us: self.event_times(n),
        };
        let columns = self
            .fields
            .iter_mut()
            .map(|f| f.generate(&ctx))
            .collect::<Result<Vec<_>, _>>()?;
        self.next += n as u64;
        RecordBatch::try_new(self.schema.clone(), columns).map(Some)
    }

    fn event_times(&self, n: usize) -> Vec<i64> {
        match self.clock {
            Clock::Wall => {
                let now = Utc::now().timestamp_micros();
                vec![now; n]
            }
            Clock::Simulated { start_us, step_us } => (0..n as u64)
                .map(|i| start_us + (((self.next + i) as f64) * step_us).round() as i64)
                .collect(),
        }
    }

    /// How many events are due `elapsed` after the source started, at `rate` per second.
    pub fn due(rate: f64, elapsed: Duration) -> u64 {
        (rate * elapsed.as_secs_f64()).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> SimulatorConfig {
        toml::from_str(text).expect("valid simulator config")
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

    fn generate(cfg: &SimulatorConfig, rows: usize, chunk: usize) -> Vec<RecordBatch> {
        let mut sim = Simulator::new(cfg);
        let mut out = Vec::new();
        let mut left = rows;
        while left > 0 {
            let b = sim
                .next_chunk(chunk.min(left))
                .expect("chunk")
                .expect("rows");
            left -= b.num_rows();
            out.push(b);
        }
        out
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
        let mut sim = Simulator::new(&cfg);
        assert_eq!(
            sim.next_chunk(10).expect("ok").expect("rows").num_rows(),
            10
        );
        assert_eq!(
            sim.next_chunk(100).expect("ok").expect("rows").num_rows(),
            15
        );
        assert!(sim.next_chunk(100).expect("ok").is_none());
        assert_eq!(sim.produced(), 25);
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

//! Scenario files: the TOML language of simulations (docs/SIMULATION.md), parsed and checked.
//!
//! A scenario names **entity** sets (devices, hosts, customers: a count, an id pattern and
//! attributes drawn once per entity) and **streams** of events. A root stream's events come
//! from each entity of its set at a rate (constant, Poisson or diurnal); a child stream's
//! events follow another stream's events (orders → payments → shipments) and can copy their
//! values, so keys stay consistent. Fields say what each column holds; anomalies change
//! values or event rates on a schedule or at a probability, and label the rows they touch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Deserialize;

use super::field::FieldSpec;

/// A scenario file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Seed of every random draw: the same scenario and seed give the same rows.
    #[serde(default)]
    pub seed: u64,
    /// Start of the simulated clock; absent: when the simulation starts.
    #[serde(default)]
    pub start: Option<DateTime<Utc>>,
    /// End of the simulated clock (exclusive); absent: no end.
    #[serde(default)]
    pub end: Option<DateTime<Utc>>,
    /// Entity sets by name (`[entities.NAME]`), which root streams' events come from.
    #[serde(default)]
    pub entities: IndexMap<String, EntitySpec>,
    /// Streams by name (`[streams.NAME]`), in the order outputs list them.
    pub streams: IndexMap<String, StreamSpec>,
}

/// `[entities.NAME]`: a set of similar things that emit events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    pub count: u32,
    /// Id pattern: `{index}` (or `{index:05}`, zero-padded) is replaced by the entity's index.
    /// Default: `NAME-{index:04}`.
    #[serde(default)]
    pub id: Option<String>,
    /// Values drawn once per entity (`fake`, `choice`, `uniform`, ...).
    #[serde(default, deserialize_with = "sluice_ops::config::tagged::map")]
    pub attributes: IndexMap<String, FieldSpec>,
}

/// `[streams.NAME]`: one stream of events, one table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The entity set whose members emit this stream's events (root streams); absent: a
    /// single anonymous entity.
    #[serde(default)]
    pub entity: Option<String>,
    /// How often each entity emits an event (root streams).
    #[serde(default)]
    pub rate: Option<RateSpec>,
    /// Events that follow another stream's events (child streams).
    #[serde(default)]
    pub parent: Option<ParentSpec>,
    /// Some events arrive late, out of order.
    #[serde(default)]
    pub late: Option<LateSpec>,
    #[serde(deserialize_with = "sluice_ops::config::tagged::map")]
    pub fields: IndexMap<String, FieldSpec>,
    #[serde(default)]
    pub anomalies: Vec<AnomalySpec>,
}

/// `rate = { type = "...", per_second = ... }`: events per entity over time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    #[serde(rename = "type")]
    pub kind: RateKind,
    /// Give exactly one of `per_second`, `per_minute`, `per_hour` or `every`. For
    /// `diurnal` it is the rate at the peak hour.
    #[serde(default)]
    pub per_second: Option<f64>,
    #[serde(default)]
    pub per_minute: Option<f64>,
    #[serde(default)]
    pub per_hour: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// `diurnal`: the hour (UTC, may be fractional) of the highest rate. Default 14.
    #[serde(default)]
    pub peak_hour: Option<f64>,
    /// `diurnal`: the lowest rate as a fraction of the peak. Default 0.2.
    #[serde(default)]
    pub trough: Option<f64>,
    /// `diurnal`: factor on Saturdays and Sundays. Default 1.
    #[serde(default)]
    pub weekend: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKind {
    /// Evenly spaced; entities are staggered across the interval.
    Constant,
    /// Exponential gaps with the given mean rate.
    Poisson,
    /// Poisson with a rate following the time of day (and optionally the weekend).
    Diurnal,
}

impl RateSpec {
    /// Events per second per entity, or why the rate is not given exactly once.
    pub fn per_second(&self) -> Result<f64, String> {
        let given: Vec<f64> = [
            self.per_second,
            self.per_minute.map(|m| m / 60.0),
            self.per_hour.map(|h| h / 3600.0),
            self.every.map(|d| 1.0 / d.as_secs_f64()),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given[..] {
            [r] if r.is_finite() && r > 0.0 => Ok(r),
            [r] => Err(format!("the rate must be positive, got {r}")),
            [] => Err("give one of per_second, per_minute, per_hour or every".into()),
            _ => Err("give only one of per_second, per_minute, per_hour or every".into()),
        }
    }
}

/// `parent = { stream = "orders", ... }`: each event of `stream` is followed by events of
/// this stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentSpec {
    pub stream: String,
    /// Chance that a parent event has followers at all. Default 1.
    #[serde(default = "one")]
    pub probability: f64,
    /// How many followers (uniform in `[min, max]`). Default 1.
    #[serde(default = "one_u32")]
    pub min: u32,
    #[serde(default = "one_u32")]
    pub max: u32,
    /// Time from the parent event to each follower.
    pub delay: DelaySpec,
}

fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}

/// `delay = { type = "...", ... }`: a random duration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelaySpec {
    #[serde(rename = "type")]
    pub kind: DelayKind,
    /// `constant`: the delay.
    #[serde(default, with = "humantime_serde")]
    pub after: Option<Duration>,
    /// `uniform`: the bounds.
    #[serde(default, with = "humantime_serde")]
    pub min: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max: Option<Duration>,
    /// `exponential`: the mean.
    #[serde(default, with = "humantime_serde")]
    pub mean: Option<Duration>,
    /// `lognormal`: the median and the spread (σ of the log).
    #[serde(default, with = "humantime_serde")]
    pub median: Option<Duration>,
    #[serde(default)]
    pub sigma: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DelayKind {
    Constant,
    Uniform,
    Exponential,
    Lognormal,
}

/// `late = { fraction = 0.01, max_delay = "5m" }`: that fraction of events is emitted up to
/// `max_delay` after its event time, behind later events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateSpec {
    pub fraction: f64,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

/// `[[streams.NAME.anomalies]]`: an injected anomaly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalySpec {
    #[serde(rename = "type")]
    pub kind: AnomalyKind,
    /// The label written to `_anomaly` (default: the type).
    #[serde(default)]
    pub name: Option<String>,
    /// The numeric field changed (`spike`, `drift`, `stuck`).
    #[serde(default)]
    pub field: Option<String>,
    /// `spike`: added to the value.
    #[serde(default)]
    pub magnitude: Option<f64>,
    /// `spike`: multiplies the value; `burst`: multiplies the event rate.
    #[serde(default)]
    pub factor: Option<f64>,
    /// `drift`: added per hour since the anomaly began.
    #[serde(default)]
    pub per_hour: Option<f64>,
    /// Scheduled: when it starts (and, with `every`, starts again).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// Random: the chance that an event starts the anomaly for its entity.
    #[serde(default)]
    pub probability: Option<f64>,
    /// How long it lasts; absent for a `spike`: that one event.
    #[serde(default, with = "humantime_serde")]
    pub duration: Option<Duration>,
    /// Scheduled: how many entities it strikes (chosen by the seed). Default 1.
    #[serde(default)]
    pub entities: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// The value jumps (`magnitude` added, or times `factor`).
    Spike,
    /// The value wanders off by `per_hour`.
    Drift,
    /// The value freezes at its last value before the anomaly.
    Stuck,
    /// The entity sends nothing; the first event after the gap is labelled.
    Dropout,
    /// The entity sends `factor` times as many events.
    Burst,
}

impl AnomalyKind {
    pub fn label(self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::Drift => "drift",
            AnomalyKind::Stuck => "stuck",
            AnomalyKind::Dropout => "dropout",
            AnomalyKind::Burst => "burst",
        }
    }

    /// Whether the anomaly changes a field's values (rather than the events).
    pub fn on_field(self) -> bool {
        matches!(
            self,
            AnomalyKind::Spike | AnomalyKind::Drift | AnomalyKind::Stuck
        )
    }
}

/// Why a scenario cannot be used: the file, the line when known, the key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not TOML, or not shaped like a scenario (unknown key, wrong type).
    #[error("invalid scenario {path}: {message}")]
    Parse {
        /// The scenario file.
        path: PathBuf,
        /// The TOML parser's message, which carries the line.
        message: String,
    },
    /// The scenario parses but a check refuses it (an unknown entity set, a cycle of
    /// parents, a bad field parameter, ...).
    #[error("invalid scenario {}{}: {key}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// 1-based line of `key` in the file; `None` when it cannot be found.
        line: Option<usize>,
        /// The refused key, dotted (`streams.cpu.rate`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ScenarioSpec {
    /// Read and parse a scenario file (checks follow in [`super::Scenario::compile`]).
    pub fn load(path: &Path) -> Result<(Self, String), ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let spec = toml::from_str(&text).map_err(|e: toml::de::Error| ScenarioError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Ok((spec, text))
    }
}

/// Load and compile a scenario file (with another seed if given); errors carry the file's
/// line of the offending key.
pub fn compile_file(
    path: &Path,
    seed: Option<u64>,
) -> Result<super::engine::Scenario, ScenarioError> {
    let (mut spec, text) = ScenarioSpec::load(path)?;
    if let Some(seed) = seed {
        spec.seed = seed;
    }
    super::engine::Scenario::compile(&spec, false).map_err(|e| ScenarioError::Invalid {
        path: path.to_path_buf(),
        line: line_of(&text, &e.key),
        key: e.key,
        message: e.message,
    })
}

pub use sluice_ops::config::line_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_keys() {
        let text = "seed = 1\n\n[streams.cpu]\nrate = { type = \"constant\", every = \"10s\" }\n[streams.cpu.fields]\nload = { type = \"normal\", mean = 1.0, stddev = -1.0 }\n\n[[streams.cpu.anomalies]]\ntype = \"spike\"\n[[streams.cpu.anomalies]]\ntype = \"drift\"\nfield = \"load\"\n";
        assert_eq!(line_of(text, "seed"), Some(1));
        assert_eq!(line_of(text, "streams.cpu.rate"), Some(4));
        assert_eq!(line_of(text, "streams.cpu.fields.load"), Some(6));
        assert_eq!(line_of(text, "streams.cpu.anomalies.1.field"), Some(12));
        // A key that is not written (a default) points at its closest written parent.
        assert_eq!(line_of(text, "streams.cpu.fields.load.max"), Some(6));
    }

    #[test]
    fn rates_need_exactly_one_unit() {
        let rate = |t: &str| -> RateSpec { toml::from_str(t).expect("rate") };
        assert_eq!(
            rate("type = \"poisson\"\nper_minute = 30").per_second(),
            Ok(0.5)
        );
        assert_eq!(
            rate("type = \"constant\"\nevery = \"10s\"").per_second(),
            Ok(0.1)
        );
        assert!(
            rate("type = \"constant\"")
                .per_second()
                .unwrap_err()
                .contains("give one of")
        );
        assert!(
            rate("type = \"constant\"\nper_second = 1\nevery = \"1s\"")
                .per_second()
                .unwrap_err()
                .contains("only one")
        );
    }
}

//! Field specifications: what a column holds, and the checks of their parameters. The
//! generators that make their values are in `generator.rs`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use indexmap::IndexMap;
use serde::Deserialize;

use super::FakeKind;

/// Whether a value is drawn for every event or once per entity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    #[default]
    Event,
    Entity,
}

/// A literal value in a config (`constant`, `choice`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn data_type(&self) -> DataType {
        match self {
            Scalar::Bool(_) => DataType::Boolean,
            Scalar::Int(_) => DataType::Int64,
            Scalar::Float(_) => DataType::Float64,
            Scalar::Str(_) => DataType::Utf8,
        }
    }
}

/// What one column holds: `name = { type = "...", ... }` under `fields`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FieldSpec {
    /// Event time (wall clock, or the simulated clock when `start_time` is set).
    Timestamp {},
    /// A counter over the stream's events (`per = "entity"`: over each entity's events):
    /// `start`, `start + 1`, ...
    Sequence {
        /// The first value.
        #[serde(default = "one")]
        start: i64,
        /// `"event"` counts over the stream, `"entity"` over each entity's events.
        #[serde(default)]
        per: Per,
    },
    /// The entity's id (from its set's `id` pattern); with `prefix` and/or `width`:
    /// `prefix` + the zero-padded entity index.
    Entity {
        /// Text before the index; `None`: nothing.
        #[serde(default)]
        prefix: Option<String>,
        /// Digits the index is zero-padded to, at most 20; `None`: no padding.
        #[serde(default)]
        width: Option<usize>,
    },
    /// An attribute of the event's entity (`[entities.NAME.attributes]`).
    Attribute {
        /// The attribute's key in the entity set's `attributes`.
        name: String,
    },
    /// A field of the parent event (child streams).
    Parent {
        /// The name of a field of the parent stream.
        field: String,
    },
    /// A value computed from the row's other fields (see `expr.rs`).
    Expr {
        /// The expression's source text, checked when the scenario loads.
        expr: String,
    },
    /// Per entity, a value that wanders: each event adds Normal(0, `step`) and pulls back
    /// towards `mean` by `mean_reversion` (0..1) of the distance, within `[min, max]`.
    RandomWalk {
        /// Each entity's first value.
        start: f64,
        /// Standard deviation of each event's move, above 0.
        step: f64,
        /// Lower bound the walk is held at; `None`: unbounded.
        #[serde(default)]
        min: Option<f64>,
        /// Upper bound the walk is held at; `None`: unbounded.
        #[serde(default)]
        max: Option<f64>,
        /// Share of the distance to `mean` taken back at each event, within 0..1; 0 (the
        /// default) is a pure random walk.
        #[serde(default)]
        mean_reversion: f64,
        /// The level `mean_reversion` pulls towards; `None`: `start`.
        #[serde(default)]
        mean: Option<f64>,
    },
    /// Daily and weekly waves, a trend and noise.
    Seasonal(SeasonalSpec),
    /// The same value in every row.
    Constant {
        /// The value; its TOML type (bool, int, float, string) gives the column's.
        value: Scalar,
    },
    /// Uniform in `[min, max)`; `integer = true` gives whole numbers in `[min, max]`.
    Uniform {
        /// Lowest value, included.
        min: f64,
        /// Highest value, excluded unless `integer`.
        max: f64,
        /// Whole numbers in an int64 column rather than float64.
        #[serde(default)]
        integer: bool,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// Normal(mean, stddev), optionally clamped to `[min, max]`.
    Normal {
        /// Centre of the distribution.
        mean: f64,
        /// Standard deviation, above 0.
        stddev: f64,
        /// Values below are raised to it; `None`: no clamp.
        #[serde(default)]
        min: Option<f64>,
        /// Values above are lowered to it; `None`: no clamp.
        #[serde(default)]
        max: Option<f64>,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// Log-normal: `exp(Normal(mu, sigma))`.
    Lognormal {
        /// Mean of the underlying normal (of the value's logarithm).
        mu: f64,
        /// Standard deviation of the underlying normal, above 0.
        sigma: f64,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// Poisson counts with mean `lambda`.
    Poisson {
        /// Mean count, above 0.
        lambda: f64,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// One of `values`, with optional relative `weights`.
    Choice {
        /// The candidates, not empty and all of one type.
        values: Vec<Scalar>,
        /// One non-negative weight per value, in any unit; `None`: equally likely.
        #[serde(default)]
        weights: Option<Vec<f64>>,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// A realistic fake value (hostname, ipv4, email, ...).
    Fake {
        /// Which kind of value.
        fake: FakeKind,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// The event's calendar day (UTC), from its time.
    Date {},
    /// A decimal uniform in `[min, max]` with `scale` digits after the point, `precision`
    /// digits in all (at most 38).
    Decimal {
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
        /// Digits in all, 1..=38.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: i8,
        /// `"entity"`: drawn once per entity rather than per event.
        #[serde(default)]
        per: Per,
    },
    /// A list of `min_len..=max_len` values of `item` per event (`item` is a field spec:
    /// `{ type = "choice", values = [...] }`).
    List {
        /// What each element holds.
        #[serde(deserialize_with = "sluice_ops::config::tagged::one")]
        item: Box<FieldSpec>,
        /// Fewest elements (default 0).
        #[serde(default)]
        min_len: usize,
        /// Most elements, at most 1,000.
        max_len: usize,
    },
    /// Labels to values: each of `keys`, with a value of `value` (a field spec).
    Map {
        /// The labels, not empty, each once.
        keys: Vec<String>,
        /// What each label's value holds.
        #[serde(deserialize_with = "sluice_ops::config::tagged::one")]
        value: Box<FieldSpec>,
    },
    /// Named sub-fields, each a field spec of its own (`fields = { x = { type = ... } }`).
    Struct {
        /// The sub-fields, in order, not empty.
        #[serde(deserialize_with = "sluice_ops::config::tagged::map")]
        fields: IndexMap<String, FieldSpec>,
    },
}

/// Most elements a list field may hold per event.
const MAX_LIST_LEN: usize = 1_000;

fn one() -> i64 {
    1
}
/// `mean` plus daily and weekly cosine waves (peaking at `peak_hour` and on `peak_weekday`,
/// 0 = Monday), a linear trend per day since the start, and Normal noise.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeasonalSpec {
    pub(crate) mean: f64,
    #[serde(default)]
    pub(crate) daily: f64,
    #[serde(default)]
    pub(crate) weekly: f64,
    #[serde(default = "default_peak_hour")]
    pub(crate) peak_hour: f64,
    #[serde(default = "default_peak_weekday")]
    pub(crate) peak_weekday: f64,
    #[serde(default)]
    pub(crate) trend_per_day: f64,
    #[serde(default)]
    pub(crate) noise: f64,
}

impl SeasonalSpec {
    fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("mean", self.mean),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("trend_per_day", self.trend_per_day),
        ] {
            if !v.is_finite() {
                return Err(format!("{k} must be a finite number"));
            }
        }
        let Self {
            noise,
            peak_hour,
            peak_weekday,
            ..
        } = *self;
        if !(noise.is_finite() && noise >= 0.0) {
            return Err(format!("noise must be >= 0, got {noise}"));
        }
        if !(0.0..24.0).contains(&peak_hour) {
            return Err(format!("peak_hour must be within 0..24, got {peak_hour}"));
        }
        if !(0.0..7.0).contains(&peak_weekday) {
            return Err(format!(
                "peak_weekday must be within 0..7 (0 = Monday), got {peak_weekday}"
            ));
        }
        Ok(())
    }
}

fn default_peak_hour() -> f64 {
    14.0
}
fn default_peak_weekday() -> f64 {
    2.0
}

/// Check a field inside a list, map or struct: generated on its own, so it cannot read the
/// stream's entities' attributes, its parent or other fields.
fn check_nested(key: &str, spec: &FieldSpec) -> Result<(), String> {
    if matches!(
        spec,
        FieldSpec::Attribute { .. } | FieldSpec::Parent { .. } | FieldSpec::Expr { .. }
    ) || spec.per() == Per::Entity
    {
        return Err(format!(
            "{key}: a nested field is drawn per value: no attribute, parent, expr or per = \"entity\""
        ));
    }
    spec.validate().map_err(|e| format!("{key}: {e}"))
}

impl FieldSpec {
    /// Check the parameters; the error is a message about this field.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        match self {
            FieldSpec::Uniform {
                min, max, integer, ..
            } => {
                finite("min", *min)?;
                finite("max", *max)?;
                if integer.then_some(min > max).unwrap_or(min >= max) {
                    return Err(format!("min ({min}) must be below max ({max})"));
                }
            }
            FieldSpec::Normal {
                mean,
                stddev,
                min,
                max,
                ..
            } => {
                finite("mean", *mean)?;
                if !(stddev.is_finite() && *stddev > 0.0) {
                    return Err(format!("stddev must be > 0, got {stddev}"));
                }
                if let (Some(lo), Some(hi)) = (min, max)
                    && lo >= hi
                {
                    return Err(format!("min ({lo}) must be below max ({hi})"));
                }
            }
            FieldSpec::Lognormal { mu, sigma, .. } => {
                finite("mu", *mu)?;
                if !(sigma.is_finite() && *sigma > 0.0) {
                    return Err(format!("sigma must be > 0, got {sigma}"));
                }
            }
            FieldSpec::Poisson { lambda, .. } if !(lambda.is_finite() && *lambda > 0.0) => {
                return Err(format!("lambda must be > 0, got {lambda}"));
            }
            FieldSpec::Choice {
                values, weights, ..
            } => {
                let first = values
                    .first()
                    .ok_or_else(|| "values must not be empty".to_string())?;
                if values.iter().any(|v| v.data_type() != first.data_type()) {
                    return Err("values must all have the same type".into());
                }
                if let Some(w) = weights {
                    if w.len() != values.len() {
                        return Err(format!(
                            "weights has {} entries but values has {}",
                            w.len(),
                            values.len()
                        ));
                    }
                    if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0
                    {
                        return Err("weights must be non-negative with a positive sum".into());
                    }
                }
            }
            FieldSpec::Entity { width: Some(w), .. } if *w > 20 => {
                return Err("width must be at most 20".into());
            }
            FieldSpec::RandomWalk {
                start,
                step,
                min,
                max,
                mean_reversion,
                mean,
            } => {
                finite("start", *start)?;
                if !(step.is_finite() && *step > 0.0) {
                    return Err(format!("step must be > 0, got {step}"));
                }
                if !(0.0..=1.0).contains(mean_reversion) {
                    return Err(format!(
                        "mean_reversion must be within 0..1, got {mean_reversion}"
                    ));
                }
                if let Some(m) = mean {
                    finite("mean", *m)?;
                }
                if let (Some(lo), Some(hi)) = (min, max)
                    && lo >= hi
                {
                    return Err(format!("min ({lo}) must be below max ({hi})"));
                }
            }
            FieldSpec::Seasonal(spec) => spec.validate()?,
            FieldSpec::Expr { expr } if expr.trim().is_empty() => {
                return Err("expr must not be empty".into());
            }
            FieldSpec::Decimal {
                min,
                max,
                precision,
                scale,
                ..
            } => {
                finite("min", *min)?;
                finite("max", *max)?;
                if min > max {
                    return Err(format!("min ({min}) must not be above max ({max})"));
                }
                if !(1..=38).contains(precision) {
                    return Err(format!("precision must be within 1..=38, got {precision}"));
                }
                if *scale < 0 || *scale as u8 > *precision {
                    return Err(format!("scale must be within 0..=precision, got {scale}"));
                }
                let limit = 10f64.powi(i32::from(*precision) - i32::from(*scale));
                if min.abs() >= limit || max.abs() >= limit {
                    return Err(format!(
                        "min and max must have fewer than {} digits before the point",
                        precision - *scale as u8
                    ));
                }
            }
            FieldSpec::List {
                item,
                min_len,
                max_len,
            } => {
                if min_len > max_len || *max_len > MAX_LIST_LEN {
                    return Err(format!(
                        "min_len ({min_len}) must not be above max_len ({max_len}), at most {MAX_LIST_LEN}"
                    ));
                }
                check_nested("item", item)?;
            }
            FieldSpec::Map { keys, value } => {
                let unique: std::collections::HashSet<&String> = keys.iter().collect();
                if keys.is_empty() || unique.len() != keys.len() {
                    return Err("keys must be given, each once".into());
                }
                check_nested("value", value)?;
            }
            FieldSpec::Struct { fields } => {
                if fields.is_empty() {
                    return Err("fields must not be empty".into());
                }
                for (name, f) in fields {
                    check_nested(name, f)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The Arrow type of the values, when the spec alone says it (attributes, parent fields
    /// and expressions take theirs from what they refer to).
    pub fn data_type(&self) -> Option<DataType> {
        Some(match self {
            FieldSpec::Timestamp {} => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()))
            }
            FieldSpec::Sequence { .. } | FieldSpec::Poisson { .. } => DataType::Int64,
            FieldSpec::Entity { .. } => DataType::Utf8,
            FieldSpec::Fake { fake, .. } if fake.is_int() => DataType::Int64,
            FieldSpec::Fake { .. } => DataType::Utf8,
            FieldSpec::Constant { value } => value.data_type(),
            FieldSpec::Uniform { integer: true, .. } => DataType::Int64,
            FieldSpec::Uniform { .. }
            | FieldSpec::Normal { .. }
            | FieldSpec::Lognormal { .. }
            | FieldSpec::RandomWalk { .. }
            | FieldSpec::Seasonal(_) => DataType::Float64,
            FieldSpec::Choice { values, .. } => values
                .first()
                .map(Scalar::data_type)
                .unwrap_or(DataType::Utf8),
            FieldSpec::Date {} => DataType::Date32,
            FieldSpec::Decimal {
                precision, scale, ..
            } => DataType::Decimal128(*precision, *scale),
            FieldSpec::List { item, .. } => {
                DataType::List(Arc::new(Field::new("item", item.data_type()?, false)))
            }
            FieldSpec::Map { value, .. } => DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("keys", DataType::Utf8, false),
                        Field::new("values", value.data_type()?, false),
                    ])),
                    false,
                )),
                false,
            ),
            FieldSpec::Struct { fields } => DataType::Struct(
                fields
                    .iter()
                    .map(|(name, f)| Some(Field::new(name, f.data_type()?, false)))
                    .collect::<Option<Fields>>()?,
            ),
            FieldSpec::Attribute { .. } | FieldSpec::Parent { .. } | FieldSpec::Expr { .. } => {
                return None;
            }
        })
    }

    /// Whether the value can be drawn once per entity (an entity attribute).
    pub fn is_attribute_kind(&self) -> bool {
        matches!(
            self,
            FieldSpec::Constant { .. }
                | FieldSpec::Uniform { .. }
                | FieldSpec::Normal { .. }
                | FieldSpec::Lognormal { .. }
                | FieldSpec::Poisson { .. }
                | FieldSpec::Choice { .. }
                | FieldSpec::Fake { .. }
                | FieldSpec::Decimal { .. }
        )
    }

    /// Whether the value is drawn per event or once per entity.
    pub(crate) fn per(&self) -> Per {
        match self {
            FieldSpec::Uniform { per, .. }
            | FieldSpec::Normal { per, .. }
            | FieldSpec::Lognormal { per, .. }
            | FieldSpec::Poisson { per, .. }
            | FieldSpec::Choice { per, .. }
            | FieldSpec::Fake { per, .. }
            | FieldSpec::Decimal { per, .. }
            | FieldSpec::Sequence { per, .. } => *per,
            _ => Per::Event,
        }
    }
}

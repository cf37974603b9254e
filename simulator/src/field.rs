//! Field specifications (what a column holds) and their generators.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, ListArray,
    MapArray, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields, TimeUnit};
use indexmap::IndexMap;
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{LogNormal, Normal, Poisson, StandardNormal, Uniform};
use serde::Deserialize;

use super::FakeKind;
use super::calendar::{US_PER_DAY, hour_of_day};

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
    mean: f64,
    #[serde(default)]
    daily: f64,
    #[serde(default)]
    weekly: f64,
    #[serde(default = "default_peak_hour")]
    peak_hour: f64,
    #[serde(default = "default_peak_weekday")]
    peak_weekday: f64,
    #[serde(default)]
    trend_per_day: f64,
    #[serde(default)]
    noise: f64,
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

    fn per(&self) -> Per {
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

/// What a generator needs to know about the events of the chunk being generated.
pub(crate) struct ChunkContext<'a> {
    /// Index (in the stream) of the chunk's first event.
    pub first: u64,
    pub times: &'a [i64],
    /// Each event's entity index (an Arrow array, so per-entity columns `take` from it).
    pub entities: &'a UInt32Array,
    /// Child streams: the parent fields the chunk's events carry, one row per event.
    pub parent: Option<&'a RecordBatch>,
}

impl ChunkContext<'_> {
    fn len(&self) -> usize {
        self.times.len()
    }
}

/// An entity set's values: ids and attributes, one entry per entity.
pub(crate) struct EntityValues {
    pub count: u32,
    pub ids: ArrayRef,
    pub attributes: IndexMap<String, ArrayRef>,
}

/// Generates one column, chunk after chunk.
pub(crate) enum FieldGenerator {
    Timestamp,
    Sequence {
        start: i64,
        /// `per = "entity"`: the next value of each entity.
        per_entity: Option<Vec<i64>>,
    },
    /// Values fixed per entity, picked by entity index.
    PerEntity(ArrayRef),
    Parent(String),
    Constant(Scalar),
    Draw(Draw),
    Walk(Walk),
    Seasonal(Seasonal),
    /// Computed from the other columns by the stream (expressions).
    Derived,
    Date,
    /// Lists: lengths drawn per event, the elements by `item` over all of them.
    List {
        item: Box<FieldGenerator>,
        field: FieldRef,
        lengths: Uniform<usize>,
        rng: Xoshiro256PlusPlus,
    },
    /// Maps: every key per event, the values by `value`.
    Map {
        keys: Arc<StringArray>,
        value: Box<FieldGenerator>,
        entries: FieldRef,
    },
    Struct {
        fields: Fields,
        children: Vec<FieldGenerator>,
    },
}

impl FieldGenerator {
    /// `seed` is the stream's; `start_us` the simulated clock's start.
    pub(crate) fn new(
        name: &str,
        spec: &FieldSpec,
        seed: u64,
        entities: &EntityValues,
        start_us: i64,
    ) -> Self {
        let seed = stream_seed(seed, name);
        match spec {
            FieldSpec::Timestamp {} => FieldGenerator::Timestamp,
            FieldSpec::Sequence { start, per } => FieldGenerator::Sequence {
                start: *start,
                per_entity: (*per == Per::Entity).then(|| vec![*start; entities.count as usize]),
            },
            FieldSpec::Entity {
                prefix: None,
                width: None,
            } => FieldGenerator::PerEntity(entities.ids.clone()),
            FieldSpec::Entity { prefix, width } => {
                let prefix = prefix.as_deref().unwrap_or("entity-");
                let width = width.unwrap_or(4);
                FieldGenerator::PerEntity(Arc::new(StringArray::from_iter_values(
                    (0..entities.count).map(|i| format!("{prefix}{i:0width$}")),
                )))
            }
            FieldSpec::Attribute { name } => {
                FieldGenerator::PerEntity(entities.attributes.get(name).cloned().unwrap_or_else(
                    || Arc::new(StringArray::from(vec![""; entities.count as usize])),
                ))
            }
            FieldSpec::Parent { field } => FieldGenerator::Parent(field.clone()),
            FieldSpec::Expr { .. } => FieldGenerator::Derived,
            FieldSpec::Constant { value } => FieldGenerator::Constant(value.clone()),
            FieldSpec::RandomWalk {
                start,
                step,
                min,
                max,
                mean_reversion,
                mean,
            } => FieldGenerator::Walk(Walk {
                state: vec![*start; entities.count as usize],
                rng: Xoshiro256PlusPlus::seed_from_u64(seed),
                step: *step,
                min: min.unwrap_or(f64::NEG_INFINITY),
                max: max.unwrap_or(f64::INFINITY),
                revert: *mean_reversion,
                mean: mean.unwrap_or(*start),
            }),
            FieldSpec::Seasonal(spec) => FieldGenerator::Seasonal(Seasonal {
                rng: Xoshiro256PlusPlus::seed_from_u64(seed),
                spec: *spec,
                start_us,
            }),
            FieldSpec::Date {} => FieldGenerator::Date,
            FieldSpec::List {
                item,
                min_len,
                max_len,
            } => FieldGenerator::List {
                item: Box::new(Self::new(
                    &format!("{name}[]"),
                    item,
                    seed,
                    entities,
                    start_us,
                )),
                field: Arc::new(Field::new(
                    "item",
                    item.data_type().unwrap_or(DataType::Null),
                    false,
                )),
                // Validated: min_len <= max_len.
                lengths: Uniform::new_inclusive(*min_len, *max_len)
                    .unwrap_or_else(|_| Uniform::new_inclusive(0, 0).expect("0..=0")),
                rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            },
            FieldSpec::Map { keys, value } => {
                let Some(DataType::Map(entries, _)) = spec.data_type() else {
                    return FieldGenerator::Derived;
                };
                FieldGenerator::Map {
                    keys: Arc::new(StringArray::from_iter_values(keys)),
                    value: Box::new(Self::new(
                        &format!("{name}{{}}"),
                        value,
                        seed,
                        entities,
                        start_us,
                    )),
                    entries,
                }
            }
            FieldSpec::Struct { fields } => {
                let Some(DataType::Struct(arrow)) = spec.data_type() else {
                    return FieldGenerator::Derived;
                };
                FieldGenerator::Struct {
                    fields: arrow,
                    children: fields
                        .iter()
                        .map(|(child, f)| {
                            Self::new(&format!("{name}.{child}"), f, seed, entities, start_us)
                        })
                        .collect(),
                }
            }
            _ => {
                let mut draw = Draw::new(spec, seed);
                if spec.per() == Per::Entity {
                    FieldGenerator::PerEntity(draw.draw(entities.count as usize))
                } else {
                    FieldGenerator::Draw(draw)
                }
            }
        }
    }

    /// The column for the chunk's events; none for derived columns.
    pub(crate) fn generate(
        &mut self,
        ctx: &ChunkContext<'_>,
    ) -> Result<Option<ArrayRef>, ArrowError> {
        let n = ctx.len();
        Ok(Some(match self {
            FieldGenerator::Timestamp => Arc::new(
                TimestampMicrosecondArray::from(ctx.times.to_vec())
                    .with_timezone(sluice_protocol::UTC),
            ),
            FieldGenerator::Sequence {
                start,
                per_entity: None,
            } => {
                let first = *start + ctx.first as i64;
                Arc::new(Int64Array::from_iter_values(first..first + n as i64))
            }
            FieldGenerator::Sequence {
                per_entity: Some(next),
                ..
            } => Arc::new(Int64Array::from_iter_values(
                ctx.entities.values().iter().map(|e| {
                    let v = next[*e as usize];
                    next[*e as usize] += 1;
                    v
                }),
            )),
            FieldGenerator::PerEntity(values) => {
                arrow_select::take::take(values.as_ref(), ctx.entities, None)?
            }
            FieldGenerator::Parent(field) => ctx
                .parent
                .and_then(|p| p.column_by_name(field))
                .cloned()
                .ok_or_else(|| {
                    ArrowError::InvalidArgumentError(format!("parent field {field:?} missing"))
                })?,
            FieldGenerator::Constant(v) => match v {
                Scalar::Bool(b) => Arc::new(BooleanArray::from(vec![*b; n])),
                Scalar::Int(i) => Arc::new(Int64Array::from_value(*i, n)),
                Scalar::Float(f) => Arc::new(Float64Array::from_value(*f, n)),
                Scalar::Str(s) => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    s.as_str(),
                    n,
                ))),
            },
            FieldGenerator::Draw(d) => d.draw(n),
            FieldGenerator::Walk(w) => Arc::new(Float64Array::from(w.next(ctx.entities.values()))),
            FieldGenerator::Seasonal(s) => Arc::new(Float64Array::from(s.values(ctx.times))),
            FieldGenerator::Derived => return Ok(None),
            FieldGenerator::Date => Arc::new(Date32Array::from_iter_values(
                ctx.times.iter().map(|t| t.div_euclid(US_PER_DAY) as i32),
            )),
            FieldGenerator::List {
                item,
                field,
                lengths,
                rng,
            } => {
                let lens: Vec<usize> = lengths.sample_iter(&mut *rng).take(n).collect();
                let values = nested_values(item, ctx, &lens)?;
                Arc::new(ListArray::try_new(
                    field.clone(),
                    OffsetBuffer::from_lengths(lens),
                    values,
                    None,
                )?)
            }
            FieldGenerator::Map {
                keys,
                value,
                entries,
            } => {
                let k = arrow_array::Array::len(keys.as_ref());
                let lens = vec![k; n];
                let values = nested_values(value, ctx, &lens)?;
                let idx = UInt32Array::from_iter_values((0..n * k).map(|i| (i % k) as u32));
                let all_keys = arrow_select::take::take(keys.as_ref(), &idx, None)?;
                let DataType::Struct(kv) = entries.data_type() else {
                    return Err(ArrowError::SchemaError("map entries are no struct".into()));
                };
                let entries_array = StructArray::try_new(kv.clone(), vec![all_keys, values], None)?;
                Arc::new(MapArray::try_new(
                    entries.clone(),
                    OffsetBuffer::from_lengths(lens),
                    entries_array,
                    None,
                    false,
                )?)
            }
            FieldGenerator::Struct { fields, children } => {
                let columns = children
                    .iter_mut()
                    .map(|c| {
                        c.generate(ctx)?.ok_or_else(|| {
                            ArrowError::ComputeError("a struct field was not generated".into())
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(StructArray::try_new(fields.clone(), columns, None)?)
            }
        }))
    }
}

/// The values of a nested generator for events that hold `lens[i]` values each: each
/// value carries its event's time and entity.
fn nested_values(
    item: &mut FieldGenerator,
    ctx: &ChunkContext<'_>,
    lens: &[usize],
) -> Result<ArrayRef, ArrowError> {
    let total: usize = lens.iter().sum();
    let mut times = Vec::with_capacity(total);
    let mut entities = Vec::with_capacity(total);
    for (i, &len) in lens.iter().enumerate() {
        times.extend(std::iter::repeat_n(ctx.times[i], len));
        entities.extend(std::iter::repeat_n(ctx.entities.value(i), len));
    }
    let entities = UInt32Array::from(entities);
    let inner = ChunkContext {
        first: ctx.first,
        times: &times,
        entities: &entities,
        parent: None,
    };
    item.generate(&inner)?
        .ok_or_else(|| ArrowError::ComputeError("a nested field was not generated".into()))
}

/// Per-entity random walks with mean reversion.
pub(crate) struct Walk {
    state: Vec<f64>,
    rng: Xoshiro256PlusPlus,
    step: f64,
    min: f64,
    max: f64,
    revert: f64,
    mean: f64,
}

impl Walk {
    fn next(&mut self, entities: &[u32]) -> Vec<f64> {
        entities
            .iter()
            .map(|e| {
                let x = &mut self.state[*e as usize];
                let z: f64 = StandardNormal.sample(&mut self.rng);
                *x =
                    (*x + self.revert * (self.mean - *x) + self.step * z).clamp(self.min, self.max);
                *x
            })
            .collect()
    }
}

/// Daily and weekly waves, a trend and noise.
pub(crate) struct Seasonal {
    rng: Xoshiro256PlusPlus,
    spec: SeasonalSpec,
    start_us: i64,
}

impl Seasonal {
    fn values(&mut self, times: &[i64]) -> Vec<f64> {
        use std::f64::consts::TAU;
        const DAY: i64 = US_PER_DAY;
        times
            .iter()
            .map(|t| {
                let s = &self.spec;
                let mut v = s.mean;
                if s.daily != 0.0 {
                    let hour = hour_of_day(*t);
                    v += s.daily * (TAU * (hour - s.peak_hour) / 24.0).cos();
                }
                if s.weekly != 0.0 {
                    // The Unix epoch was a Thursday: weekday 0 = Monday.
                    let weekday = (t + 3 * DAY).rem_euclid(7 * DAY) as f64 / (DAY as f64);
                    v += s.weekly * (TAU * (weekday - s.peak_weekday) / 7.0).cos();
                }
                if s.trend_per_day != 0.0 {
                    v += s.trend_per_day * (*t - self.start_us) as f64 / US_PER_DAY as f64;
                }
                if s.noise > 0.0 {
                    let z: f64 = StandardNormal.sample(&mut self.rng);
                    v += z * s.noise;
                }
                v
            })
            .collect()
    }
}

/// Each field gets its own random stream so adding a field does not change the others.
pub(crate) fn stream_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A per-event random draw.
pub(crate) struct Draw {
    rng: Xoshiro256PlusPlus,
    dist: Dist,
}

enum Dist {
    UniformF64(Uniform<f64>),
    UniformI64(Uniform<i64>),
    Normal {
        dist: Normal<f64>,
        min: f64,
        max: f64,
    },
    LogNormal(LogNormal<f64>),
    Poisson(Poisson<f64>),
    Choice {
        values: ArrayRef,
        index: Option<WeightedIndex<f64>>,
        uniform: Uniform<u32>,
    },
    Fake(FakeKind),
    Decimal {
        units: Uniform<i64>,
        precision: u8,
        scale: i8,
    },
}

impl Draw {
    /// Build from a validated spec. Parameters were checked by [`FieldSpec::validate`], so
    /// construction cannot fail; should it, the field degrades to a constant and says so.
    fn new(spec: &FieldSpec, seed: u64) -> Self {
        let dist = match spec {
            FieldSpec::Uniform {
                min,
                max,
                integer: false,
                ..
            } => Uniform::new(*min, *max).map(Dist::UniformF64).ok(),
            FieldSpec::Uniform { min, max, .. } => {
                Uniform::new_inclusive(min.ceil() as i64, max.floor() as i64)
                    .map(Dist::UniformI64)
                    .ok()
            }
            FieldSpec::Normal {
                mean,
                stddev,
                min,
                max,
                ..
            } => Normal::new(*mean, *stddev).ok().map(|dist| Dist::Normal {
                dist,
                min: min.unwrap_or(f64::NEG_INFINITY),
                max: max.unwrap_or(f64::INFINITY),
            }),
            FieldSpec::Lognormal { mu, sigma, .. } => {
                LogNormal::new(*mu, *sigma).ok().map(Dist::LogNormal)
            }
            FieldSpec::Poisson { lambda, .. } => Poisson::new(*lambda).ok().map(Dist::Poisson),
            FieldSpec::Choice {
                values, weights, ..
            } => {
                let array = scalars_to_array(values);
                let index = weights
                    .as_ref()
                    .and_then(|w| WeightedIndex::new(w.iter().copied()).ok());
                Uniform::new(0u32, values.len().max(1) as u32)
                    .ok()
                    .map(|uniform| Dist::Choice {
                        values: array,
                        index,
                        uniform,
                    })
            }
            FieldSpec::Fake { fake, .. } => Some(Dist::Fake(*fake)),
            FieldSpec::Decimal {
                min,
                max,
                precision,
                scale,
                ..
            } => {
                // In units of the last digit; validated to fit the precision.
                let unit = 10f64.powi(i32::from(*scale));
                Uniform::new_inclusive((min * unit).ceil() as i64, (max * unit).floor() as i64)
                    .ok()
                    .map(|units| Dist::Decimal {
                        units,
                        precision: *precision,
                        scale: *scale,
                    })
            }
            _ => None,
        };
        let dist = dist.unwrap_or_else(|| {
            tracing::error!(?spec, "invalid simulator field parameters; emitting 0.0");
            Dist::Choice {
                values: Arc::new(Float64Array::from(vec![0.0])),
                index: None,
                uniform: Uniform::new(0u32, 1).expect("0..1 is a valid range"),
            }
        });
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            dist,
        }
    }

    fn draw(&mut self, n: usize) -> ArrayRef {
        let rng = &mut self.rng;
        match &self.dist {
            Dist::UniformF64(d) => {
                Arc::new(Float64Array::from_iter_values(d.sample_iter(rng).take(n)))
            }
            Dist::UniformI64(d) => {
                Arc::new(Int64Array::from_iter_values(d.sample_iter(rng).take(n)))
            }
            Dist::Normal { dist, min, max } => Arc::new(Float64Array::from_iter_values(
                dist.sample_iter(rng).take(n).map(|v| v.clamp(*min, *max)),
            )),
            Dist::LogNormal(d) => {
                Arc::new(Float64Array::from_iter_values(d.sample_iter(rng).take(n)))
            }
            Dist::Poisson(d) => Arc::new(Int64Array::from_iter_values(
                d.sample_iter(rng).take(n).map(|v| v as i64),
            )),
            Dist::Choice {
                values,
                index,
                uniform,
            } => {
                let idx: UInt32Array = match index {
                    Some(w) => w.sample_iter(&mut *rng).take(n).map(|i| i as u32).collect(),
                    None => uniform.sample_iter(&mut *rng).take(n).collect(),
                };
                // `take` with in-range indices cannot fail.
                arrow_select::take::take(values.as_ref(), &idx, None)
                    .unwrap_or_else(|_| values.slice(0, 0))
            }
            Dist::Fake(kind) if kind.is_int() => Arc::new(Int64Array::from_iter_values(
                (0..n).map(|_| FakeKind::http_status(rng)),
            )),
            Dist::Decimal {
                units,
                precision,
                scale,
            } => Arc::new(
                Decimal128Array::from_iter_values(units.sample_iter(rng).take(n).map(i128::from))
                    .with_precision_and_scale(*precision, *scale)
                    .unwrap_or_else(|_| Decimal128Array::from(vec![0i128; n])),
            ),
            Dist::Fake(kind) => {
                let mut b = StringBuilder::with_capacity(n, n * 16);
                let mut s = String::with_capacity(64);
                for _ in 0..n {
                    s.clear();
                    kind.write(rng, &mut s);
                    b.append_value(&s);
                }
                Arc::new(b.finish())
            }
        }
    }
}

fn scalars_to_array(values: &[Scalar]) -> ArrayRef {
    match values.first() {
        Some(Scalar::Bool(_)) => Arc::new(
            values
                .iter()
                .map(|v| matches!(v, Scalar::Bool(true)))
                .collect::<BooleanArray>(),
        ),
        Some(Scalar::Int(_)) => Arc::new(Int64Array::from_iter_values(values.iter().map(
            |v| match v {
                Scalar::Int(i) => *i,
                _ => 0,
            },
        ))),
        Some(Scalar::Float(_)) => Arc::new(Float64Array::from_iter_values(values.iter().map(
            |v| match v {
                Scalar::Float(f) => *f,
                _ => 0.0,
            },
        ))),
        _ => Arc::new(StringArray::from_iter_values(values.iter().map(
            |v| match v {
                Scalar::Str(s) => s.as_str(),
                _ => "",
            },
        ))),
    }
}

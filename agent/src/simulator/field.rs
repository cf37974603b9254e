//! Field specifications (what a column holds) and their generators.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow_schema::{ArrowError, DataType, Field, TimeUnit};
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{LogNormal, Normal, Poisson, Uniform};
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
    /// A counter over the source's events: `start`, `start + 1`, ...
    Sequence {
        #[serde(default = "one")]
        start: i64,
    },
    /// The entity's id: `prefix` + zero-padded entity index.
    Entity {
        #[serde(default = "entity_prefix")]
        prefix: String,
        #[serde(default = "four")]
        width: usize,
    },
    /// The same value in every row.
    Constant { value: Scalar },
    /// Uniform in `[min, max)`; `integer = true` gives whole numbers in `[min, max]`.
    Uniform {
        min: f64,
        max: f64,
        #[serde(default)]
        integer: bool,
        #[serde(default)]
        per: Per,
    },
    /// Normal(mean, stddev), optionally clamped to `[min, max]`.
    Normal {
        mean: f64,
        stddev: f64,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
        #[serde(default)]
        per: Per,
    },
    /// Log-normal: `exp(Normal(mu, sigma))`.
    Lognormal {
        mu: f64,
        sigma: f64,
        #[serde(default)]
        per: Per,
    },
    /// Poisson counts with mean `lambda`.
    Poisson {
        lambda: f64,
        #[serde(default)]
        per: Per,
    },
    /// One of `values`, with optional relative `weights`.
    Choice {
        values: Vec<Scalar>,
        #[serde(default)]
        weights: Option<Vec<f64>>,
        #[serde(default)]
        per: Per,
    },
    /// A realistic fake value (hostname, ipv4, email, ...).
    Fake {
        fake: FakeKind,
        #[serde(default)]
        per: Per,
    },
}

fn one() -> i64 {
    1
}
fn four() -> usize {
    4
}
fn entity_prefix() -> String {
    "entity-".into()
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
            FieldSpec::Entity { width, .. } if *width > 20 => {
                return Err("width must be at most 20".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// The Arrow field this spec produces. Generated columns never hold nulls.
    pub fn arrow_field(&self, name: &str) -> Field {
        let ty = match self {
            FieldSpec::Timestamp {} => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()))
            }
            FieldSpec::Sequence { .. } | FieldSpec::Poisson { .. } => DataType::Int64,
            FieldSpec::Entity { .. } | FieldSpec::Fake { .. } => DataType::Utf8,
            FieldSpec::Constant { value } => value.data_type(),
            FieldSpec::Uniform { integer: true, .. } => DataType::Int64,
            FieldSpec::Uniform { .. } | FieldSpec::Normal { .. } | FieldSpec::Lognormal { .. } => {
                DataType::Float64
            }
            FieldSpec::Choice { values, .. } => values
                .first()
                .map(Scalar::data_type)
                .unwrap_or(DataType::Utf8),
        };
        Field::new(name, ty, false)
    }

    fn per(&self) -> Per {
        match self {
            FieldSpec::Uniform { per, .. }
            | FieldSpec::Normal { per, .. }
            | FieldSpec::Lognormal { per, .. }
            | FieldSpec::Poisson { per, .. }
            | FieldSpec::Choice { per, .. }
            | FieldSpec::Fake { per, .. } => *per,
            _ => Per::Event,
        }
    }
}

/// What a generator needs to know about the chunk being generated.
pub(crate) struct ChunkContext {
    /// Index of the chunk's first event.
    pub first: u64,
    pub len: usize,
    pub entities: u32,
    pub event_time_us: Vec<i64>,
}

impl ChunkContext {
    fn entity_indices(&self) -> UInt32Array {
        let e = u64::from(self.entities);
        (0..self.len as u64)
            .map(|i| ((self.first + i) % e) as u32)
            .collect::<Vec<_>>()
            .into()
    }
}

/// Generates one column, chunk after chunk.
pub(crate) enum FieldGenerator {
    Timestamp,
    Sequence {
        start: i64,
    },
    /// Values drawn once per entity, picked by entity index.
    PerEntity(ArrayRef),
    Constant(Scalar),
    Draw(Draw),
}

impl FieldGenerator {
    pub(crate) fn new(name: &str, spec: &FieldSpec, seed: u64, entities: u32) -> Self {
        match spec {
            FieldSpec::Timestamp {} => FieldGenerator::Timestamp,
            FieldSpec::Sequence { start } => FieldGenerator::Sequence { start: *start },
            FieldSpec::Entity { prefix, width } => FieldGenerator::PerEntity(Arc::new(
                (0..entities)
                    .map(|i| format!("{prefix}{i:0width$}"))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(Some)
                    .collect::<StringArray>(),
            )),
            FieldSpec::Constant { value } => FieldGenerator::Constant(value.clone()),
            _ => {
                let mut draw = Draw::new(spec, stream_seed(seed, name));
                if spec.per() == Per::Entity {
                    FieldGenerator::PerEntity(draw.draw(entities as usize))
                } else {
                    FieldGenerator::Draw(draw)
                }
            }
        }
    }

    pub(crate) fn generate(&mut self, ctx: &ChunkContext) -> Result<ArrayRef, ArrowError> {
        let n = ctx.len;
        Ok(match self {
            FieldGenerator::Timestamp => Arc::new(
                TimestampMicrosecondArray::from(ctx.event_time_us.clone())
                    .with_timezone(sluice_protocol::UTC),
            ),
            FieldGenerator::Sequence { start } => {
                let first = *start + ctx.first as i64;
                Arc::new(Int64Array::from_iter_values(first..first + n as i64))
            }
            FieldGenerator::PerEntity(values) => {
                arrow_select::take::take(values.as_ref(), &ctx.entity_indices(), None)?
            }
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
        })
    }
}

/// Each field gets its own random stream so adding a field does not change the others.
fn stream_seed(seed: u64, name: &str) -> u64 {
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

//! Generators: the values of one column, chunk after chunk, for the fields of
//! `field.rs` (draws, walks, waves, per-entity values, nested lists, maps and structs).

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array, ListArray,
    MapArray, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Fields};
use indexmap::IndexMap;
use rand::SeedableRng;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::Xoshiro256PlusPlus;
use rand_distr::{LogNormal, Normal, Poisson, StandardNormal, Uniform};

use super::FakeKind;
use super::calendar::{US_PER_DAY, hour_of_day};
use super::field::{FieldSpec, Per, Scalar, SeasonalSpec};

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

//! The simulation engine: a scenario compiled and checked ([`Scenario`]), then run chunk by
//! chunk ([`Simulation`]).
//!
//! Determinism: each stream's events are a function of the scenario and seed alone (each
//! entity has its own random stream; a child event's fate is drawn from a stream keyed by
//! its parent event), and each column draws from its own stream in event order. Chunk
//! boundaries therefore change nothing but where the output is cut, and columns can be
//! generated on several threads at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use indexmap::IndexMap;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::anomaly::FieldAnomaly;
use super::expr::{Expr, Type, Value};
use super::field::{ChunkContext, EntityValues, FieldGenerator, FieldSpec, stream_seed};
use super::scenario::{AnomalyKind, AnomalySpec, ScenarioSpec, StreamSpec};
use super::schedule::{Arrivals, Delay, Event, Late, Rate, mix};
use crate::config::Invalid;

/// The label column added to streams with anomalies.
pub const ANOMALY_COLUMN: &str = "_anomaly";

/// A checked scenario, ready to run any number of times.
#[derive(Debug)]
pub struct Scenario {
    pub seed: u64,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
    entities: Vec<Arc<EntityValues>>,
    streams: Vec<StreamPlan>,
}

impl std::fmt::Debug for EntityValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EntityValues({})", self.count)
    }
}

#[derive(Debug)]
struct StreamPlan {
    name: String,
    schema: SchemaRef,
    entity: usize,
    origin: Origin,
    late: Option<Late>,
    fields: Vec<(String, FieldSpec)>,
    /// Expressions in evaluation order: column index, expression, columns it reads.
    exprs: Vec<(usize, Expr, Vec<usize>)>,
    /// Field anomalies: (index in `anomalies`, column index).
    field_anomalies: Vec<(u16, usize)>,
    anomalies: Vec<AnomalySpec>,
    labels: Vec<String>,
    children: Vec<usize>,
    /// Child streams: the parent's columns the events carry.
    carried: Vec<String>,
}

#[derive(Debug)]
enum Origin {
    /// Rate none: unpaced (inline simulator sources without a rate).
    Root(Option<Rate>),
    Child {
        parent: usize,
        probability: f64,
        min: u32,
        max: u32,
        delay: Delay,
    },
}

impl Scenario {
    /// Check a scenario. Root streams need a rate unless `allow_unpaced`.
    pub fn compile(spec: &ScenarioSpec, allow_unpaced: bool) -> Result<Self, Invalid> {
        if let (Some(s), Some(e)) = (spec.start, spec.end)
            && e <= s
        {
            return Err(Invalid::new("end", "must be after start"));
        }
        if spec.end.is_some() && spec.start.is_none() {
            return Err(Invalid::new(
                "end",
                "needs `start` (an end without a start would depend on when the run begins)",
            ));
        }
        let mut entities = Vec::new();
        let mut names = Vec::new();
        for (i, (name, e)) in spec.entities.iter().enumerate() {
            let key = format!("entities.{name}");
            sluice_protocol::validate_name("entity set", name)
                .map_err(|x| Invalid::new(&key, x.to_string()))?;
            entities.push(Arc::new(entity_values(
                name,
                e,
                mix(spec.seed, i as u64),
                &key,
            )?));
            names.push(name.clone());
        }
        // Streams without an entity set share one anonymous entity.
        let anonymous = entities.len();
        entities.push(Arc::new(EntityValues {
            count: 1,
            ids: Arc::new(StringArray::from(vec!["0"])),
            attributes: IndexMap::new(),
        }));
        if spec.streams.is_empty() {
            return Err(Invalid::new("streams", "at least one stream is required"));
        }
        let order = stream_order(spec)?;
        let mut plans: Vec<Option<StreamPlan>> = (0..spec.streams.len()).map(|_| None).collect();
        for i in order {
            let (name, s) = spec.streams.get_index(i).expect("index from the same map");
            let plan = compile_stream(
                spec,
                &names,
                &entities,
                anonymous,
                &plans,
                name,
                s,
                allow_unpaced,
            )?;
            plans[i] = Some(plan);
        }
        let mut streams: Vec<StreamPlan> = plans
            .into_iter()
            .map(|p| p.expect("every stream compiled"))
            .collect();
        for i in 0..streams.len() {
            if let Origin::Child { parent, .. } = streams[i].origin {
                streams[parent].children.push(i);
            }
        }
        Ok(Self {
            seed: spec.seed,
            start_us: spec.start.map(|t| t.timestamp_micros()),
            end_us: spec.end.map(|t| t.timestamp_micros()),
            entities,
            streams,
        })
    }

    /// The streams' names, in the scenario's order.
    pub fn stream_names(&self) -> impl Iterator<Item = &str> {
        self.streams.iter().map(|s| s.name.as_str())
    }

    pub fn stream_index(&self, name: &str) -> Option<usize> {
        self.streams.iter().position(|s| s.name == name)
    }

    pub fn schema(&self, stream: usize) -> SchemaRef {
        self.streams[stream].schema.clone()
    }
}

fn entity_values(
    name: &str,
    e: &super::scenario::EntitySpec,
    seed: u64,
    key: &str,
) -> Result<EntityValues, Invalid> {
    if e.count == 0 {
        return Err(Invalid::new(format!("{key}.count"), "must be at least 1"));
    }
    let pattern =
        e.id.clone()
            .unwrap_or_else(|| format!("{name}-{{index:04}}"));
    let ids = id_pattern(&pattern).map_err(|m| Invalid::new(format!("{key}.id"), m))?;
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values((0..e.count).map(ids)));
    let mut values = EntityValues {
        count: e.count,
        ids,
        attributes: IndexMap::new(),
    };
    let times = vec![0i64; e.count as usize];
    let indices = UInt32Array::from_iter_values(0..e.count);
    for (attr, spec) in &e.attributes {
        let akey = format!("{key}.attributes.{attr}");
        spec.validate().map_err(|m| Invalid::new(&akey, m))?;
        if !spec.is_attribute_kind() {
            return Err(Invalid::new(
                akey,
                "attributes are drawn once per entity: use constant, uniform, normal, lognormal, poisson, choice or fake",
            ));
        }
        let mut g = FieldGenerator::new(attr, spec, seed, &values, 0);
        let ctx = ChunkContext {
            first: 0,
            times: &times,
            entities: &indices,
            parent: None,
        };
        let array = g
            .generate(&ctx)
            .map_err(|x| Invalid::new(&akey, x.to_string()))?
            .ok_or_else(|| Invalid::new(&akey, "cannot be drawn per entity"))?;
        values.attributes.insert(attr.clone(), array);
    }
    Ok(values)
}

/// `host-{index:03}` → a function of the index.
fn id_pattern(pattern: &str) -> Result<impl Fn(u32) -> String + '_, String> {
    let start = pattern
        .find("{index")
        .ok_or_else(|| format!("{pattern:?} has no {{index}} (e.g. \"host-{{index:03}}\")"))?;
    let end = start
        + pattern[start..]
            .find('}')
            .ok_or_else(|| format!("{pattern:?}: unclosed {{index"))?;
    let spec = &pattern[start + 6..end];
    let width = match spec.strip_prefix(':') {
        None if spec.is_empty() => 0,
        Some(w) => w
            .trim_start_matches('0')
            .parse::<usize>()
            .ok()
            .filter(|w| *w <= 20)
            .ok_or_else(|| format!("{pattern:?}: width {w:?} is not a number up to 20"))?,
        None => return Err(format!("{pattern:?}: write {{index}} or {{index:04}}")),
    };
    let (before, after) = (&pattern[..start], &pattern[end + 1..]);
    Ok(move |i: u32| format!("{before}{i:0width$}{after}"))
}

/// Streams in an order where parents come before their children; cycles are errors.
fn stream_order(spec: &ScenarioSpec) -> Result<Vec<usize>, Invalid> {
    let mut order = Vec::new();
    let mut state = vec![0u8; spec.streams.len()]; // 0 new, 1 visiting, 2 done
    fn visit(
        i: usize,
        spec: &ScenarioSpec,
        state: &mut [u8],
        order: &mut Vec<usize>,
    ) -> Result<(), Invalid> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let (name, _) = spec.streams.get_index(i).expect("index");
                return Err(Invalid::new(
                    format!("streams.{name}.parent"),
                    "streams follow each other in a cycle",
                ));
            }
            _ => {}
        }
        state[i] = 1;
        let (name, s) = spec.streams.get_index(i).expect("index");
        if let Some(p) = &s.parent {
            let j = spec.streams.get_index_of(&p.stream).ok_or_else(|| {
                Invalid::new(
                    format!("streams.{name}.parent.stream"),
                    format!("no stream named {:?}", p.stream),
                )
            })?;
            visit(j, spec, state, order)?;
        }
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..spec.streams.len() {
        visit(i, spec, &mut state, &mut order)?;
    }
    Ok(order)
}

#[allow(clippy::too_many_arguments)]
fn compile_stream(
    spec: &ScenarioSpec,
    entity_names: &[String],
    entities: &[Arc<EntityValues>],
    anonymous: usize,
    done: &[Option<StreamPlan>],
    name: &str,
    s: &StreamSpec,
    allow_unpaced: bool,
) -> Result<StreamPlan, Invalid> {
    let key = format!("streams.{name}");
    sluice_protocol::validate_name("stream", name)
        .map_err(|x| Invalid::new(&key, x.to_string()))?;
    let (origin, entity, parent_schema) = match (&s.rate, &s.parent) {
        (Some(_), Some(_)) => {
            return Err(Invalid::new(
                &key,
                "give either `rate` (a root stream) or `parent` (a child stream), not both",
            ));
        }
        (rate, None) => {
            let rate = match rate {
                Some(r) => Some(Rate::new(r).map_err(|m| Invalid::new(format!("{key}.rate"), m))?),
                None if allow_unpaced => None,
                None => return Err(Invalid::new(&key, "a root stream needs a `rate`")),
            };
            let entity = match &s.entity {
                Some(e) => entity_names.iter().position(|n| n == e).ok_or_else(|| {
                    Invalid::new(
                        format!("{key}.entity"),
                        format!("no entity set named {e:?}"),
                    )
                })?,
                None => anonymous,
            };
            (Origin::Root(rate), entity, None)
        }
        (None, Some(p)) => {
            let pkey = format!("{key}.parent");
            let parent = spec.streams.get_index_of(&p.stream).ok_or_else(|| {
                Invalid::new(
                    format!("{pkey}.stream"),
                    format!("no stream named {:?}", p.stream),
                )
            })?;
            let pplan = done[parent]
                .as_ref()
                .ok_or_else(|| Invalid::new(&pkey, "internal: parent not compiled first"))?;
            if s.entity.is_some() {
                return Err(Invalid::new(
                    format!("{key}.entity"),
                    "a child stream's events belong to its parent event's entity",
                ));
            }
            if !(0.0..=1.0).contains(&p.probability) {
                return Err(Invalid::new(
                    format!("{pkey}.probability"),
                    "must be within 0..1",
                ));
            }
            if p.min > p.max {
                return Err(Invalid::new(format!("{pkey}.min"), "must not exceed max"));
            }
            let delay =
                Delay::new(&p.delay).map_err(|m| Invalid::new(format!("{pkey}.delay"), m))?;
            (
                Origin::Child {
                    parent,
                    probability: p.probability,
                    min: p.min,
                    max: p.max,
                    delay,
                },
                pplan.entity,
                Some(pplan.schema.clone()),
            )
        }
    };
    let late = s
        .late
        .as_ref()
        .map(Late::new)
        .transpose()
        .map_err(|m| Invalid::new(format!("{key}.late"), m))?;
    if s.fields.is_empty() {
        return Err(Invalid::new(
            format!("{key}.fields"),
            "at least one field is required",
        ));
    }

    // Types of every field: from the spec, the entity attribute, the parent, or the expression.
    let set = &entities[entity];
    let mut types: Vec<Option<DataType>> = Vec::with_capacity(s.fields.len());
    let mut carried = Vec::new();
    for (fname, f) in &s.fields {
        let fkey = format!("{key}.fields.{fname}");
        if fname.starts_with('_') {
            return Err(Invalid::new(
                fkey,
                "names starting with '_' are reserved for columns the lake adds",
            ));
        }
        f.validate().map_err(|m| Invalid::new(&fkey, m))?;
        let ty = match f {
            FieldSpec::Attribute { name: a } => Some(
                set.attributes
                    .get(a)
                    .ok_or_else(|| {
                        Invalid::new(
                            &fkey,
                            format!("the stream's entities have no attribute {a:?}"),
                        )
                    })?
                    .data_type()
                    .clone(),
            ),
            FieldSpec::Parent { field } => {
                let ps = parent_schema
                    .as_ref()
                    .ok_or_else(|| Invalid::new(&fkey, "only child streams have a parent"))?;
                let pf = ps.field_with_name(field).map_err(|_| {
                    Invalid::new(&fkey, format!("the parent stream has no field {field:?}"))
                })?;
                if !carried.contains(field) {
                    carried.push(field.clone());
                }
                Some(pf.data_type().clone())
            }
            other => other.data_type(),
        };
        types.push(ty);
    }
    // Expressions, in an order where what they read is known first.
    let mut exprs: Vec<(usize, Expr, Vec<usize>)> = Vec::new();
    let mut pending: Vec<usize> = (0..s.fields.len())
        .filter(|i| types[*i].is_none())
        .collect();
    while !pending.is_empty() {
        let mut progressed = false;
        let mut still = Vec::new();
        for &i in &pending {
            let (fname, f) = s.fields.get_index(i).expect("index");
            let FieldSpec::Expr { expr } = f else {
                still.push(i);
                continue;
            };
            // Set when the expression reads a field whose type is not known yet (a pending
            // expression): the compile error then only means "wait for the next round".
            let reads_pending = std::cell::Cell::new(false);
            let lookup = |n: &str| -> Option<Type> {
                let j = s.fields.get_index_of(n)?;
                if types[j].is_none() && j != i {
                    reads_pending.set(true);
                }
                types[j].as_ref().and_then(expr_type)
            };
            match Expr::compile(expr, &lookup) {
                Ok(e) => {
                    types[i] = Some(arrow_type(e.ty()));
                    // Compiling found every input among the fields.
                    let reads = e
                        .inputs()
                        .iter()
                        .filter_map(|n| s.fields.get_index_of(n))
                        .collect();
                    exprs.push((i, e, reads));
                    progressed = true;
                }
                Err(m) => {
                    if !reads_pending.get() {
                        return Err(Invalid::new(format!("{key}.fields.{fname}"), m));
                    }
                    still.push(i);
                }
            }
        }
        if !progressed {
            let names: Vec<&str> = still
                .iter()
                .map(|i| s.fields.get_index(*i).expect("index").0.as_str())
                .collect();
            return Err(Invalid::new(
                format!("{key}.fields"),
                format!(
                    "expressions refer to each other in a cycle: {}",
                    names.join(", ")
                ),
            ));
        }
        pending = still;
    }
    for (i, (fname, _)) in s.fields.iter().enumerate() {
        if types[i].as_ref().and_then(expr_type).is_none() {
            return Err(Invalid::new(
                format!("{key}.fields.{fname}"),
                format!("values of type {:?} are not supported", types[i]),
            ));
        }
    }

    // Anomalies.
    if s.anomalies.len() > 64 {
        return Err(Invalid::new(
            format!("{key}.anomalies"),
            "at most 64 anomalies per stream",
        ));
    }
    let mut field_anomalies = Vec::new();
    let mut labels = Vec::new();
    for (ai, a) in s.anomalies.iter().enumerate() {
        let akey = format!("{key}.anomalies.{ai}");
        check_anomaly(a, &akey, matches!(origin, Origin::Child { .. }))?;
        if a.kind.on_field() {
            let f = a.field.as_deref().unwrap_or_default();
            let col = s.fields.get_index_of(f).ok_or_else(|| {
                Invalid::new(
                    format!("{akey}.field"),
                    format!("the stream has no field {f:?}"),
                )
            })?;
            if types[col] != Some(DataType::Float64)
                || matches!(s.fields[col], FieldSpec::Expr { .. })
            {
                return Err(Invalid::new(
                    format!("{akey}.field"),
                    format!(
                        "anomalies change float64 fields that are generated, not computed; {f:?} is not one"
                    ),
                ));
            }
            field_anomalies.push((ai as u16, col));
        }
        labels.push(a.name.clone().unwrap_or_else(|| a.kind.label().to_string()));
    }

    let mut fields: Vec<Field> = s
        .fields
        .iter()
        .zip(&types)
        .map(|((n, f), t)| {
            Field::new(
                n,
                t.clone().unwrap_or(DataType::Utf8),
                matches!(f, FieldSpec::Expr { .. }),
            )
        })
        .collect();
    if !s.anomalies.is_empty() {
        fields.push(Field::new(ANOMALY_COLUMN, DataType::Utf8, true));
    }
    Ok(StreamPlan {
        name: name.to_string(),
        schema: Arc::new(Schema::new(fields)),
        entity,
        origin,
        late,
        fields: s
            .fields
            .iter()
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect(),
        exprs,
        field_anomalies,
        anomalies: s.anomalies.clone(),
        labels,
        children: Vec::new(),
        carried,
    })
}

fn check_anomaly(a: &AnomalySpec, key: &str, child: bool) -> Result<(), Invalid> {
    let bad = |k: &str, m: String| Err(Invalid::new(format!("{key}.{k}"), m));
    let kind = a.kind.label();
    match (a.at, a.probability) {
        (Some(_), Some(_)) => {
            return bad(
                "probability",
                "give `at` (a schedule) or `probability`, not both".into(),
            );
        }
        (None, None) => return bad("at", "give `at` (a schedule) or `probability`".into()),
        (None, Some(p)) if !(0.0..=1.0).contains(&p) => {
            return bad("probability", format!("must be within 0..1, got {p}"));
        }
        _ => {}
    }
    if a.at.is_none() && (a.every.is_some() || a.entities.is_some()) {
        return bad("every", "`every` and `entities` go with `at`".into());
    }
    if a.entities == Some(0) {
        return bad("entities", "must be at least 1".into());
    }
    if let (Some(every), Some(d)) = (a.every, a.duration)
        && every < d
    {
        return bad("every", "must be at least `duration`".into());
    }
    if a.kind != AnomalyKind::Spike && a.duration.is_none_or(|d| d.is_zero()) {
        return bad("duration", format!("a {kind} needs a duration"));
    }
    if a.kind.on_field() != a.field.is_some() {
        return if a.kind.on_field() {
            bad("field", format!("a {kind} needs the `field` it changes"))
        } else {
            bad("field", format!("a {kind} changes events, not a field"))
        };
    }
    if child && !a.kind.on_field() {
        return bad(
            "type",
            format!("a {kind} changes event rates, which child streams do not have"),
        );
    }
    let allowed: &[&str] = match a.kind {
        AnomalyKind::Spike => &["magnitude", "factor"],
        AnomalyKind::Drift => &["per_hour"],
        AnomalyKind::Burst => &["factor"],
        AnomalyKind::Stuck | AnomalyKind::Dropout => &[],
    };
    for (k, set) in [
        ("magnitude", a.magnitude.is_some()),
        ("factor", a.factor.is_some()),
        ("per_hour", a.per_hour.is_some()),
    ] {
        if set && !allowed.contains(&k) {
            return bad(k, format!("does not apply to a {kind}"));
        }
    }
    match a.kind {
        AnomalyKind::Spike if a.magnitude.is_none() && a.factor.is_none() => bad(
            "magnitude",
            "a spike needs `magnitude` (added) or `factor` (multiplied)".into(),
        ),
        AnomalyKind::Drift if a.per_hour.is_none() => {
            bad("per_hour", "a drift needs `per_hour`".into())
        }
        AnomalyKind::Burst if !a.factor.is_some_and(|f| f.is_finite() && f > 0.0) => bad(
            "factor",
            "a burst needs a `factor` > 0 (times the normal rate)".into(),
        ),
        _ => Ok(()),
    }
}

fn expr_type(t: &DataType) -> Option<Type> {
    Some(match t {
        DataType::Int64 => Type::Int,
        DataType::Float64 => Type::Float,
        DataType::Boolean => Type::Bool,
        DataType::Utf8 => Type::Str,
        DataType::Timestamp(TimeUnit::Microsecond, _) => Type::Time,
        _ => return None,
    })
}

fn arrow_type(t: Type) -> DataType {
    match t {
        Type::Int => DataType::Int64,
        Type::Float => DataType::Float64,
        Type::Bool => DataType::Boolean,
        Type::Str => DataType::Utf8,
        Type::Time => DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into())),
    }
}

/// How a run is bounded and carried out.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Start of the clock when the scenario has none (µs since the epoch).
    pub start_us: i64,
    /// Stop each stream after this many rows.
    pub rows: Option<u64>,
    /// Stop at this time (overrides the scenario's `end`).
    pub end_us: Option<i64>,
    /// Threads generating a chunk's columns (1: the calling thread only).
    pub threads: usize,
}

/// What a step of the simulation produced.
#[derive(Debug)]
pub enum Step {
    /// Rows of stream `stream`.
    Rows { stream: usize, batch: RecordBatch },
    /// Nothing is due before this time (µs); only when running against a clock.
    Wait(i64),
    /// Every stream is finished.
    Done,
}

/// A child event waiting for its time; ordered by time, then parent, then index.
struct Pending {
    time: i64,
    parent_seq: u64,
    k: u32,
    entity: u32,
    carried: Arc<RecordBatch>,
    row: usize,
}

impl Pending {
    fn key(&self) -> (i64, u64, u32) {
        (self.time, self.parent_seq, self.k)
    }
}
impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

/// A generated row held back because it arrives late; ordered by arrival, then sequence.
struct Held {
    emit: i64,
    seq: u64,
    batch: Arc<RecordBatch>,
    row: usize,
}
impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.emit, self.seq) == (o.emit, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.emit, self.seq).cmp(&(o.emit, o.seq))
    }
}

enum Source {
    Root(Arrivals),
    Child(BinaryHeap<Reverse<Pending>>),
}

struct StreamRun {
    source: Source,
    generators: Vec<FieldGenerator>,
    anomalies: Vec<FieldAnomaly>,
    late: Option<(Late, Xoshiro256PlusPlus)>,
    held: BinaryHeap<Reverse<Held>>,
    child_seed: u64,
    /// Events generated so far (the next event's sequence number).
    generated: u64,
    ended: bool,
}

/// Counts of what a run produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Rows emitted per stream.
    pub rows: Vec<u64>,
    /// Labelled rows per stream and label.
    pub anomalies: Vec<IndexMap<String, u64>>,
}

/// A running simulation.
pub struct Simulation {
    scenario: Arc<Scenario>,
    start_us: i64,
    runs: Vec<StreamRun>,
    end_us: Option<i64>,
    rows: Option<u64>,
    threads: usize,
    summary: Summary,
}

impl Simulation {
    pub fn new(scenario: Arc<Scenario>, opts: RunOptions) -> Self {
        let start_us = scenario.start_us.unwrap_or(opts.start_us);
        let runs = scenario
            .streams
            .iter()
            .map(|plan| {
                let seed = mix(scenario.seed, stream_seed(0x5eed, &plan.name));
                let set = &scenario.entities[plan.entity];
                let source = match &plan.origin {
                    Origin::Root(rate) => {
                        let events: Vec<(u16, &AnomalySpec)> = plan
                            .anomalies
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| !a.kind.on_field())
                            .map(|(j, a)| (j as u16, a))
                            .collect();
                        Source::Root(Arrivals::new(
                            *rate,
                            set.count,
                            start_us,
                            mix(seed, 1),
                            &events,
                        ))
                    }
                    Origin::Child { .. } => Source::Child(BinaryHeap::new()),
                };
                let generators = plan
                    .fields
                    .iter()
                    .map(|(n, f)| FieldGenerator::new(n, f, seed, set, start_us))
                    .collect();
                let anomalies = plan
                    .field_anomalies
                    .iter()
                    .map(|(a, col)| {
                        FieldAnomaly::new(
                            &plan.anomalies[*a as usize],
                            *a,
                            *col,
                            set.count,
                            mix(seed, 100 + u64::from(*a)),
                        )
                    })
                    .collect();
                StreamRun {
                    source,
                    generators,
                    anomalies,
                    late: plan
                        .late
                        .map(|l| (l, Xoshiro256PlusPlus::seed_from_u64(mix(seed, 2)))),
                    held: BinaryHeap::new(),
                    child_seed: mix(seed, 3),
                    generated: 0,
                    ended: false,
                }
            })
            .collect();
        let n = scenario.streams.len();
        Self {
            start_us,
            end_us: opts.end_us.or(scenario.end_us),
            rows: opts.rows,
            threads: opts.threads.max(1),
            summary: Summary {
                rows: vec![0; n],
                anomalies: scenario
                    .streams
                    .iter()
                    .map(|s| s.labels.iter().map(|l| (l.clone(), 0)).collect())
                    .collect(),
            },
            scenario,
            runs,
        }
    }

    /// Where the simulated clock starts.
    pub fn start_us(&self) -> i64 {
        self.start_us
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Rows emitted so far, all streams together.
    #[cfg(test)]
    pub fn rows_emitted(&self) -> u64 {
        self.summary.rows.iter().sum()
    }

    /// All future events of stream `s` happen at or after this time.
    fn bound(&self, s: usize) -> i64 {
        let run = &self.runs[s];
        if run.ended {
            return i64::MAX;
        }
        match (&run.source, &self.scenario.streams[s].origin) {
            (Source::Root(a), _) => a.peek_time().unwrap_or(i64::MIN),
            (Source::Child(heap), Origin::Child { parent, .. }) => {
                let top = heap.peek().map_or(i64::MAX, |Reverse(p)| p.time);
                top.min(self.bound(*parent))
            }
            (Source::Child(_), Origin::Root(_)) => i64::MAX,
        }
    }

    /// The time of the next event stream `s` can generate now, if any.
    fn next_time(&self, s: usize) -> Option<i64> {
        let run = &self.runs[s];
        if run.ended {
            return None;
        }
        match (&run.source, &self.scenario.streams[s].origin) {
            (Source::Root(a), _) => Some(a.peek_time().unwrap_or(i64::MIN)),
            (Source::Child(heap), Origin::Child { parent, .. }) => {
                let Reverse(top) = heap.peek()?;
                let parent_bound = self.bound(*parent);
                (top.time < parent_bound || parent_bound == i64::MAX).then_some(top.time)
            }
            (Source::Child(_), Origin::Root(_)) => None,
        }
    }

    /// The next chunk of at most `max_rows` rows of some stream. With `now_us`, events after
    /// it are not generated yet (real-time pacing).
    pub fn step(&mut self, max_rows: usize, now_us: Option<i64>) -> Result<Step, ArrowError> {
        loop {
            // Children whose parents ended with nothing left to wait for end too.
            for s in 0..self.runs.len() {
                self.close_if_drained(s);
            }
            let next = (0..self.runs.len())
                .filter_map(|s| self.next_time(s).map(|t| (t, s)))
                .min();
            let Some((t, s)) = next else {
                // Nothing left to generate: what late rows are still held goes out now.
                return Ok(match self.flush_held(None) {
                    Some((stream, batch)) => Step::Rows { stream, batch },
                    None => Step::Done,
                });
            };
            if let Some(now) = now_us
                && t > now
            {
                if let Some((stream, batch)) = self.flush_held(Some(now)) {
                    return Ok(Step::Rows { stream, batch });
                }
                return Ok(Step::Wait(t));
            }
            if let Some(batch) = self.generate(s, max_rows, now_us)? {
                return Ok(Step::Rows { stream: s, batch });
            }
        }
    }

    fn close_if_drained(&mut self, s: usize) {
        if self.runs[s].ended {
            return;
        }
        if let (Source::Child(heap), Origin::Child { parent, .. }) =
            (&self.runs[s].source, &self.scenario.streams[s].origin)
            && heap.is_empty()
            && self.runs[*parent].ended
        {
            self.runs[s].ended = true;
        }
    }

    /// Generate up to `max_rows` events of stream `s`; the rows ready to emit, if any.
    fn generate(
        &mut self,
        s: usize,
        max_rows: usize,
        now_us: Option<i64>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let scenario = self.scenario.clone();
        let plan = &scenario.streams[s];
        let limit = self.rows.map(|r| r.saturating_sub(self.runs[s].generated));
        let want = limit.map_or(max_rows, |l| {
            max_rows.min(usize::try_from(l).unwrap_or(usize::MAX))
        });
        let parent_bound = match plan.origin {
            Origin::Child { parent, .. } => self.bound(parent),
            Origin::Root(_) => i64::MAX,
        };
        let end = self.end_us.unwrap_or(i64::MAX);
        let wall = chrono::Utc::now().timestamp_micros();
        let run = &mut self.runs[s];
        let mut events: Vec<Event> = Vec::with_capacity(want.min(1 << 16));
        let mut carried: Vec<(Arc<RecordBatch>, usize)> = Vec::new();
        match &mut run.source {
            Source::Root(arrivals) => {
                while events.len() < want {
                    // Unpaced streams have no schedule: their events happen now, whatever
                    // the clock the caller runs against.
                    let paced = arrivals.peek_time();
                    let t = paced.unwrap_or(wall);
                    if t >= end {
                        run.ended = true;
                        break;
                    }
                    if paced.is_some() && now_us.is_some_and(|n| t > n) {
                        break;
                    }
                    events.push(arrivals.next(wall));
                }
            }
            Source::Child(heap) => {
                while events.len() < want {
                    let Some(Reverse(top)) = heap.peek() else {
                        break;
                    };
                    if top.time >= parent_bound && parent_bound != i64::MAX {
                        break;
                    }
                    if now_us.is_some_and(|n| top.time > n) {
                        break;
                    }
                    let Some(Reverse(p)) = heap.pop() else { break };
                    if p.time >= end {
                        // Past the end: nothing later of this stream can be before it.
                        heap.clear();
                        run.ended = true;
                        break;
                    }
                    events.push(Event {
                        time_us: p.time,
                        entity: p.entity,
                        label: 0,
                    });
                    carried.push((p.carried, p.row));
                }
            }
        }
        if limit.is_some_and(|l| events.len() as u64 >= l) {
            run.ended = true;
            if let Source::Child(heap) = &mut run.source {
                heap.clear();
            }
        }
        if events.is_empty() {
            return Ok(None);
        }
        let parent = if carried.is_empty() {
            None
        } else {
            Some(interleave_rows(carried.iter().map(|(b, r)| (b, *r)))?)
        };
        self.finish(s, &events, parent, now_us)
    }

    /// Values for the events, children scheduled, late rows held: the rows to emit.
    fn finish(
        &mut self,
        s: usize,
        events: &[Event],
        parent: Option<RecordBatch>,
        now_us: Option<i64>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let scenario = self.scenario.clone();
        let plan = &scenario.streams[s];
        let first = self.runs[s].generated;
        let batch = self.values(s, events, parent.as_ref(), first)?;
        self.runs[s].generated += events.len() as u64;
        for &c in &plan.children {
            self.schedule_children(c, &batch, events, first)?;
        }
        let ready = if self.runs[s].late.is_none() {
            batch
        } else {
            let shared = Arc::new(batch);
            let run = &mut self.runs[s];
            if let Some((late, rng)) = run.late.as_mut() {
                for (row, ev) in events.iter().enumerate() {
                    run.held.push(Reverse(Held {
                        emit: ev.time_us.saturating_add(late.draw(rng)),
                        seq: first + row as u64,
                        batch: shared.clone(),
                        row,
                    }));
                }
            }
            let until = self.bound(s).min(now_us.unwrap_or(i64::MAX));
            match self.release(s, until)? {
                Some(b) => b,
                None => return Ok(None),
            }
        };
        self.count(s, &ready);
        Ok(Some(ready))
    }

    fn count(&mut self, s: usize, batch: &RecordBatch) {
        self.summary.rows[s] += batch.num_rows() as u64;
        if let Some(col) = batch.column_by_name(ANOMALY_COLUMN) {
            let labels = col.as_string::<i32>();
            for l in labels.iter().flatten().flat_map(|l| l.split(',')) {
                if let Some(n) = self.summary.anomalies[s].get_mut(l) {
                    *n += 1;
                }
            }
        }
    }

    /// Held rows of stream `s` arriving at or before `until`, in arrival order.
    fn release(&mut self, s: usize, until: i64) -> Result<Option<RecordBatch>, ArrowError> {
        let held = &mut self.runs[s].held;
        let mut out: Vec<Held> = Vec::new();
        while held.peek().is_some_and(|Reverse(h)| h.emit <= until) {
            if let Some(Reverse(h)) = held.pop() {
                out.push(h);
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        interleave_rows(out.iter().map(|h| (&h.batch, h.row))).map(Some)
    }

    /// Late rows still held that may go out (all of them when `now` is none).
    fn flush_held(&mut self, now: Option<i64>) -> Option<(usize, RecordBatch)> {
        for s in 0..self.runs.len() {
            let until = match now {
                Some(n) => n.min(self.bound(s)),
                None if self.runs[s].ended || self.next_time(s).is_none() => i64::MAX,
                None => continue,
            };
            if let Ok(Some(b)) = self.release(s, until) {
                self.count(s, &b);
                return Some((s, b));
            }
        }
        None
    }

    /// Draw the followers of a parent chunk's events into child stream `c`'s queue.
    fn schedule_children(
        &mut self,
        c: usize,
        parent: &RecordBatch,
        events: &[Event],
        first: u64,
    ) -> Result<(), ArrowError> {
        let plan = &self.scenario.streams[c];
        let Origin::Child {
            probability,
            min,
            max,
            delay,
            ..
        } = &plan.origin
        else {
            return Ok(());
        };
        let carried = Arc::new(
            parent.project(
                &plan
                    .carried
                    .iter()
                    .filter_map(|n| parent.schema().index_of(n).ok())
                    .collect::<Vec<_>>(),
            )?,
        );
        let run = &mut self.runs[c];
        if run.ended {
            return Ok(());
        }
        let Source::Child(heap) = &mut run.source else {
            return Ok(());
        };
        for (row, ev) in events.iter().enumerate() {
            let parent_seq = first + row as u64;
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(run.child_seed, parent_seq));
            if rng.random::<f64>() >= *probability {
                continue;
            }
            let n = if max > min {
                rng.random_range(*min..=*max)
            } else {
                *min
            };
            for k in 0..n {
                heap.push(Reverse(Pending {
                    time: ev.time_us.saturating_add(delay.sample(&mut rng)),
                    parent_seq,
                    k,
                    entity: ev.entity,
                    carried: carried.clone(),
                    row,
                }));
            }
        }
        Ok(())
    }

    /// Generate the columns of a chunk of events.
    fn values(
        &mut self,
        s: usize,
        events: &[Event],
        parent: Option<&RecordBatch>,
        first: u64,
    ) -> Result<RecordBatch, ArrowError> {
        let plan = &self.scenario.streams[s];
        let times: Vec<i64> = events.iter().map(|e| e.time_us).collect();
        let entities = UInt32Array::from_iter_values(events.iter().map(|e| e.entity));
        let ctx = ChunkContext {
            first,
            times: &times,
            entities: &entities,
            parent,
        };
        let run = &mut self.runs[s];
        let mut columns: Vec<Option<ArrayRef>> = if self.threads > 1 && run.generators.len() > 1 {
            let per = run.generators.len().div_ceil(self.threads);
            std::thread::scope(|scope| {
                let handles: Vec<_> = run
                    .generators
                    .chunks_mut(per)
                    .map(|gens| {
                        let ctx = &ctx;
                        scope.spawn(move || {
                            gens.iter_mut().map(|g| g.generate(ctx)).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(ArrowError::ComputeError(
                                "a generator thread panicked".into(),
                            ))]
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })?
        } else {
            run.generators
                .iter_mut()
                .map(|g| g.generate(&ctx))
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut labels: Vec<u64> = events.iter().map(|e| e.label).collect();
        for a in &mut run.anomalies {
            let Some(col) = columns[a.field].take() else {
                continue;
            };
            let mut values: Vec<f64> = col.as_primitive::<Float64Type>().values().to_vec();
            a.apply(&mut values, &times, entities.values(), &mut labels);
            columns[a.field] = Some(Arc::new(Float64Array::from(values)));
        }
        for (col, expr, reads) in &plan.exprs {
            let inputs: Vec<ArrayRef> = reads
                .iter()
                .map(|i| {
                    columns[*i].clone().ok_or_else(|| {
                        ArrowError::ComputeError(format!(
                            "{} is not computed yet",
                            plan.fields[*i].0
                        ))
                    })
                })
                .collect::<Result<_, _>>()?;
            columns[*col] = Some(evaluate(expr, &inputs, events.len()));
        }
        let mut out: Vec<ArrayRef> = columns
            .into_iter()
            .map(|c| c.ok_or_else(|| ArrowError::ComputeError("a column was not generated".into())))
            .collect::<Result<_, _>>()?;
        if !plan.anomalies.is_empty() {
            // Every anomaly that touched the row, in declaration order, comma-separated.
            let mut b = StringBuilder::with_capacity(labels.len(), 0);
            for mask in labels {
                if mask == 0 {
                    b.append_null();
                    continue;
                }
                let names: Vec<&str> = (0..plan.labels.len())
                    .filter(|i| mask & (1u64 << i) != 0)
                    .map(|i| plan.labels[i].as_str())
                    .collect();
                b.append_value(names.join(","));
            }
            out.push(Arc::new(b.finish()));
        }
        RecordBatch::try_new(plan.schema.clone(), out)
    }
}

/// Evaluate an expression over the chunk's rows.
fn evaluate(expr: &Expr, inputs: &[ArrayRef], n: usize) -> ArrayRef {
    let inputs: Vec<Column<'_>> = inputs.iter().map(Column::of).collect();
    let mut row: Vec<Value> = Vec::with_capacity(inputs.len());
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        row.clear();
        let mut null = false;
        for c in &inputs {
            match c.value(i) {
                Some(v) => row.push(v),
                None => {
                    null = true;
                    break;
                }
            }
        }
        results.push(if null { None } else { expr.eval(&row) });
    }
    let results = results.into_iter();
    match expr.ty() {
        Type::Int => Arc::new(
            results
                .map(|r| match r {
                    Some(Value::Int(i)) => Some(i),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        Type::Float => Arc::new(
            results
                .map(|r| match r {
                    Some(Value::Float(f)) => Some(f),
                    Some(Value::Int(i)) => Some(i as f64),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        Type::Bool => Arc::new(
            results
                .map(|r| match r {
                    Some(Value::Bool(x)) => Some(x),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        Type::Str => Arc::new(
            results
                .map(|r| match r {
                    Some(Value::Str(x)) => Some(x),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
        Type::Time => Arc::new(
            results
                .map(|r| match r {
                    Some(Value::Time(t)) => Some(t),
                    _ => None,
                })
                .collect::<TimestampMicrosecondArray>()
                .with_timezone(sluice_protocol::UTC),
        ),
    }
}

/// An expression input, downcast once per chunk rather than once per row.
enum Column<'a> {
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Bool(&'a BooleanArray),
    Str(&'a StringArray),
    Time(&'a TimestampMicrosecondArray),
    /// A type expressions cannot read: every row is NULL.
    Other,
}

impl<'a> Column<'a> {
    fn of(a: &'a ArrayRef) -> Self {
        match a.data_type() {
            DataType::Int64 => Self::Int(a.as_primitive::<Int64Type>()),
            DataType::Float64 => Self::Float(a.as_primitive::<Float64Type>()),
            DataType::Boolean => Self::Bool(a.as_boolean()),
            DataType::Utf8 => Self::Str(a.as_string::<i32>()),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Self::Time(a.as_primitive::<TimestampMicrosecondType>())
            }
            _ => Self::Other,
        }
    }

    fn value(&self, i: usize) -> Option<Value> {
        let valid = |a: &dyn Array| a.is_valid(i);
        match self {
            Self::Int(a) if valid(*a) => Some(Value::Int(a.value(i))),
            Self::Float(a) if valid(*a) => Some(Value::Float(a.value(i))),
            Self::Bool(a) if valid(*a) => Some(Value::Bool(a.value(i))),
            Self::Str(a) if valid(*a) => Some(Value::Str(a.value(i).to_string())),
            Self::Time(a) if valid(*a) => Some(Value::Time(a.value(i))),
            _ => None,
        }
    }
}

/// Rows picked out of shared chunks, in the order given, as one batch.
fn interleave_rows<'a>(
    rows: impl Iterator<Item = (&'a Arc<RecordBatch>, usize)>,
) -> Result<RecordBatch, ArrowError> {
    let mut batches: Vec<&'a Arc<RecordBatch>> = Vec::new();
    let mut idx = Vec::new();
    for (b, row) in rows {
        let bi = match batches.iter().position(|x| Arc::ptr_eq(x, b)) {
            Some(i) => i,
            None => {
                batches.push(b);
                batches.len() - 1
            }
        };
        idx.push((bi, row));
    }
    let parts: Vec<&RecordBatch> = batches.iter().map(|b| b.as_ref()).collect();
    arrow_select::interleave::interleave_record_batch(&parts, &idx)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use arrow_array::cast::AsArray;
    use sha2::{Digest, Sha256};

    use super::*;

    fn scenario(text: &str) -> Arc<Scenario> {
        let spec: ScenarioSpec = toml::from_str(text).expect("parses");
        Arc::new(Scenario::compile(&spec, false).expect("compiles"))
    }

    fn compile_err(text: &str) -> String {
        let spec: ScenarioSpec = toml::from_str(text).expect("parses");
        let e = Scenario::compile(&spec, false).expect_err("invalid");
        format!("{}: {}", e.key, e.message)
    }

    /// Every stream's rows, concatenated per stream.
    fn run_all(
        sc: &Arc<Scenario>,
        rows: Option<u64>,
        chunk: usize,
        threads: usize,
    ) -> Vec<RecordBatch> {
        let mut sim = Simulation::new(
            sc.clone(),
            RunOptions {
                start_us: 0,
                rows,
                end_us: None,
                threads,
            },
        );
        let n = sc.streams.len();
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        loop {
            match sim.step(chunk, None).expect("step") {
                Step::Rows { stream, batch } => parts[stream].push(batch),
                Step::Done => break,
                Step::Wait(_) => panic!("no clock"),
            }
        }
        parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| arrow_select::concat::concat_batches(&sc.schema(i), &p).expect("concat"))
            .collect()
    }

    fn digest(batches: &[RecordBatch]) -> String {
        let mut h = Sha256::new();
        for b in batches {
            let mut buf = Vec::new();
            let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
            w.write(b).expect("json");
            w.finish().expect("json");
            h.update(&buf);
        }
        format!("{:x}", h.finalize())
    }

    fn f64s<'a>(b: &'a RecordBatch, name: &str) -> &'a [f64] {
        b.column_by_name(name)
            .expect(name)
            .as_primitive::<Float64Type>()
            .values()
    }
    fn strs(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        b.column_by_name(name)
            .expect(name)
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }
    fn times(b: &RecordBatch) -> Vec<i64> {
        b.column_by_name("ts")
            .expect("ts")
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    }

    const ECOMMERCE: &str = include_str!("../../../examples/sim/ecommerce.toml");
    const IOT: &str = include_str!("../../../examples/sim/iot-fleet.toml");
    const HOSTS: &str = include_str!("../../../examples/sim/host-metrics.toml");
    const WEB: &str = include_str!("../../../examples/sim/web-access.toml");

    #[test]
    fn examples_compile() {
        for text in [ECOMMERCE, IOT, HOSTS, WEB] {
            scenario(text);
        }
    }

    #[test]
    fn identical_output_whatever_the_chunk_size_and_threads() {
        for text in [ECOMMERCE, IOT, HOSTS] {
            let sc = scenario(text);
            let a = digest(&run_all(&sc, Some(30_000), 8192, 1));
            let b = digest(&run_all(&sc, Some(30_000), 777, 4));
            let c = digest(&run_all(&sc, Some(30_000), 30_000, 2));
            assert_eq!(a, b);
            assert_eq!(a, c);
        }
        // And a different seed changes it.
        let other = scenario(&ECOMMERCE.replace("seed = 5", "seed = 6"));
        assert_ne!(
            digest(&run_all(&scenario(ECOMMERCE), Some(5000), 8192, 1)),
            digest(&run_all(&other, Some(5000), 8192, 1))
        );
    }

    #[test]
    fn related_streams_keep_their_keys() {
        let sc = scenario(ECOMMERCE);
        let out = run_all(&sc, Some(40_000), 4096, 1);
        let (orders, payments, shipments) = (&out[0], &out[1], &out[2]);
        let order_ids = strs(orders, "order_id");
        let by_id: HashMap<&str, usize> = order_ids
            .iter()
            .enumerate()
            .map(|(i, o)| (o.as_deref().expect("id"), i))
            .collect();
        assert_eq!(by_id.len(), orders.num_rows(), "order ids are unique");
        let (ot, pt) = (times(orders), times(payments));
        let (oa, pa) = (f64s(orders, "amount"), f64s(payments, "amount"));
        let (oc, pc) = (strs(orders, "customer_id"), strs(payments, "customer_id"));
        let mut paid = HashSet::new();
        for (i, id) in strs(payments, "order_id").iter().enumerate() {
            let id = id.as_deref().expect("order id");
            let o = by_id[id];
            assert!(pt[i] >= ot[o], "a payment follows its order");
            assert_eq!((pa[i], &pc[i]), (oa[o], &oc[o]));
            paid.insert(id.to_string());
        }
        // 96 % of orders are paid (orders near the end may be paid after it).
        let share = paid.len() as f64 / orders.num_rows() as f64;
        assert!((0.94..0.975).contains(&share), "{share}");
        for id in strs(shipments, "order_id") {
            assert!(
                paid.contains(&id.expect("order id")),
                "shipped orders were paid"
            );
        }
        assert!(
            times(payments).windows(2).all(|w| w[0] <= w[1]),
            "payments in time order"
        );
    }

    #[test]
    fn rates_entities_and_distributions_hold_over_a_large_sample() {
        let sc = scenario(HOSTS);
        let out = run_all(&sc, None, 8192, 1);
        let (cpu, logs) = (&out[0], &out[1]);
        // 40 hosts every 15 s for two days.
        assert_eq!(cpu.num_rows(), 40 * 4 * 60 * 48);
        // Logs: Poisson, 6 per minute per host (plus a burst of 20x on 3 hosts for 10 min).
        let expected = 40.0 * 6.0 * 60.0 * 48.0 + 3.0 * 6.0 * 10.0 * 19.0;
        let n = logs.num_rows() as f64;
        assert!(
            (n - expected).abs() < 4.0 * expected.sqrt(),
            "{n} vs {expected}"
        );
        // Hosts are shared: every host of the logs is a host of the metrics.
        let hosts: HashSet<_> = strs(cpu, "host").into_iter().collect();
        assert_eq!(hosts.len(), 40);
        assert!(strs(logs, "host").into_iter().all(|h| hosts.contains(&h)));
        // Category frequencies.
        let levels = strs(logs, "level");
        let errors = levels
            .iter()
            .filter(|l| l.as_deref() == Some("ERROR"))
            .count() as f64
            / n;
        assert!((errors - 0.05).abs() < 0.005, "{errors}");
        // Seasonality: CPU peaks around 14:00 and bottoms out around 02:00, period one day.
        let (ts, cpu_pct) = (times(cpu), f64s(cpu, "cpu_pct"));
        let mut by_hour = [(0.0, 0u32); 24];
        for (t, v) in ts.iter().zip(cpu_pct) {
            let h = ((t / 3_600_000_000) % 24) as usize;
            by_hour[h].0 += v;
            by_hour[h].1 += 1;
        }
        let mean: Vec<f64> = by_hour.iter().map(|(s, n)| s / f64::from(*n)).collect();
        let peak = (0..24)
            .max_by(|a, b| mean[*a].total_cmp(&mean[*b]))
            .expect("hours");
        let low = (0..24)
            .min_by(|a, b| mean[*a].total_cmp(&mean[*b]))
            .expect("hours");
        assert!(
            (13..=15).contains(&peak) && (1..=3).contains(&low),
            "{mean:?}"
        );
        assert!(
            (mean[peak] - mean[low] - 40.0).abs() < 4.0,
            "daily amplitude 20"
        );
        // Expressions see the row: load1 = cpu_pct / 100 * cores.
        let cores = cpu
            .column_by_name("cores")
            .expect("cores")
            .as_primitive::<Int64Type>()
            .values();
        let load = f64s(cpu, "load1");
        for i in (0..cpu.num_rows()).step_by(997) {
            assert!((load[i] - (cpu_pct[i] / 100.0 * cores[i] as f64).max(0.0)).abs() < 1e-9);
        }
        // Random walks stay within their bounds (where no drift was injected on top).
        let labels = strs(cpu, ANOMALY_COLUMN);
        let mem = f64s(cpu, "mem_used_gb");
        assert!(
            labels.iter().any(Option::is_some),
            "the memory leak was injected"
        );
        for (v, label) in mem.iter().zip(&labels) {
            if label.is_none() {
                assert!((0.5..=60.0).contains(v), "{v}");
            }
        }
    }

    #[test]
    fn anomaly_labels_match_the_injected_changes() {
        let sc = scenario(
            r#"
            seed = 1
            start = "2026-01-01T00:00:00Z"
            end = "2026-01-01T06:00:00Z"
            [entities.dev]
            count = 20
            [streams.m]
            entity = "dev"
            rate = { type = "constant", every = "10s" }
            [streams.m.fields]
            ts = { type = "timestamp" }
            dev = { type = "entity" }
            v = { type = "normal", mean = 10.0, stddev = 0.001 }
            w = { type = "normal", mean = 10.0, stddev = 0.5 }
            x = { type = "normal", mean = 0.0, stddev = 0.001 }
            [[streams.m.anomalies]]
            type = "spike"
            field = "v"
            probability = 0.01
            magnitude = 5.0
            [[streams.m.anomalies]]
            type = "stuck"
            field = "w"
            at = "2026-01-01T01:00:00Z"
            duration = "30m"
            entities = 3
            [[streams.m.anomalies]]
            type = "drift"
            field = "x"
            at = "2026-01-01T02:00:00Z"
            duration = "1h"
            per_hour = 6.0
            entities = 2
            [[streams.m.anomalies]]
            type = "dropout"
            at = "2026-01-01T04:00:00Z"
            duration = "20m"
            entities = 4
        "#,
        );
        let b = &run_all(&sc, None, 1000, 1)[0];
        let labels = strs(b, ANOMALY_COLUMN);
        let (v, w, x, ts, dev) = (
            f64s(b, "v"),
            f64s(b, "w"),
            f64s(b, "x"),
            times(b),
            strs(b, "dev"),
        );
        let hour = 3_600_000_000i64;
        let t0 = ts[0];
        let mut spikes = 0;
        let mut stuck: HashMap<String, Vec<f64>> = HashMap::new();
        for i in 0..b.num_rows() {
            let label = labels[i].as_deref();
            // Spikes: exactly the labelled rows are 5 higher (unless another label won).
            let has = |l: &str| label.is_some_and(|x| x.split(',').any(|y| y == l));
            // Spikes: exactly the labelled rows are 5 higher.
            if has("spike") {
                spikes += 1;
                assert!((v[i] - 15.0).abs() < 0.01);
            } else {
                assert!((v[i] - 10.0).abs() < 0.01);
            }
            if has("stuck") {
                stuck
                    .entry(dev[i].clone().expect("dev"))
                    .or_default()
                    .push(w[i]);
                assert!((t0 + hour..t0 + hour * 3 / 2).contains(&ts[i]));
            }
            if has("drift") {
                let hours = (ts[i] - (t0 + 2 * hour)) as f64 / hour as f64;
                assert!((x[i] - 6.0 * hours).abs() < 0.01, "drift grows at 6/h");
            } else {
                assert!(x[i].abs() < 0.01);
            }
            if (t0 + 4 * hour..t0 + 4 * hour + hour / 3).contains(&ts[i]) {
                assert!(!has("dropout"));
            }
        }
        // 1 % of 43,200 events (20 devices every 10 s for 6 hours).
        assert!((350..520).contains(&spikes), "{spikes}");
        assert_eq!(stuck.len(), 3, "three stuck devices");
        for values in stuck.values() {
            assert!(
                values.windows(2).all(|p| p[0] == p[1]),
                "stuck values do not move"
            );
            assert_eq!(values.len(), 180);
        }
        // Four devices are silent for 20 minutes; the first event after each gap is labelled.
        let dropouts = labels
            .iter()
            .filter(|l| l.as_deref().is_some_and(|x| x.contains("dropout")))
            .count();
        assert_eq!(dropouts, 4);
        assert_eq!(b.num_rows(), 20 * 6 * 360 - 4 * 120);
    }

    #[test]
    fn unpaced_streams_run_against_a_clock_without_waiting() {
        let text = r#"
            [streams.s]
            [streams.s.fields]
            ts = { type = "timestamp" }
            n = { type = "sequence" }
        "#;
        let spec: ScenarioSpec = toml::from_str(text).expect("parses");
        let sc = Arc::new(Scenario::compile(&spec, true).expect("compiles unpaced"));
        let mut sim = Simulation::new(
            sc,
            RunOptions {
                start_us: 0,
                rows: Some(10_000),
                end_us: None,
                threads: 1,
            },
        );
        // A clock far behind the wall clock must not stall an unpaced stream.
        let mut rows = 0;
        for _ in 0..100 {
            match sim.step(1000, Some(0)).expect("step") {
                Step::Rows { batch, .. } => rows += batch.num_rows(),
                Step::Done => break,
                Step::Wait(t) => panic!("an unpaced stream waited for {t}"),
            }
        }
        assert_eq!(rows, 10_000);
    }

    #[test]
    fn late_events_arrive_out_of_order_but_all_arrive() {
        let text = r#"
            seed = 2
            start = "2026-01-01T00:00:00Z"
            [entities.s]
            count = 10
            [streams.r]
            entity = "s"
            rate = { type = "constant", every = "1s" }
            late = { fraction = 0.05, max_delay = "20s" }
            [streams.r.fields]
            ts = { type = "timestamp" }
            n = { type = "sequence" }
        "#;
        let b = &run_all(&scenario(text), Some(20_000), 512, 1)[0];
        let ts = times(b);
        let seq = b
            .column_by_name("n")
            .expect("n")
            .as_primitive::<Int64Type>()
            .values();
        let mut sorted: Vec<i64> = seq.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=20_000).collect::<Vec<_>>(), "every event once");
        // An event is out of order when an earlier-timed one came after it.
        let mut max_seen = i64::MIN;
        let mut behind = 0;
        for t in &ts {
            if *t < max_seen {
                behind += 1;
                assert!(max_seen - t <= 20_000_000, "no later than max_delay");
            }
            max_seen = max_seen.max(*t);
        }
        let share = f64::from(behind) / 20_000.0;
        assert!((0.03..0.06).contains(&share), "{share}");
    }

    #[test]
    fn errors_name_the_key() {
        let base = r#"
            [entities.d]
            count = 2
            [streams.s]
            entity = "d"
            rate = { type = "constant", every = "1s" }
            [streams.s.fields]
            ts = { type = "timestamp" }
            v = { type = "uniform", min = 0.0, max = 1.0 }
        "#;
        let cases = [
            (
                "v = { type = \"uniform\", min = 0.0, max = 1.0 }",
                "v = { type = \"expr\", expr = \"w + 1\" }\nw = { type = \"expr\", expr = \"v * 2\" }",
                "streams.s.fields: expressions refer to each other in a cycle: v, w",
            ),
            (
                "entity = \"d\"",
                "entity = \"nope\"",
                "streams.s.entity: no entity set named \"nope\"",
            ),
            (
                "every = \"1s\"",
                "every = \"1s\", per_second = 2",
                "streams.s.rate: give only one of",
            ),
            (
                "v = { type",
                "z = { type = \"attribute\", name = \"colour\" }\nv = { type",
                "streams.s.fields.z: the stream's entities have no attribute \"colour\"",
            ),
            (
                "v = { type",
                "z = { type = \"expr\", expr = \"v + 'a'\" }\nv = { type",
                "streams.s.fields.z: `+` cannot combine a float64 and a string",
            ),
            (
                "count = 2",
                "count = 2\nid = \"dev\"",
                "entities.d.id: \"dev\" has no {index}",
            ),
        ];
        for (from, to, want) in cases {
            let err = compile_err(&base.replace(from, to));
            assert!(err.starts_with(want), "{err}\nwanted: {want}");
        }
        let anomaly = |a: &str| compile_err(&format!("{base}\n[[streams.s.anomalies]]\n{a}"));
        assert!(
            anomaly("type = \"spike\"\nfield = \"v\"\nmagnitude = 1.0")
                .contains("streams.s.anomalies.0.at: give `at`")
        );
        assert!(
            anomaly("type = \"drift\"\nfield = \"v\"\nprobability = 0.1\nduration = \"1m\"")
                .contains("per_hour")
        );
        assert!(
            anomaly("type = \"spike\"\nfield = \"ts\"\nprobability = 0.1\nmagnitude = 1.0")
                .contains("float64 fields")
        );
        assert!(
            anomaly("type = \"burst\"\nprobability = 0.1\nduration = \"1m\"").contains("factor")
        );
        assert!(compile_err(&format!("{base}\n[streams.c]\nparent = {{ stream = \"c\", delay = {{ type = \"constant\", after = \"1s\" }} }}\n[streams.c.fields]\nts = {{ type = \"timestamp\" }}")).contains("cycle"));
    }
}

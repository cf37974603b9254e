//! One stream's plan: its origin, field types, expressions in evaluation order, checked
//! anomalies and schema.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, TimeUnit};

use super::plan::{ANOMALY_COLUMN, Origin, StreamPlan};
use crate::expr::{Expr, Type};
use crate::field::FieldSpec;
use crate::generator::EntityValues;
use crate::scenario::{AnomalyKind, AnomalySpec, ScenarioSpec, StreamSpec};
use crate::schedule::{Delay, Late, Rate};
use sluice_ops::config::Invalid;

#[allow(clippy::too_many_arguments)]
pub(super) fn compile_stream(
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
    for (i, (fname, spec)) in s.fields.iter().enumerate() {
        // Dates, decimals and nested fields are generated as they are; expressions cannot
        // read them (`expr_type` has no equivalent), every other column they can.
        let generated = matches!(
            spec,
            FieldSpec::Date {}
                | FieldSpec::Decimal { .. }
                | FieldSpec::List { .. }
                | FieldSpec::Map { .. }
                | FieldSpec::Struct { .. }
        );
        if types[i].is_none() || (!generated && types[i].as_ref().and_then(expr_type).is_none()) {
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

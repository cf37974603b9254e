//! Arrow columns: a chunk's columns generated (on several threads), anomalies applied and
//! expressions evaluated; rows picked out of shared chunks.

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow_schema::{ArrowError, DataType, TimeUnit};

use super::simulation::Simulation;
use crate::expr::{Expr, Type, Value};
use crate::generator::ChunkContext;
use crate::schedule::Event;

impl Simulation {
    /// Generate the columns of a chunk of events.
    pub(super) fn values(
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
pub(super) fn evaluate(expr: &Expr, inputs: &[ArrayRef], n: usize) -> ArrayRef {
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
pub(super) fn interleave_rows<'a>(
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

//! Expectations: named SQL rules every output row must pass, and a unique key. Rows that
//! fail go to the model's quarantine table with the rules they failed; nothing is dropped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::functions_aggregate::expr_fn::{max, min};
use datafusion::prelude::{SessionContext, ident, lit};

use super::ModelError;

/// Column of a quarantined row naming the rules it failed (comma-separated).
pub const RULE_COLUMN: &str = "_rule";
/// When the row was quarantined.
pub const QUARANTINED_AT_COLUMN: &str = "_quarantined_at";
/// Rule name of the unique-key check.
pub const UNIQUE_RULE: &str = "unique";

/// Output rows split by the expectations.
#[derive(Debug, Default)]
pub struct Checked {
    pub pass: Vec<RecordBatch>,
    /// Failing rows in the quarantine schema.
    pub fail: Vec<RecordBatch>,
    /// Failed rows per rule (a row failing two rules counts for both).
    pub per_rule: BTreeMap<String, u64>,
}

/// The quarantine table's schema for a model whose output is `output`.
pub fn quarantine_schema(output: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = output
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(RULE_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(
        QUARANTINED_AT_COLUMN,
        DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into())),
        false,
    ));
    Arc::new(Schema::new(fields))
}

/// Split `batches` (all of `schema`) by `rules` and the `unique` key. `target`, when
/// given, is a table registered in `ctx` holding the rows already in the model's target.
pub async fn check(
    ctx: &SessionContext,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    rules: &BTreeMap<String, String>,
    unique: &[String],
    target: Option<&str>,
) -> Result<Checked, ModelError> {
    if rules.is_empty() && unique.is_empty() {
        return Ok(Checked {
            pass: batches,
            ..Default::default()
        });
    }
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let mut compiled = Vec::new();
    for (name, sql) in rules {
        let rule = |msg: String| ModelError::Expectation {
            rule: name.clone(),
            msg,
        };
        let expr = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| rule(e.to_string()))?;
        let physical = ctx
            .create_physical_expr(expr, &df_schema)
            .map_err(|e| rule(e.to_string()))?;
        let ty = physical
            .data_type(schema)
            .map_err(|e| rule(e.to_string()))?;
        if ty != DataType::Boolean {
            return Err(rule(format!("{sql:?} is {ty}, not a boolean")));
        }
        compiled.push((name.clone(), physical));
    }
    let mut unique_check = match unique.is_empty() {
        true => None,
        false => Some(UniqueKeys::new(ctx, schema, unique, &batches, target).await?),
    };
    let now = chrono::Utc::now().timestamp_micros();
    let qschema = quarantine_schema(schema);
    let mut out = Checked::default();
    for batch in batches {
        let n = batch.num_rows();
        let mut failed: Vec<(&str, Vec<bool>)> = Vec::new();
        for (name, physical) in &compiled {
            let value = physical.evaluate(&batch)?.into_array(n)?;
            let value = value
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| ModelError::Expectation {
                    rule: name.clone(),
                    msg: "did not evaluate to booleans".into(),
                })?;
            // NULL fails: a rule that cannot be checked is not passed.
            failed.push((
                name.as_str(),
                (0..n)
                    .map(|i| !value.is_valid(i) || !value.value(i))
                    .collect(),
            ));
        }
        if let Some(u) = &mut unique_check {
            let others: Vec<bool> = (0..n)
                .map(|i| failed.iter().any(|(_, rows)| rows[i]))
                .collect();
            failed.push((UNIQUE_RULE, u.duplicates(&batch, &others)?));
        }
        let mut any = vec![false; n];
        for (name, rows) in &failed {
            let count = rows.iter().filter(|f| **f).count() as u64;
            if count > 0 {
                *out.per_rule.entry(name.to_string()).or_default() += count;
            }
            for (a, f) in any.iter_mut().zip(rows) {
                *a |= *f;
            }
        }
        if !any.iter().any(|f| *f) {
            out.pass.push(batch);
            continue;
        }
        let mask = BooleanArray::from(any.clone());
        let keep = arrow::compute::not(&mask)?;
        out.pass
            .push(arrow::compute::filter_record_batch(&batch, &keep)?);
        let failing = arrow::compute::filter_record_batch(&batch, &mask)?;
        let reasons: StringArray = (0..n)
            .filter(|i| any[*i])
            .map(|i| {
                Some(
                    failed
                        .iter()
                        .filter(|(_, rows)| rows[i])
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
            .collect();
        let mut columns: Vec<ArrayRef> = failing.columns().to_vec();
        columns.push(Arc::new(reasons));
        columns.push(Arc::new(
            arrow_array::TimestampMicrosecondArray::from(vec![now; failing.num_rows()])
                .with_timezone(sluice_protocol::UTC),
        ));
        out.fail
            .push(RecordBatch::try_new(qschema.clone(), columns)?);
    }
    Ok(out)
}

/// Keys seen so far: the target's (in the run's key range) and this run's.
struct UniqueKeys {
    columns: Vec<usize>,
    converter: RowConverter,
    seen: HashSet<Box<[u8]>>,
}

impl UniqueKeys {
    async fn new(
        ctx: &SessionContext,
        schema: &SchemaRef,
        keys: &[String],
        batches: &[RecordBatch],
        target: Option<&str>,
    ) -> Result<Self, ModelError> {
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for k in keys {
            let (i, f) = schema
                .column_with_name(k)
                .ok_or_else(|| ModelError::Expectation {
                    rule: UNIQUE_RULE.into(),
                    msg: format!("column {k:?} is not in the model's output"),
                })?;
            columns.push(i);
            fields.push(SortField::new(f.data_type().clone()));
        }
        let converter = RowConverter::new(fields)?;
        let mut me = Self {
            columns,
            converter,
            seen: HashSet::new(),
        };
        let Some(target) = target else {
            return Ok(me);
        };
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(me);
        }
        // Only target rows whose first key column falls in this run's range can collide;
        // the filter lets the table scan skip files by their column bounds.
        let first = ident(&keys[0]);
        let bounds = ctx
            .read_batches(batches.to_vec())?
            .aggregate(vec![], vec![min(first.clone()), max(first.clone())])?
            .collect()
            .await?;
        let mut existing = ctx.table(target).await?;
        if let Some(b) = bounds.first().filter(|b| b.num_rows() == 1) {
            let lo = ScalarValue::try_from_array(b.column(0), 0)?;
            let hi = ScalarValue::try_from_array(b.column(1), 0)?;
            if !lo.is_null() && !hi.is_null() {
                existing = existing.filter(first.between(lit(lo), lit(hi)))?;
            }
        }
        let existing = existing
            .select(keys.iter().map(ident).collect::<Vec<_>>())?
            .collect()
            .await?;
        for b in existing {
            let rows = me.converter.convert_columns(b.columns())?;
            for r in rows.iter() {
                me.seen.insert(r.as_ref().into());
            }
        }
        Ok(me)
    }

    /// For each row: is its key already in the target or in an earlier row that goes
    /// there? Rows that fail another rule (`quarantined`) do not claim their key, so
    /// uniqueness means the same within a run as across runs: one row per key in the target.
    fn duplicates(
        &mut self,
        batch: &RecordBatch,
        quarantined: &[bool],
    ) -> Result<Vec<bool>, ModelError> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|i| batch.column(*i).clone())
            .collect();
        let rows = self.converter.convert_columns(&cols)?;
        Ok(rows
            .iter()
            .zip(quarantined)
            .map(|(r, q)| {
                let dup = self.seen.contains(r.as_ref());
                if !dup && !q {
                    self.seen.insert(r.as_ref().into());
                }
                dup
            })
            .collect())
    }
}

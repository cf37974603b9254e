//! Partition specs as the config writes them (`day(ts)`, `bucket(16, host)`, `site`), the
//! bronze default, and their binding to a table's schema.

use std::fmt;

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::{RecordBatch, UInt32Array};
use arrow_schema::{DataType, Schema as ArrowSchema};
use datafusion::arrow::row::{RowConverter, SortField};
use iceberg::arrow::{PartitionValueCalculator, arrow_struct_to_literal};
use iceberg::spec::{
    Literal, PartitionKey, PartitionSpec, Schema, SchemaRef, StructType, Transform,
    UnboundPartitionSpec,
};
use iceberg::{Error, ErrorKind};

use super::INGESTED_AT_COLUMN;

/// One partition field: a transform of a column.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PartitionField {
    /// The Iceberg transform.
    pub transform: Transform,
    /// The source column.
    pub column: String,
}

impl PartitionField {
    /// The partition field's name: the column, and the transform unless identity
    /// (`ts_day`, `host_bucket_16`, `site`).
    pub fn name(&self) -> String {
        match self.transform {
            Transform::Identity => self.column.clone(),
            Transform::Bucket(n) => format!("{}_bucket_{n}", self.column),
            Transform::Truncate(w) => format!("{}_trunc_{w}", self.column),
            Transform::Year => format!("{}_year", self.column),
            Transform::Month => format!("{}_month", self.column),
            Transform::Day => format!("{}_day", self.column),
            Transform::Hour => format!("{}_hour", self.column),
            Transform::Void | Transform::Unknown => format!("{}_void", self.column),
        }
    }
}

impl fmt::Display for PartitionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transform {
            Transform::Identity => write!(f, "{}", self.column),
            Transform::Bucket(n) => write!(f, "bucket({n}, {})", self.column),
            Transform::Truncate(w) => write!(f, "truncate({w}, {})", self.column),
            Transform::Year => write!(f, "year({})", self.column),
            Transform::Month => write!(f, "month({})", self.column),
            Transform::Day => write!(f, "day({})", self.column),
            Transform::Hour => write!(f, "hour({})", self.column),
            Transform::Void | Transform::Unknown => write!(f, "void({})", self.column),
        }
    }
}

impl TryFrom<String> for PartitionField {
    type Error = String;

    /// `column`, `identity(column)`, `year|month|day|hour(column)`, `bucket(N, column)`
    /// or `bucket[N](column)`, `truncate(W, column)` or `truncate[W](column)`.
    fn try_from(text: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a partition field: write a column, or identity(c), year(c), \
                 month(c), day(c), hour(c), bucket(N, c) or truncate(W, c)"
            )
        };
        let t = text.trim();
        let Some(open) = t.find(['(', '[']) else {
            return column(t).map(|c| Self {
                transform: Transform::Identity,
                column: c,
            });
        };
        let name = t[..open].trim().to_ascii_lowercase();
        let rest = &t[open..];
        // `bucket[16](c)` and `bucket(16, c)` alike: the number, then the column.
        let (number, args) = if let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']').ok_or_else(bad)?;
            let inner = after
                .trim()
                .strip_prefix('(')
                .and_then(|a| a.strip_suffix(')'))
                .ok_or_else(bad)?;
            (Some(n.trim()), inner)
        } else {
            let inner = rest
                .strip_prefix('(')
                .and_then(|a| a.strip_suffix(')'))
                .ok_or_else(bad)?;
            match inner.split_once(',') {
                Some((n, c)) => (Some(n.trim()), c),
                None => (None, inner),
            }
        };
        let column = column(args.trim())?;
        let n = |what: &str| -> Result<u32, String> {
            let n = number
                .ok_or_else(|| format!("{text:?}: {what} needs a number: {what}(N, column)"))?;
            match n.parse::<u32>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(format!("{text:?}: {n:?} is not a positive number")),
            }
        };
        let none = |t: Transform| {
            if number.is_some() { Err(bad()) } else { Ok(t) }
        };
        let transform = match name.as_str() {
            "identity" => none(Transform::Identity)?,
            "year" | "years" => none(Transform::Year)?,
            "month" | "months" => none(Transform::Month)?,
            "day" | "days" => none(Transform::Day)?,
            "hour" | "hours" => none(Transform::Hour)?,
            "bucket" => Transform::Bucket(n("bucket")?),
            "truncate" => Transform::Truncate(n("truncate")?),
            _ => return Err(bad()),
        };
        Ok(Self { transform, column })
    }
}

/// A column name as the config writes it: not empty, no quotes or brackets.
fn column(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!("{text:?} is not a column name"))
    }
}

/// The partitioning of a new bronze table when the config names none: by day of its first
/// timestamp column (the event time), else by day of `_ingested_at`.
pub fn bronze_default(user: &ArrowSchema) -> Vec<PartitionField> {
    let event_time = user
        .fields()
        .iter()
        .find(|f| matches!(f.data_type(), DataType::Timestamp(..)))
        .map_or(INGESTED_AT_COLUMN.to_string(), |f| f.name().clone());
    vec![PartitionField {
        transform: Transform::Day,
        column: event_time,
    }]
}

/// `fields` bound to `schema`, or why they cannot be: a column it lacks, a transform its
/// type does not take, two fields of one name.
pub fn bind(schema: &Schema, fields: &[PartitionField]) -> Result<PartitionSpec, String> {
    let mut builder = PartitionSpec::builder(schema.clone());
    for f in fields {
        let source = schema.field_by_name(&f.column).ok_or_else(|| {
            format!(
                "partition field {f}: the table has no column {:?}",
                f.column
            )
        })?;
        f.transform
            .result_type(&source.field_type)
            .map_err(|e| format!("partition field {f}: {e}"))?;
        if matches!(f.transform, Transform::Truncate(_))
            && matches!(
                *source.field_type,
                iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Binary)
            )
        {
            // iceberg-rust 0.10 cannot truncate the binary arrays it reads
            // (apache/iceberg-rust#3119).
            return Err(format!(
                "partition field {f}: binary columns are not truncated"
            ));
        }
        builder = builder
            .add_partition_field(&f.column, f.name(), f.transform)
            .map_err(|e| format!("partition field {f}: {e}"))?;
    }
    builder.build().map_err(|e| e.to_string())
}

/// Why `fields` cannot partition a bronze table for rows shaped like `user`, if they cannot.
pub fn check(user: &ArrowSchema, fields: &[PartitionField]) -> Result<(), String> {
    let arrow = super::bronze_arrow_schema(user);
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow)
        .map_err(|e| e.to_string())?;
    bind(&schema, fields).map(|_| ())
}

/// Whether `table`'s default spec is `fields` (same columns, transforms and order).
pub fn same(table: &iceberg::table::Table, fields: &[PartitionField]) -> bool {
    let meta = table.metadata();
    let spec = meta.default_partition_spec();
    let schema = meta.current_schema();
    spec.fields().len() == fields.len()
        && spec.fields().iter().zip(fields).all(|(have, want)| {
            have.transform == want.transform
                && schema.name_by_field_id(have.source_id) == Some(want.column.as_str())
        })
}

/// Columns of `table` that partition it by identity or truncation in any of its specs:
/// their partition values are stored with the column's type, so it cannot widen.
pub fn unwidenable(table: &iceberg::table::Table) -> Vec<String> {
    let meta = table.metadata();
    let schema = meta.current_schema();
    meta.partition_specs_iter()
        .flat_map(|spec| spec.fields().iter())
        .filter(|f| matches!(f.transform, Transform::Identity | Transform::Truncate(_)))
        .filter_map(|f| schema.name_by_field_id(f.source_id).map(str::to_string))
        .collect()
}

/// `fields` as the config writes them.
pub fn describe(fields: &[PartitionField]) -> String {
    if fields.is_empty() {
        return "unpartitioned".into();
    }
    fields
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `fields` as an unbound spec of `schema` (for a new table, whose ids the catalog assigns).
pub fn unbound(schema: &Schema, fields: &[PartitionField]) -> Result<UnboundPartitionSpec, String> {
    Ok(bind(schema, fields)?.into())
}

/// Splits batches by partition: the transforms run over whole columns, rows are grouped by
/// their encoded partition values, and a batch all of one partition (the usual case for
/// time partitions) passes whole, uncopied.
pub struct Splitter {
    calculator: PartitionValueCalculator,
    spec: PartitionSpec,
    schema: SchemaRef,
    partition_type: StructType,
}

impl Splitter {
    /// A splitter for batches of `schema` (the table's, with field ids) into `spec`'s
    /// partitions; `spec` must have fields.
    pub fn new(schema: SchemaRef, spec: PartitionSpec) -> Result<Self, Error> {
        Ok(Self {
            calculator: PartitionValueCalculator::try_new(&spec, &schema)?,
            partition_type: spec.partition_type(&schema)?,
            spec,
            schema,
        })
    }

    /// `batch`'s rows by partition, each part in row order.
    pub fn split(&self, batch: &RecordBatch) -> Result<Vec<(PartitionKey, RecordBatch)>, Error> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let values = self.calculator.calculate(batch)?;
        let arrow = |e: arrow_schema::ArrowError| {
            Error::new(ErrorKind::Unexpected, "cannot group rows by partition").with_source(e)
        };
        let columns = values.as_struct().columns().to_vec();
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )
        .map_err(arrow)?;
        let rows = converter.convert_columns(&columns).map_err(arrow)?;
        let first = rows.row(0);
        if (1..rows.num_rows()).all(|i| rows.row(i) == first) {
            return Ok(vec![(self.key(&values, 0)?, batch.clone())]);
        }
        let mut groups: Vec<Vec<u32>> = Vec::new();
        let mut index: HashMap<_, usize> = HashMap::new();
        for i in 0..rows.num_rows() {
            let g = *index.entry(rows.row(i)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i as u32);
        }
        groups
            .into_iter()
            .map(|rows| {
                let key = self.key(&values, rows[0] as usize)?;
                let take = UInt32Array::from(rows);
                let columns = batch
                    .columns()
                    .iter()
                    .map(|c| arrow_select::take::take(c, &take, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(arrow)?;
                Ok((
                    key,
                    RecordBatch::try_new(batch.schema(), columns).map_err(arrow)?,
                ))
            })
            .collect()
    }

    /// The partition key of row `row` of the partition values.
    fn key(&self, values: &arrow_array::ArrayRef, row: usize) -> Result<PartitionKey, Error> {
        let one = values.slice(row, 1);
        match arrow_struct_to_literal(&one, &self.partition_type)?
            .pop()
            .flatten()
        {
            Some(Literal::Struct(data)) => Ok(PartitionKey::new(
                self.spec.clone(),
                self.schema.clone(),
                data,
            )),
            other => Err(Error::new(
                ErrorKind::Unexpected,
                format!("partition values are no struct: {other:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, TimestampMicrosecondArray};
    use arrow_schema::{Field, TimeUnit};

    use super::*;

    fn parse(text: &str) -> Result<PartitionField, String> {
        PartitionField::try_from(text.to_string())
    }

    #[test]
    fn the_config_names_every_transform_in_either_spelling() {
        for (text, transform, column) in [
            ("site", Transform::Identity, "site"),
            ("identity(site)", Transform::Identity, "site"),
            ("day(ts)", Transform::Day, "ts"),
            ("Hour( ts )", Transform::Hour, "ts"),
            ("month(ts)", Transform::Month, "ts"),
            ("year(ts)", Transform::Year, "ts"),
            ("bucket(16, host)", Transform::Bucket(16), "host"),
            ("bucket[16](host)", Transform::Bucket(16), "host"),
            ("truncate(4, name)", Transform::Truncate(4), "name"),
            ("truncate[4](name)", Transform::Truncate(4), "name"),
        ] {
            let f = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (f.transform, f.column.as_str()),
                (transform, column),
                "{text}"
            );
            assert_eq!(parse(&f.to_string()), Ok(f.clone()), "{text} round trips");
        }
        assert_eq!(
            parse("bucket(16, host)").expect("bucket").name(),
            "host_bucket_16"
        );
        for bad in [
            "",
            "day()",
            "bucket(host)",
            "bucket(0, host)",
            "day(3, ts)",
            "week(ts)",
            "day(ts",
            "a b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parses");
        }
    }

    #[test]
    fn a_new_bronze_table_is_partitioned_by_day_of_its_event_time_or_of_arrival() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let with_time = ArrowSchema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new("at", ts, true),
        ]);
        assert_eq!(bronze_default(&with_time)[0].to_string(), "day(at)");
        let without = ArrowSchema::new(vec![Field::new("v", DataType::Float64, true)]);
        assert_eq!(bronze_default(&without)[0].to_string(), "day(_ingested_at)");
    }

    #[test]
    fn binding_refuses_missing_columns_and_transforms_their_types_do_not_take() {
        let arrow = crate::lake::bronze_arrow_schema(&ArrowSchema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new("host", DataType::Utf8, true),
        ]));
        let schema =
            iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow).expect("schema");
        let spec = bind(
            &schema,
            &[
                parse("bucket(8, host)").expect("f"),
                parse("day(_ingested_at)").expect("f"),
            ],
        )
        .expect("binds");
        assert_eq!(spec.fields().len(), 2);
        for (fields, why) in [
            (&["day(nope)"][..], "no column"),
            (&["day(host)"][..], "host"),
            (&["v", "identity(v)"][..], "v"),
        ] {
            let fields: Vec<PartitionField> = fields.iter().map(|f| parse(f).expect("f")).collect();
            let err = bind(&schema, &fields).expect_err("refused");
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn a_batch_splits_by_day_and_one_of_a_single_day_passes_whole() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
        let arrow = crate::lake::bronze_arrow_schema(&ArrowSchema::new(vec![
            Field::new("ts", ts, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let schema = Arc::new(
            iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&arrow).expect("schema"),
        );
        let spec = bind(&schema, &[parse("day(ts)").expect("f")]).expect("spec");
        let table = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).expect("arrow"));
        let day = 86_400_000_000i64;
        let batch = |times: Vec<i64>| {
            let n = times.len();
            RecordBatch::try_new(
                table.clone(),
                vec![
                    Arc::new(TimestampMicrosecondArray::from(times).with_timezone("+00:00")),
                    Arc::new(Int64Array::from_iter_values(0..n as i64)),
                    Arc::new(arrow_array::StringArray::from(vec!["a"; n])),
                    Arc::new(Int64Array::from(vec![1; n])),
                    Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("+00:00")),
                ],
            )
            .expect("batch")
        };
        let splitter = Splitter::new(schema.clone(), spec).expect("splitter");
        let parts = splitter
            .split(&batch(vec![day + 1, 2 * day + 5, day + 7, 2 * day]))
            .expect("split");
        assert_eq!(parts.len(), 2);
        let v = |b: &RecordBatch| {
            b.column(1)
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(v(&parts[0].1), [0, 2], "rows keep their order");
        assert_eq!(v(&parts[1].1), [1, 3]);
        assert_ne!(parts[0].0.data(), parts[1].0.data());
        let one = batch(vec![day, day + 1]);
        let parts = splitter.split(&one).expect("split");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].1, one);
    }
}

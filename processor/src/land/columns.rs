//! A batch's columns mapped onto its table's: user columns in table order (missing
//! nullable ones as nulls, narrower types cast up, nested types matched by structure rather
//! than by the names Arrow gives list items and map entries), then the lake's own columns.
//! A batch that only fits once the table gains columns or widens a type says so.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, Schema as ArrowSchema, SchemaRef};

use super::lander::{LandRequest, Origin};
use crate::lake::conform::conform;
use crate::lake::{self, evolve::Evolution};

/// Why a batch does not fit its table. No retry helps: the batch is what it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ColumnError {
    /// The batch has a column the lake adds itself.
    #[error("column {0:?} is reserved for the lake")]
    Reserved(String),
    /// The batch names a column twice.
    #[error("column {0:?} is given twice")]
    Twice(String),
    /// A column's type differs from the table's in a way no widening reconciles.
    #[error("column {column:?} has type {batch} but the table has {table}")]
    Type {
        /// The column's name.
        column: String,
        /// Its type in the batch.
        batch: DataType,
        /// Its type in the table.
        table: DataType,
    },
    /// The batch lacks a column the table requires.
    #[error("required column {0:?} is missing")]
    Missing(String),
    /// A new column of a type that cannot be added to a table that has rows: Iceberg
    /// readers (iceberg-rust 0.10, which the query API and models use) cannot fill it in
    /// for older files. Such a column can be in a table from its first batch.
    #[error(
        "new column {column:?} has type {data_type}, which cannot be added to an existing table (only booleans, numbers, decimals, dates, timestamps, strings and structs of these can)"
    )]
    NotAddable {
        /// The column's name.
        column: String,
        /// Its type in the batch.
        data_type: DataType,
    },
    /// A wider type for a column that partitions the table by identity or truncation,
    /// whose stored partition values cannot widen with it.
    #[error("column {0:?} partitions the table by its value and cannot widen")]
    PartitionSource(String),
    /// The stream's schema is `strict` and the batch needs the table to change.
    #[error("table {table} is strict and the batch needs {change}")]
    Strict {
        /// `namespace.table`.
        table: String,
        /// The change the batch needs (new columns, widened types).
        change: String,
    },
    /// The columns map, but their values do not convert to the table's types.
    #[error("batch does not fit table {table}: {source}")]
    DoesNotFit {
        /// `namespace.table`.
        table: String,
        /// Why Arrow could not convert the values.
        source: Arc<ArrowError>,
    },
}

impl ColumnError {
    /// Whether sending the batch again may succeed: never, it would not fit any better.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The metric reason of this error (`batches_quarantined{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Reserved(_) => "reserved_column",
            Self::Twice(_) => "duplicate_column",
            Self::Type { .. } => "type_change",
            Self::Missing(_) => "missing_column",
            Self::NotAddable { .. } => "unaddable_type",
            Self::PartitionSource(_) => "type_change",
            Self::Strict { .. } => "strict_schema",
            Self::DoesNotFit { .. } => "does_not_fit",
        }
    }
}

/// How a batch's columns map onto the table's columns.
#[derive(Debug, Clone)]
pub(super) enum ColumnSource {
    /// Take the batch column at this index, converted to the table type if it differs.
    Column(usize),
    /// The batch lacks this (nullable) column.
    Null,
}

/// What a batch needs to land in its table.
#[derive(Debug, Clone)]
pub(super) enum Plan {
    /// It fits the table as it is, by this mapping (one source per user column).
    Fits(Arc<Vec<ColumnSource>>),
    /// It fits once the table evolves so.
    Evolve(Evolution),
}

/// How `batch`'s columns map onto `table`'s, what the table must become first, or why the
/// batch can never fit.
pub(super) fn plan(
    batch: &ArrowSchema,
    table: &SchemaRef,
    coerce: bool,
) -> Result<Plan, ColumnError> {
    let mut seen = HashSet::new();
    let mut evolution = Evolution::default();
    for f in batch.fields() {
        if lake::LAKE_COLUMNS.contains(&f.name().as_str()) {
            return Err(ColumnError::Reserved(f.name().clone()));
        }
        if !seen.insert(f.name()) {
            return Err(ColumnError::Twice(f.name().clone()));
        }
        let Ok(tf) = table.field_with_name(f.name()) else {
            if !addable(f.data_type()) {
                return Err(ColumnError::NotAddable {
                    column: f.name().clone(),
                    data_type: f.data_type().clone(),
                });
            }
            evolution.add.push(f.as_ref().clone());
            continue;
        };
        match fit(f.data_type(), tf.data_type(), coerce) {
            Fit::Same | Fit::Cast => {}
            Fit::Widen => evolution
                .widen
                .push((f.name().clone(), lake::normalize_type(f.data_type()))),
            Fit::No => {
                return Err(ColumnError::Type {
                    column: f.name().clone(),
                    batch: f.data_type().clone(),
                    table: tf.data_type().clone(),
                });
            }
        }
    }
    if !evolution.is_empty() {
        return Ok(Plan::Evolve(evolution));
    }
    table
        .fields()
        .iter()
        .filter(|f| !lake::LAKE_COLUMNS.contains(&f.name().as_str()))
        .map(|tf| match batch.index_of(tf.name()) {
            Ok(i) => Ok(ColumnSource::Column(i)),
            Err(_) if tf.is_nullable() => Ok(ColumnSource::Null),
            Err(_) => Err(ColumnError::Missing(tf.name().clone())),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|m| Plan::Fits(Arc::new(m)))
}

/// How a batch column's type relates to its table column's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// The very same Arrow type.
    Same,
    /// The same shape (names of list items and map entries, field ids, encodings may
    /// differ) or a narrower type: converted on the way in.
    Cast,
    /// Wider than the table's, by a promotion Iceberg allows: the table must widen first.
    Widen,
    /// Nothing reconciles them.
    No,
}

/// How a batch column of type `batch` fits a table column of type `table`; with `coerce`,
/// text fits a number, boolean, date or timestamp column (value by value, on the way in).
fn fit(batch: &DataType, table: &DataType, coerce: bool) -> Fit {
    use DataType::*;
    let batch = lake::normalize_type(batch);
    if batch == *table {
        return Fit::Same;
    }
    // Nested types reconcile child by child; a child only ever casts, never widens (a
    // promotion inside a list or struct is not worth the reader trouble).
    let nested = |inner: Fit| match inner {
        Fit::Same | Fit::Cast => Fit::Cast,
        Fit::Widen | Fit::No => Fit::No,
    };
    match (&batch, table) {
        (Dictionary(_, values), _) => nested(fit(values, table, coerce)),
        (Utf8 | LargeUtf8 | Utf8View, t)
            if coerce && (t.is_numeric() || matches!(t, Boolean | Date32 | Timestamp(..))) =>
        {
            Fit::Cast
        }
        (Int8 | Int16 | Int32 | UInt8 | UInt16, Int32) => Fit::Cast,
        (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 | Int64, Int64) => Fit::Cast,
        (UInt32 | Int64, Int32) => Fit::Widen,
        (Float16 | Float32, Float32 | Float64) => Fit::Cast,
        (Float64, Float32) => Fit::Widen,
        (Decimal128(p1, s1), Decimal128(p2, s2)) if s1 == s2 => {
            if p1 <= p2 {
                Fit::Cast
            } else {
                Fit::Widen
            }
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8) => Fit::Cast,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary) => Fit::Cast,
        (List(b) | LargeList(b) | FixedSizeList(b, _), List(t)) => {
            nested(fit(b.data_type(), t.data_type(), coerce))
        }
        (Map(b, _), Map(t, _)) => match (b.data_type(), t.data_type()) {
            (Struct(bkv), Struct(tkv)) if bkv.len() == 2 && tkv.len() == 2 => {
                let key = fit(bkv[0].data_type(), tkv[0].data_type(), coerce);
                let value = fit(bkv[1].data_type(), tkv[1].data_type(), coerce);
                nested(if key == Fit::No || value == Fit::No {
                    Fit::No
                } else {
                    key.max_cast(value)
                })
            }
            _ => Fit::No,
        },
        (Struct(b), Struct(t)) => {
            // By name: every child of the batch must be in the table's struct (a field
            // added inside a struct is not reconciled by Iceberg readers), and what it
            // lacks must be nullable.
            let unmatched = b.iter().any(|bf| {
                t.iter()
                    .find(|tf| tf.name() == bf.name())
                    .is_none_or(|tf| nested(fit(bf.data_type(), tf.data_type(), coerce)) == Fit::No)
            });
            let lacking_required = t
                .iter()
                .any(|tf| !tf.is_nullable() && !b.iter().any(|bf| bf.name() == tf.name()));
            if lacking_required || unmatched {
                Fit::No
            } else {
                Fit::Cast
            }
        }
        _ => Fit::No,
    }
}

impl Fit {
    /// Of two fits that are not `No`, the one that needs more work.
    fn max_cast(self, other: Fit) -> Fit {
        if self == Fit::Same { other } else { self }
    }
}

/// Whether a column of this type can be added to a table that has rows, i.e. whether
/// iceberg-rust 0.10's reader can fill it in as nulls for files written before
/// (apache/iceberg-rust#2618): booleans, numbers, decimals, dates, timestamps, strings and
/// structs of these.
fn addable(t: &DataType) -> bool {
    use DataType::*;
    match lake::normalize_type(t) {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | Float32 | Float64
        | Decimal128(..) | Date32 | Utf8 | LargeUtf8 | Utf8View | Timestamp(..) => true,
        Dictionary(_, values) => addable(&values),
        Struct(fields) => !fields.is_empty() && fields.iter().all(|f| addable(f.data_type())),
        _ => false,
    }
}

/// Build the table-shaped batch: user columns in table order plus the lake's columns.
pub(super) fn to_table_batch(
    req: &LandRequest,
    mapping: &[ColumnSource],
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let n = req.batch.num_rows();
    let mut sources = mapping.iter();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            lake::AGENT_COLUMN => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                req.envelope.agent.as_str(),
                n,
            ))),
            lake::SEQ_COLUMN => Arc::new(match &req.origin {
                Some(Origin::Rows { offsets, .. }) => {
                    Int64Array::from_iter_values(offsets.iter().map(|o| o + 1))
                }
                _ => Int64Array::from_value(req.envelope.seq as i64, n),
            }),
            lake::INGESTED_AT_COLUMN => Arc::new(
                TimestampMicrosecondArray::from_value(req.received_at_us, n)
                    .with_timezone(sluice_protocol::UTC),
            ),
            _ => match sources.next() {
                Some(ColumnSource::Column(i)) => conform(req.batch.column(*i), field.data_type())?,
                Some(ColumnSource::Null) | None => {
                    arrow_array::new_null_array(field.data_type(), n)
                }
            },
        });
    }
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use arrow_array::builder::{Int64Builder, ListBuilder, MapBuilder, StringBuilder};
    use arrow_array::cast::AsArray;
    use arrow_array::{Array, Float32Array, Int32Array, StructArray};
    use arrow_schema::{Field, Fields, TimeUnit};

    use super::*;

    fn user_schema() -> ArrowSchema {
        ArrowSchema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("v", DataType::Float64, false),
            Field::new("host", DataType::Utf8, true),
        ])
    }

    fn table_of(user: &ArrowSchema) -> SchemaRef {
        crate::testing::bronze_table_schema(user)
    }

    fn fits(plan: Result<Plan, ColumnError>) -> Vec<ColumnSource> {
        match plan {
            Ok(Plan::Fits(m)) => m.to_vec(),
            other => panic!("expected a fit, got {other:?}"),
        }
    }

    #[test]
    fn maps_matching_and_missing_columns() {
        let table = table_of(&user_schema());
        let m = fits(plan(&user_schema(), &table, false));
        assert!(matches!(
            m[..],
            [
                ColumnSource::Column(0),
                ColumnSource::Column(1),
                ColumnSource::Column(2)
            ]
        ));
        let fewer = ArrowSchema::new(vec![Field::new("v", DataType::Float64, false)]);
        let m = fits(plan(&fewer, &table, false));
        assert!(matches!(
            m[..],
            [
                ColumnSource::Null,
                ColumnSource::Column(0),
                ColumnSource::Null
            ]
        ));
    }

    #[test]
    fn new_columns_and_wider_types_ask_the_table_to_evolve() {
        let table = table_of(&ArrowSchema::new(vec![
            Field::new("n", DataType::Int32, true),
            Field::new("f", DataType::Float32, true),
        ]));
        let wider = ArrowSchema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("site", DataType::Utf8, true),
        ]);
        let Ok(Plan::Evolve(e)) = plan(&wider, &table, false) else {
            panic!("expected an evolution");
        };
        assert_eq!(
            e.widen,
            [
                ("n".to_string(), DataType::Int64),
                ("f".to_string(), DataType::Float64)
            ]
        );
        assert_eq!(e.add.len(), 1);
        assert_eq!(e.add[0].name(), "site");
        // Text fits a number column only when coercing.
        let text = ArrowSchema::new(vec![Field::new("n", DataType::Utf8, true)]);
        assert!(matches!(
            plan(&text, &table, false),
            Err(ColumnError::Type { .. })
        ));
        assert_eq!(fits(plan(&text, &table, true)).len(), 2);
        // Narrower types fit as they are and are cast up.
        let narrower = ArrowSchema::new(vec![Field::new("n", DataType::Int16, true)]);
        assert_eq!(fits(plan(&narrower, &table, false)).len(), 2);
    }

    #[test]
    fn refuses_what_no_evolution_reconciles() {
        let table = table_of(&user_schema());
        let wrong = ArrowSchema::new(vec![Field::new("v", DataType::Utf8, false)]);
        assert!(matches!(
            plan(&wrong, &table, false),
            Err(ColumnError::Type { .. })
        ));
        // Long to double is no Iceberg promotion.
        let long_table = table_of(&ArrowSchema::new(vec![Field::new(
            "n",
            DataType::Int64,
            true,
        )]));
        let float = ArrowSchema::new(vec![Field::new("n", DataType::Float64, true)]);
        assert!(matches!(
            plan(&float, &long_table, false),
            Err(ColumnError::Type { .. })
        ));
        let reserved = ArrowSchema::new(vec![Field::new("_seq", DataType::Int64, false)]);
        assert!(matches!(
            plan(&reserved, &table, false),
            Err(ColumnError::Reserved(_))
        ));
        let twice = ArrowSchema::new(vec![
            Field::new("v", DataType::Float64, false),
            Field::new("v", DataType::Float64, false),
        ]);
        assert!(matches!(
            plan(&twice, &table, false),
            Err(ColumnError::Twice(_))
        ));
        let tags = ArrowSchema::new(vec![Field::new_list(
            "tags",
            Field::new_list_field(DataType::Utf8, true),
            true,
        )]);
        assert!(matches!(
            plan(&tags, &table, false),
            Err(ColumnError::NotAddable { .. })
        ));
    }

    fn labels_and_tags() -> RecordBatch {
        let mut labels = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        labels.keys().append_value("site");
        labels.values().append_value("berlin");
        labels.append(true).expect("map row");
        labels.append(false).expect("null map row");
        let mut tags = ListBuilder::new(Int64Builder::new());
        tags.values().append_value(7);
        tags.append(true);
        tags.values().append_value(8);
        tags.values().append_value(9);
        tags.append(true);
        let labels: ArrayRef = Arc::new(labels.finish());
        let tags: ArrayRef = Arc::new(tags.finish());
        let point = StructArray::from(vec![(
            Arc::new(Field::new("x", DataType::Float32, true)),
            Arc::new(Float32Array::from(vec![1.5, 2.5])) as ArrayRef,
        )]);
        RecordBatch::try_from_iter(vec![
            ("labels", labels),
            ("tags", tags),
            ("point", Arc::new(point) as ArrayRef),
            ("n", Arc::new(Int32Array::from(vec![1, 2])) as ArrayRef),
        ])
        .expect("batch")
    }

    #[test]
    fn nested_columns_fit_the_table_by_structure_and_take_its_exact_types() {
        let batch = labels_and_tags();
        let schema = batch.schema();
        // The table: Iceberg names list items "element" and map entries "key_value", and
        // its struct has one more (nullable) field than the batch.
        let mut user: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        user[2] = Field::new(
            "point",
            DataType::Struct(Fields::from(vec![
                Field::new("x", DataType::Float64, true),
                Field::new("y", DataType::Float64, true),
            ])),
            true,
        );
        user[3] = Field::new("n", DataType::Int64, true);
        let table = table_of(&ArrowSchema::new(user));
        let m = fits(plan(&schema, &table, false));
        let envelope = sluice_protocol::Envelope {
            agent: "a".into(),
            stream: "s".into(),
            seq: 3,
            created_at_us: 0,
            schema_fingerprint: 0,
            rows: 2,
            checkpoint: None,
        };
        let (reply, _rx) = tokio::sync::oneshot::channel();
        let req = LandRequest {
            envelope,
            batch,
            wire_bytes: 0,
            received_at_us: 5,
            origin: None,
            quarantine: true,
            reply,
        };
        let out = to_table_batch(&req, &m, &table).expect("conforms");
        assert_eq!(out.schema(), table);
        let tags = out.column(1).as_list::<i32>();
        assert_eq!(tags.value_length(1), 2);
        let labels = out.column(0).as_map();
        assert!(labels.is_null(1));
        assert_eq!(labels.keys().as_string::<i32>().value(0), "site");
        let point = out.column(2).as_struct();
        assert_eq!(point.column(1).null_count(), 2, "the missing field is null");
        assert_eq!(
            out.column(3)
                .as_primitive::<arrow_array::types::Int64Type>()
                .values(),
            &[1, 2]
        );
        assert_eq!(
            out.column_by_name(lake::SEQ_COLUMN)
                .expect("seq")
                .as_primitive::<arrow_array::types::Int64Type>()
                .value(1),
            3
        );
    }
}

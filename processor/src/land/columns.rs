//! A batch's columns mapped onto its table's: user columns in table order (missing
//! nullable ones as nulls, types retagged to the table's), then the lake's own columns.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, Schema as ArrowSchema, SchemaRef};

use super::lander::{LandRequest, Origin};
use crate::lake;

/// Why a batch does not fit its table. No retry helps: the batch is what it is.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ColumnError {
    /// The batch has a column the lake adds itself.
    #[error("column {0:?} is reserved for the lake")]
    Reserved(String),
    /// The batch has a column the table lacks.
    #[error("column {0:?} is not in the table (schema evolution is not supported yet)")]
    NotInTable(String),
    /// A column's type differs from the table's.
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

    /// The metric reason of this error (`batches_rejected{reason}`).
    pub fn reason(&self) -> &'static str {
        "schema_mismatch"
    }
}

/// How a batch's columns map onto the table's columns.
#[derive(Debug, Clone)]
pub(super) enum ColumnSource {
    /// Take the batch column at this index, reinterpreted or cast to the table type.
    Column(usize),
    /// The batch lacks this (nullable) column.
    Null,
}

/// How `batch`'s columns map onto `table`'s, or why they cannot.
pub(super) fn map_columns(
    batch: &ArrowSchema,
    table: &SchemaRef,
) -> Result<Vec<ColumnSource>, ColumnError> {
    for f in batch.fields() {
        if lake::LAKE_COLUMNS.contains(&f.name().as_str()) {
            return Err(ColumnError::Reserved(f.name().clone()));
        }
        if table.field_with_name(f.name()).is_err() {
            return Err(ColumnError::NotInTable(f.name().clone()));
        }
    }
    table
        .fields()
        .iter()
        .filter(|f| !lake::LAKE_COLUMNS.contains(&f.name().as_str()))
        .map(|tf| match batch.index_of(tf.name()) {
            Ok(i) => {
                let bt = lake::normalize_type(batch.field(i).data_type());
                if &bt != tf.data_type() {
                    Err(ColumnError::Type {
                        column: tf.name().clone(),
                        batch: batch.field(i).data_type().clone(),
                        table: tf.data_type().clone(),
                    })
                } else {
                    Ok(ColumnSource::Column(i))
                }
            }
            Err(_) if tf.is_nullable() => Ok(ColumnSource::Null),
            Err(_) => Err(ColumnError::Missing(tf.name().clone())),
        })
        .collect()
}

/// Build the table-shaped batch: user columns in table order plus the lake's columns.
pub(super) fn to_table_batch(
    req: &LandRequest,
    mapping: &[ColumnSource],
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = req.batch.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (src, field) in mapping.iter().zip(schema.fields()) {
        columns.push(match src {
            ColumnSource::Column(i) => retag(req.batch.column(*i), field.data_type())?,
            ColumnSource::Null => arrow_array::new_null_array(field.data_type(), n),
        });
    }
    columns.push(Arc::new(StringArray::from_iter_values(
        std::iter::repeat_n(req.envelope.agent.as_str(), n),
    )));
    columns.push(Arc::new(match &req.origin {
        Some(Origin::Rows { offsets, .. }) => {
            Int64Array::from_iter_values(offsets.iter().map(|o| o + 1))
        }
        _ => Int64Array::from_value(req.envelope.seq as i64, n),
    }));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_value(req.received_at_us, n)
            .with_timezone(sluice_protocol::UTC),
    ));
    RecordBatch::try_new(schema.clone(), columns)
}

/// Give an array the exact table type. Timestamps differing only in the zone's spelling
/// (`UTC` vs `+00:00`) or unit are converted; other types already match.
fn retag(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, arrow_schema::ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    arrow_cast::cast(array, target)
}

#[cfg(test)]
mod tests {
    use arrow_schema::{Field, TimeUnit};

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

    #[test]
    fn maps_matching_and_missing_columns() {
        let table = Arc::new(lake::bronze_arrow_schema(&user_schema()));
        let m = map_columns(&user_schema(), &table).expect("same schema maps");
        assert!(matches!(
            m[..],
            [
                ColumnSource::Column(0),
                ColumnSource::Column(1),
                ColumnSource::Column(2)
            ]
        ));
        let fewer = ArrowSchema::new(vec![Field::new("v", DataType::Float64, false)]);
        let m = map_columns(&fewer, &table).expect("missing nullable columns are nulls");
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
    fn refuses_what_does_not_fit() {
        let table = Arc::new(lake::bronze_arrow_schema(&user_schema()));
        let extra = ArrowSchema::new(vec![Field::new("new", DataType::Int64, false)]);
        assert!(
            map_columns(&extra, &table)
                .unwrap_err()
                .to_string()
                .contains("not in the table")
        );
        let wrong = ArrowSchema::new(vec![Field::new("v", DataType::Utf8, false)]);
        assert!(
            map_columns(&wrong, &table)
                .unwrap_err()
                .to_string()
                .contains("has type")
        );
        let reserved = ArrowSchema::new(vec![Field::new("_seq", DataType::Int64, false)]);
        assert!(
            map_columns(&reserved, &table)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
    }
}

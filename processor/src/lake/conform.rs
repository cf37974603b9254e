//! Reshaping arrays and batches to a table's exact Arrow types: a batch as a sender built
//! it (Arrow's names for list items and map entries, narrower types), or a data file
//! written under an earlier schema of the table (columns it lacks, narrower types).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, ListArray, MapArray, RecordBatch, StructArray};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, SchemaRef};
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

/// Give `array` the exact `target` type: nested children matched by name (struct fields)
/// or by position (list items, map keys and values), absent struct fields as nulls,
/// everything else cast by Arrow.
pub fn conform(array: &ArrayRef, target: &DataType) -> Result<ArrayRef, ArrowError> {
    if array.data_type() == target {
        return Ok(array.clone());
    }
    match (array.data_type(), target) {
        (DataType::Dictionary(_, values), _) => conform(&arrow_cast::cast(array, values)?, target),
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let s = array.as_struct();
            let columns = fields
                .iter()
                .map(|tf| match s.column_by_name(tf.name()) {
                    Some(c) => conform(c, tf.data_type()),
                    None => Ok(arrow_array::new_null_array(tf.data_type(), s.len())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(StructArray::try_new(
                fields.clone(),
                columns,
                s.nulls().cloned(),
            )?))
        }
        (DataType::LargeList(f) | DataType::FixedSizeList(f, _), DataType::List(_)) => {
            let list = arrow_cast::cast(array, &DataType::List(f.clone()))?;
            conform(&list, target)
        }
        (DataType::List(_), DataType::List(item)) => {
            let list = array.as_list::<i32>();
            let values = conform(list.values(), item.data_type())?;
            Ok(Arc::new(ListArray::try_new(
                item.clone(),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            )?))
        }
        (DataType::Map(_, _), DataType::Map(entries, sorted)) => {
            let map = array.as_map();
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(ArrowError::CastError(format!(
                    "map entries of {target} are not a struct"
                )));
            };
            let (Some(k), Some(v)) = (kv.first(), kv.get(1)) else {
                return Err(ArrowError::CastError(format!(
                    "map entries of {target} are not a key and a value"
                )));
            };
            let keys = conform(map.keys(), k.data_type())?;
            let values = conform(map.values(), v.data_type())?;
            let entries_array = StructArray::try_new(kv.clone(), vec![keys, values], None)?;
            Ok(Arc::new(MapArray::try_new(
                entries.clone(),
                map.offsets().clone(),
                entries_array,
                map.nulls().cloned(),
                *sorted,
            )?))
        }
        // Not `safe`: a value that does not convert (text that is no number) is an
        // error, never a null.
        _ => arrow_cast::cast_with_options(
            array,
            target,
            &arrow_cast::CastOptions {
                safe: false,
                ..Default::default()
            },
        ),
    }
}

/// `batch` (of any earlier schema of the table) in `schema`: columns matched by field id
/// when both carry ids (else by name), the ones it lacks as nulls, widened ones cast up.
pub fn conform_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch.clone());
    }
    let id = |f: &Field| f.metadata().get(PARQUET_FIELD_ID_META_KEY).cloned();
    let source = batch.schema();
    let by_id = source.fields().iter().any(|f| id(f).is_some());
    let columns = schema
        .fields()
        .iter()
        .map(|f: &FieldRef| {
            let at = match id(f) {
                Some(want) if by_id => source
                    .fields()
                    .iter()
                    .position(|bf| id(bf).as_ref() == Some(&want)),
                _ => source.index_of(f.name()).ok(),
            };
            match at {
                Some(i) => conform(batch.column(i), f.data_type()),
                None => Ok(arrow_array::new_null_array(f.data_type(), batch.num_rows())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

#[cfg(test)]
mod tests {
    use arrow_array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow_schema::Schema as ArrowSchema;

    use super::*;
    use crate::lake::evolve::{Evolution, evolved_schema};

    #[test]
    fn a_file_of_an_earlier_schema_reads_in_the_evolved_one_by_field_id() {
        let user = ArrowSchema::new(vec![Field::new("n", DataType::Int32, true)]);
        let before = crate::testing::bronze_table_schema(&user);
        let iceberg_before = iceberg::arrow::arrow_schema_to_schema(&before).expect("ids");
        let evolution = Evolution {
            add: vec![Field::new("site", DataType::Utf8, true)],
            widen: vec![("n".into(), DataType::Int64)],
        };
        let iceberg_after = evolved_schema(
            &iceberg_before,
            iceberg_before.highest_field_id(),
            &evolution,
        )
        .expect("evolves");
        let after: SchemaRef =
            Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg_after).expect("arrow schema"));
        let batch = RecordBatch::try_new(
            before.clone(),
            vec![
                Arc::new(Int32Array::from(vec![4, 5])),
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 1])),
                Arc::new(TimestampMicrosecondArray::from(vec![0, 0]).with_timezone("+00:00")),
            ],
        )
        .expect("batch");
        let out = conform_batch(&batch, &after).expect("conforms");
        assert_eq!(out.schema(), after);
        let n = out.column_by_name("n").expect("n");
        assert_eq!(
            n.as_primitive::<arrow_array::types::Int64Type>().values(),
            &[4, 5]
        );
        assert_eq!(out.column_by_name("site").expect("site").null_count(), 2);
        assert_eq!(
            out.column_by_name("_agent")
                .expect("_agent")
                .as_string::<i32>()
                .value(1),
            "b"
        );
    }

    #[test]
    fn columns_are_matched_by_field_id_not_by_name() {
        // A column renamed by another writer keeps its id, and its values.
        let with_id = |name: &str, id: &str| {
            Field::new(name, DataType::Int64, true)
                .with_metadata([(PARQUET_FIELD_ID_META_KEY.to_string(), id.to_string())].into())
        };
        let file = Arc::new(ArrowSchema::new(vec![with_id("old", "1")]));
        let batch =
            RecordBatch::try_new(file, vec![Arc::new(Int64Array::from(vec![9]))]).expect("batch");
        let table: SchemaRef = Arc::new(ArrowSchema::new(vec![
            with_id("old", "2"),
            with_id("new", "1"),
        ]));
        let out = conform_batch(&batch, &table).expect("conforms");
        assert!(
            out.column(0).is_null(0),
            "a column of another id is not taken by name"
        );
        assert_eq!(
            out.column(1)
                .as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
            9
        );
    }
}

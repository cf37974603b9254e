//! Plugin batches ↔ Arrow. Into Arrow: typed columns (Arrow layout, bulk copies only) and
//! JSON lines (decoded with `arrow-json` against the declared schema). Out of Arrow (the
//! input of a transform): typed columns, again by bulk copies.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::bindings::sluice::plugin::types::{
    Batch, Column, ColumnType, ColumnValues, TypedColumn, Utf8Values,
};

/// The Arrow schema for a plugin's declared columns, or why the declaration is unusable.
pub fn schema(columns: &[Column]) -> Result<SchemaRef, String> {
    if columns.is_empty() {
        return Err("declared no columns".into());
    }
    let mut seen = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        if c.name.is_empty() || c.name.starts_with('_') {
            return Err(format!(
                "column name {:?} is empty or starts with '_' (reserved for the lake)",
                c.name
            ));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(format!("column {:?} is declared twice", c.name));
        }
        let ty = match c.type_ {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::TimestampMicros => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()))
            }
        };
        fields.push(Field::new(&c.name, ty, c.nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The plugin columns for an Arrow schema (the input of a transform), or the field whose
/// type has no plugin equivalent.
pub fn columns(schema: &Schema) -> Result<Vec<Column>, String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let ty = match f.data_type() {
                DataType::Boolean => ColumnType::Boolean,
                DataType::Int64 => ColumnType::Int64,
                DataType::Float64 => ColumnType::Float64,
                DataType::Utf8 => ColumnType::Utf8,
                DataType::Timestamp(TimeUnit::Microsecond, _) => ColumnType::TimestampMicros,
                other => {
                    return Err(format!(
                        "column {:?} has type {other}, which plugins cannot receive",
                        f.name()
                    ));
                }
            };
            Ok(Column {
                name: f.name().clone(),
                type_: ty,
                nullable: f.is_nullable(),
            })
        })
        .collect()
}

/// A schema written as `name:type,...` (types as in the WIT: boolean, int64, float64, utf8,
/// timestamp-micros), every column nullable; for `plugin check --input`.
pub fn schema_from_spec(spec: &str) -> Result<Schema, String> {
    let mut cols = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, ty) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?} is not name:type"))?;
        let type_ = match ty.trim() {
            "boolean" | "bool" => ColumnType::Boolean,
            "int64" => ColumnType::Int64,
            "float64" => ColumnType::Float64,
            "utf8" | "string" => ColumnType::Utf8,
            "timestamp-micros" | "timestamp" => ColumnType::TimestampMicros,
            other => {
                return Err(format!(
                    "unknown type {other:?} for {name:?} (boolean, int64, float64, utf8, timestamp-micros)"
                ));
            }
        };
        cols.push(Column {
            name: name.trim().to_string(),
            type_,
            nullable: true,
        });
    }
    Ok(schema(&cols)?.as_ref().clone())
}

/// A record batch as typed columns, for a transform's `apply`.
pub fn to_wit(batch: &RecordBatch) -> Result<Batch, String> {
    let mut out = Vec::with_capacity(batch.num_columns());
    for (array, field) in batch.columns().iter().zip(batch.schema().fields()) {
        let values = match array.data_type() {
            DataType::Boolean => {
                ColumnValues::Boolean(array.as_boolean().values().iter().collect())
            }
            DataType::Int64 => {
                ColumnValues::Int64(array.as_primitive::<Int64Type>().values().to_vec())
            }
            DataType::Float64 => {
                ColumnValues::Float64(array.as_primitive::<Float64Type>().values().to_vec())
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => ColumnValues::TimestampMicros(
                array
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec(),
            ),
            DataType::Utf8 => {
                let s = array.as_string::<i32>();
                // A sliced array's offsets start past 0: rebase them onto the copied bytes.
                let offsets = s.value_offsets();
                let first = offsets.first().copied().unwrap_or(0);
                let last = offsets.last().copied().unwrap_or(0);
                Utf8Values {
                    offsets: offsets.iter().map(|o| (o - first) as u32).collect(),
                    data: s.value_data()[first as usize..last as usize].to_vec(),
                }
                .into()
            }
            other => {
                return Err(format!(
                    "column {:?} has type {other}, which plugins cannot receive",
                    field.name()
                ));
            }
        };
        out.push(TypedColumn {
            values,
            validity: array.logical_nulls().map(|n| n.iter().collect()),
        });
    }
    Ok(Batch::Columns(out))
}

impl From<Utf8Values> for ColumnValues {
    fn from(v: Utf8Values) -> Self {
        ColumnValues::Utf8(v)
    }
}

/// Turn a plugin batch into a record batch of `schema`, checking everything.
pub fn to_record_batch(schema: &SchemaRef, batch: Batch) -> Result<RecordBatch, String> {
    match batch {
        Batch::JsonLines(text) => from_json_lines(schema, &text),
        Batch::Columns(columns) => from_columns(schema, columns),
    }
}

fn from_json_lines(schema: &SchemaRef, text: &str) -> Result<RecordBatch, String> {
    let err = |e: arrow_schema::ArrowError| format!("invalid JSON lines: {e}");
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(8192)
        .with_strict_mode(true)
        .build_decoder()
        .map_err(err)?;
    let mut parts = Vec::new();
    let mut rest = text.as_bytes();
    loop {
        let consumed = decoder.decode(rest).map_err(err)?;
        rest = &rest[consumed..];
        // The decoder stops consuming when it holds a full batch.
        if let Some(b) = decoder.flush().map_err(err)? {
            parts.push(b);
        }
        if rest.is_empty() || consumed == 0 {
            break;
        }
    }
    if let Some(b) = decoder.flush().map_err(err)? {
        parts.push(b);
    }
    match parts.len() {
        0 => Ok(RecordBatch::new_empty(schema.clone())),
        1 => Ok(parts.remove(0)),
        _ => arrow_select::concat::concat_batches(schema, &parts).map_err(err),
    }
}

fn from_columns(schema: &SchemaRef, columns: Vec<TypedColumn>) -> Result<RecordBatch, String> {
    if columns.len() != schema.fields().len() {
        return Err(format!(
            "batch has {} columns but the plugin declared {}",
            columns.len(),
            schema.fields().len()
        ));
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len());
    for (col, field) in columns.into_iter().zip(schema.fields()) {
        let len = values_len(&col.values);
        let nulls = match col.validity {
            Some(v) if v.len() != len => {
                return Err(format!(
                    "column {:?}: {} validity entries for {len} values",
                    field.name(),
                    v.len()
                ));
            }
            Some(v) => Some(NullBuffer::from(v)).filter(|n| n.null_count() > 0),
            None => None,
        };
        if nulls.is_some() && !field.is_nullable() {
            return Err(format!(
                "column {:?} is declared non-null but holds nulls",
                field.name()
            ));
        }
        let mismatch = |got: &str| {
            format!(
                "column {:?} is declared {} but the batch holds {got}",
                field.name(),
                field.data_type()
            )
        };
        let array: ArrayRef = match (col.values, field.data_type()) {
            (ColumnValues::Int64(v), DataType::Int64) => {
                Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls))
            }
            (ColumnValues::Float64(v), DataType::Float64) => {
                Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls))
            }
            (ColumnValues::Boolean(v), DataType::Boolean) => {
                Arc::new(BooleanArray::new(BooleanBuffer::from(v), nulls))
            }
            (ColumnValues::TimestampMicros(v), DataType::Timestamp(_, _)) => Arc::new(
                TimestampMicrosecondArray::new(ScalarBuffer::from(v), nulls)
                    .with_timezone(sluice_protocol::UTC),
            ),
            (ColumnValues::Utf8(s), DataType::Utf8) => {
                if s.data.len() > i32::MAX as usize {
                    return Err(format!("column {:?}: string data over 2 GiB", field.name()));
                }
                let offsets: Vec<i32> = s.offsets.iter().map(|o| *o as i32).collect();
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                // try_new checks monotonic offsets within bounds and valid UTF-8.
                let check = |o: &OffsetBuffer<i32>| -> Result<(), String> {
                    if o.first() != Some(&0) || *o.last().unwrap_or(&0) as usize > s.data.len() {
                        return Err(format!("column {:?}: offsets out of range", field.name()));
                    }
                    Ok(())
                };
                check(&offsets)?;
                Arc::new(
                    StringArray::try_new(offsets, Buffer::from_vec(s.data), nulls)
                        .map_err(|e| format!("column {:?}: {e}", field.name()))?,
                )
            }
            (v, _) => return Err(mismatch(kind(&v))),
        };
        arrays.push(array);
    }
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| format!("invalid batch: {e}"))
}

fn values_len(v: &ColumnValues) -> usize {
    match v {
        ColumnValues::Boolean(x) => x.len(),
        ColumnValues::Int64(x) | ColumnValues::TimestampMicros(x) => x.len(),
        ColumnValues::Float64(x) => x.len(),
        ColumnValues::Utf8(s) => s.offsets.len().saturating_sub(1),
    }
}

fn kind(v: &ColumnValues) -> &'static str {
    match v {
        ColumnValues::Boolean(_) => "booleans",
        ColumnValues::Int64(_) => "int64 values",
        ColumnValues::Float64(_) => "float64 values",
        ColumnValues::Utf8(_) => "strings",
        ColumnValues::TimestampMicros(_) => "timestamps",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::bindings::sluice::plugin::types::Utf8Values;

    fn cols() -> Vec<Column> {
        vec![
            Column {
                name: "id".into(),
                type_: ColumnType::Int64,
                nullable: false,
            },
            Column {
                name: "name".into(),
                type_: ColumnType::Utf8,
                nullable: true,
            },
        ]
    }

    #[test]
    fn typed_columns_and_json_lines_agree() {
        let schema = schema(&cols()).expect("schema");
        let typed = to_record_batch(
            &schema,
            Batch::Columns(vec![
                TypedColumn {
                    values: ColumnValues::Int64(vec![1, 2]),
                    validity: None,
                },
                TypedColumn {
                    values: ColumnValues::Utf8(Utf8Values {
                        offsets: vec![0, 3, 3],
                        data: b"abc".to_vec(),
                    }),
                    validity: Some(vec![true, false]),
                },
            ]),
        )
        .expect("typed");
        let json = to_record_batch(
            &schema,
            Batch::JsonLines("{\"id\":1,\"name\":\"abc\"}\n{\"id\":2,\"name\":null}\n".into()),
        )
        .expect("json");
        assert_eq!(typed, json);
    }

    #[test]
    fn bad_batches_say_why() {
        let schema = schema(&cols()).expect("schema");
        let err = to_record_batch(
            &schema,
            Batch::Columns(vec![TypedColumn {
                values: ColumnValues::Float64(vec![1.0]),
                validity: None,
            }]),
        )
        .unwrap_err();
        assert!(err.contains("1 columns but the plugin declared 2"), "{err}");
        let err = to_record_batch(&schema, Batch::JsonLines("{\"id\": oops}".into())).unwrap_err();
        assert!(err.contains("invalid JSON lines"), "{err}");
        let err = to_record_batch(
            &schema,
            Batch::Columns(vec![
                TypedColumn {
                    values: ColumnValues::Int64(vec![1]),
                    validity: None,
                },
                TypedColumn {
                    values: ColumnValues::Utf8(Utf8Values {
                        offsets: vec![0, 9],
                        data: b"abc".to_vec(),
                    }),
                    validity: None,
                },
            ]),
        )
        .unwrap_err();
        assert!(err.contains("offsets out of range"), "{err}");
        let err = to_record_batch(
            &schema,
            Batch::Columns(vec![
                TypedColumn {
                    values: ColumnValues::Int64(vec![1]),
                    validity: Some(vec![false]),
                },
                TypedColumn {
                    values: ColumnValues::Utf8(Utf8Values {
                        offsets: vec![0, 1],
                        data: b"a".to_vec(),
                    }),
                    validity: None,
                },
            ]),
        )
        .unwrap_err();
        assert!(err.contains("non-null"), "{err}");
        assert!(schema_err("_x").contains("reserved"));
    }

    #[test]
    fn arrow_to_typed_columns_and_back_is_lossless_even_for_slices() {
        let cols = vec![
            Column {
                name: "ts".into(),
                type_: ColumnType::TimestampMicros,
                nullable: false,
            },
            Column {
                name: "n".into(),
                type_: ColumnType::Int64,
                nullable: true,
            },
            Column {
                name: "x".into(),
                type_: ColumnType::Float64,
                nullable: true,
            },
            Column {
                name: "s".into(),
                type_: ColumnType::Utf8,
                nullable: true,
            },
            Column {
                name: "b".into(),
                type_: ColumnType::Boolean,
                nullable: true,
            },
        ];
        let schema = schema(&cols).expect("schema");
        let lines: String = (0..50)
            .map(|i| {
                let s = if i % 7 == 0 {
                    "null".to_string()
                } else {
                    format!("\"v{i}é\"")
                };
                let n = if i % 5 == 0 {
                    "null".to_string()
                } else {
                    i.to_string()
                };
                format!(
                    "{{\"ts\":{},\"n\":{n},\"x\":{},\"s\":{s},\"b\":{}}}\n",
                    1_000_000 + i,
                    i as f64 / 3.0,
                    i % 2 == 0
                )
            })
            .collect();
        let batch = to_record_batch(&schema, Batch::JsonLines(lines)).expect("json");
        let names = |c: &[Column]| -> Vec<(String, ColumnType, bool)> {
            c.iter()
                .map(|c| (c.name.clone(), c.type_, c.nullable))
                .collect()
        };
        assert_eq!(names(&columns(&schema).expect("columns")), names(&cols));
        for (offset, len) in [(0, 50), (13, 20), (49, 1), (10, 0)] {
            let slice = batch.slice(offset, len);
            let back = to_record_batch(&schema, to_wit(&slice).expect("to wit")).expect("back");
            assert_eq!(back, slice, "slice {offset}+{len}");
        }
    }

    #[test]
    fn input_spec_parses_and_refuses_unknown_types() {
        let s = schema_from_spec("ts:timestamp, host:utf8,up:boolean").expect("spec");
        assert_eq!(s.fields().len(), 3);
        assert_eq!(s.field(1).data_type(), &DataType::Utf8);
        let err = schema_from_spec("x:decimal").unwrap_err();
        assert!(err.contains("unknown type \"decimal\""), "{err}");
        assert!(schema_from_spec("x").unwrap_err().contains("name:type"));
    }

    fn schema_err(name: &str) -> String {
        schema(&[Column {
            name: name.into(),
            type_: ColumnType::Int64,
            nullable: true,
        }])
        .unwrap_err()
    }
}

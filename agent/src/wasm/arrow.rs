//! Plugin batches ↔ Arrow. Into Arrow: typed columns (Arrow layout, bulk copies only; the
//! children of nested columns follow the declared ones) and JSON lines (decoded with
//! `arrow-json` against the declared schema). Out of Arrow (the input of a transform):
//! typed columns, again by bulk copies. Everything a plugin sends is checked: lengths,
//! offsets, child indexes (each used once, no cycles), UTF-8, decimal precision.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    TimestampMicrosecondType,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int32Array, Int64Array, ListArray, MapArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::bindings::types::{
    Batch, BytesValues, Column, ColumnValues, Decimal128 as WitDecimal, TypedColumn,
};
use super::types;

/// How deep nested columns may go (types nest at most this deep too).
const MAX_DEPTH: usize = 16;

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
        let ty = types::parse(&c.type_).map_err(|e| format!("column {:?}: {e}", c.name))?;
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
            let type_ = types::format(f.data_type()).map_err(|t| {
                format!(
                    "column {:?} has type {t}, which plugins cannot receive",
                    f.name()
                )
            })?;
            Ok(Column {
                name: f.name().clone(),
                type_,
                nullable: f.is_nullable(),
            })
        })
        .collect()
}

/// A schema written as `name:type,...` (types as connectors declare them), every column
/// nullable; for `plugin check --input`.
pub fn schema_from_spec(spec: &str) -> Result<Schema, String> {
    let mut cols = Vec::new();
    for part in top_level_commas(spec)
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, ty) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?} is not name:type"))?;
        cols.push(Column {
            name: name.trim().to_string(),
            type_: ty.trim().to_string(),
            nullable: true,
        });
    }
    Ok(schema(&cols)?.as_ref().clone())
}

/// `text` split at the commas outside `<...>` and `(...)`.
fn top_level_commas(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut parts) = (0i32, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '<' | '(' => depth += 1,
            '>' | ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A record batch as typed columns, for a transform's `apply`.
pub fn to_wit(batch: &RecordBatch) -> Result<Batch, String> {
    let n = batch.num_columns();
    let mut out: Vec<TypedColumn> = (0..n).map(|_| placeholder()).collect();
    for (i, (array, field)) in batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .enumerate()
    {
        let column = typed(array, &mut out).map_err(|t| {
            format!(
                "column {:?} has type {t}, which plugins cannot receive",
                field.name()
            )
        })?;
        out[i] = column;
    }
    Ok(Batch::Columns(out))
}

fn placeholder() -> TypedColumn {
    TypedColumn {
        values: ColumnValues::Boolean(Vec::new()),
        validity: None,
        children: Vec::new(),
    }
}

/// `array` as a typed column; its children are appended to `out`.
fn typed(array: &ArrayRef, out: &mut Vec<TypedColumn>) -> Result<TypedColumn, DataType> {
    let mut children = Vec::new();
    let mut child = |a: &ArrayRef, out: &mut Vec<TypedColumn>| -> Result<(), DataType> {
        let at = out.len();
        out.push(placeholder());
        let column = typed(a, out)?;
        out[at] = column;
        children.push(at as u32);
        Ok(())
    };
    let values = match array.data_type() {
        DataType::Boolean => ColumnValues::Boolean(array.as_boolean().values().iter().collect()),
        DataType::Int32 => ColumnValues::Int32(array.as_primitive::<Int32Type>().values().to_vec()),
        DataType::Int64 => ColumnValues::Int64(array.as_primitive::<Int64Type>().values().to_vec()),
        DataType::Float32 => {
            ColumnValues::Float32(array.as_primitive::<Float32Type>().values().to_vec())
        }
        DataType::Float64 => {
            ColumnValues::Float64(array.as_primitive::<Float64Type>().values().to_vec())
        }
        DataType::Date32 => {
            ColumnValues::Date(array.as_primitive::<Date32Type>().values().to_vec())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => ColumnValues::Timestamp(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec(),
        ),
        DataType::Decimal128(_, _) => ColumnValues::Decimal(
            array
                .as_primitive::<Decimal128Type>()
                .values()
                .iter()
                .map(|v| WitDecimal {
                    low: *v as u64,
                    high: (*v >> 64) as i64,
                })
                .collect(),
        ),
        DataType::Utf8 => {
            let s = array.as_string::<i32>();
            ColumnValues::Utf8(bytes(s.value_offsets(), s.value_data()))
        }
        DataType::Binary => {
            let b = array.as_binary::<i32>();
            ColumnValues::Binary(bytes(b.value_offsets(), b.value_data()))
        }
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            let (offsets, values) = rebased(l.value_offsets(), l.values());
            child(&values, out)?;
            ColumnValues::List(offsets)
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let (offsets, keys) = rebased(m.value_offsets(), m.keys());
            let (_, values) = rebased(m.value_offsets(), m.values());
            child(&keys, out)?;
            child(&values, out)?;
            ColumnValues::Map(offsets)
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            for c in s.columns() {
                child(c, out)?;
            }
            ColumnValues::Struct(s.len() as u32)
        }
        other => return Err(other.clone()),
    };
    Ok(TypedColumn {
        values,
        validity: array.logical_nulls().map(|n| n.iter().collect()),
        children,
    })
}

/// Variable-length values of a (maybe sliced) array, its offsets rebased onto the bytes.
fn bytes(offsets: &[i32], data: &[u8]) -> BytesValues {
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    BytesValues {
        offsets: offsets.iter().map(|o| (o - first) as u32).collect(),
        data: data[first as usize..last as usize].to_vec(),
    }
}

/// A (maybe sliced) list's offsets from 0, and the part of its child they cover.
fn rebased(offsets: &[i32], child: &ArrayRef) -> (Vec<u32>, ArrayRef) {
    let first = offsets.first().copied().unwrap_or(0);
    let last = offsets.last().copied().unwrap_or(0);
    (
        offsets.iter().map(|o| (o - first) as u32).collect(),
        child.slice(first as usize, (last - first) as usize),
    )
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
    let n = schema.fields().len();
    if columns.len() < n {
        return Err(format!(
            "batch has {} columns but the plugin declared {n}",
            columns.len(),
        ));
    }
    let mut columns: Vec<Option<TypedColumn>> = columns.into_iter().map(Some).collect();
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(n);
    for (i, field) in schema.fields().iter().enumerate() {
        arrays.push(
            build(&mut columns, i, field, 0)
                .map_err(|e| format!("column {:?}: {e}", field.name()))?,
        );
    }
    if let Some(i) = columns.iter().position(Option::is_some) {
        return Err(format!(
            "column {i} is neither declared nor any column's child"
        ));
    }
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| format!("invalid batch: {e}"))
}

/// Column `at` of a batch as an array of `field`; its children taken from `columns` too
/// (each once, so indexes cannot loop).
fn build(
    columns: &mut [Option<TypedColumn>],
    at: usize,
    field: &Field,
    depth: usize,
) -> Result<ArrayRef, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH}"));
    }
    let col = columns
        .get_mut(at)
        .ok_or_else(|| format!("child column {at} is out of range"))?
        .take()
        .ok_or_else(|| format!("column {at} is used twice"))?;
    let len = values_len(&col.values);
    let nulls = match col.validity {
        Some(v) if v.len() != len => {
            return Err(format!("{} validity entries for {len} values", v.len()));
        }
        Some(v) => Some(NullBuffer::from(v)).filter(|n| n.null_count() > 0),
        None => None,
    };
    if nulls.is_some() && !field.is_nullable() {
        return Err("declared non-null but holds nulls".into());
    }
    let kids = col.children;
    let child = |columns: &mut [Option<TypedColumn>], k: usize, f: &Field| {
        let at = *kids
            .get(k)
            .ok_or_else(|| format!("has {} child columns, needs more", kids.len()))?;
        build(columns, at as usize, f, depth + 1)
    };
    let expect_children = |want: usize| {
        if kids.len() == want {
            Ok(())
        } else {
            Err(format!("has {} child columns, needs {want}", kids.len()))
        }
    };
    let mismatch = |got: &str| format!("is declared {} but holds {got}", field.data_type());
    let array: ArrayRef = match (col.values, field.data_type()) {
        (ColumnValues::Boolean(v), DataType::Boolean) => {
            Arc::new(BooleanArray::new(BooleanBuffer::from(v), nulls))
        }
        (ColumnValues::Int32(v), DataType::Int32) => {
            Arc::new(Int32Array::new(ScalarBuffer::from(v), nulls))
        }
        (ColumnValues::Int64(v), DataType::Int64) => {
            Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls))
        }
        (ColumnValues::Float32(v), DataType::Float32) => {
            Arc::new(Float32Array::new(ScalarBuffer::from(v), nulls))
        }
        (ColumnValues::Float64(v), DataType::Float64) => {
            Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls))
        }
        (ColumnValues::Date(v), DataType::Date32) => {
            Arc::new(Date32Array::new(ScalarBuffer::from(v), nulls))
        }
        (ColumnValues::Timestamp(v), DataType::Timestamp(_, zone)) => Arc::new(
            TimestampMicrosecondArray::new(ScalarBuffer::from(v), nulls)
                .with_timezone_opt(zone.clone()),
        ),
        (ColumnValues::Decimal(v), DataType::Decimal128(p, s)) => {
            let values: Vec<i128> = v
                .iter()
                .map(|d| (i128::from(d.high) << 64) | i128::from(d.low))
                .collect();
            let array = Decimal128Array::new(ScalarBuffer::from(values), nulls)
                .with_precision_and_scale(*p, *s)
                .map_err(|e| e.to_string())?;
            array
                .validate_decimal_precision(*p)
                .map_err(|e| e.to_string())?;
            Arc::new(array)
        }
        (ColumnValues::Utf8(b), DataType::Utf8) => {
            let offsets = offsets(&b.offsets, b.data.len())?;
            Arc::new(
                StringArray::try_new(offsets, Buffer::from_vec(b.data), nulls)
                    .map_err(|e| e.to_string())?,
            )
        }
        (ColumnValues::Binary(b), DataType::Binary) => {
            let offsets = offsets(&b.offsets, b.data.len())?;
            Arc::new(
                BinaryArray::try_new(offsets, Buffer::from_vec(b.data), nulls)
                    .map_err(|e| e.to_string())?,
            )
        }
        (ColumnValues::List(o), DataType::List(item)) => {
            expect_children(1)?;
            let values = child(columns, 0, item)?;
            let offsets = offsets(&o, values.len())?;
            if offsets.last().copied().unwrap_or(0) as usize != values.len() {
                return Err("list offsets do not end at the child's length".into());
            }
            Arc::new(
                ListArray::try_new(item.clone(), offsets, values, nulls)
                    .map_err(|e| e.to_string())?,
            )
        }
        (ColumnValues::Map(o), DataType::Map(entries, sorted)) => {
            expect_children(2)?;
            let DataType::Struct(kv) = entries.data_type() else {
                return Err("map entries are no struct".into());
            };
            let keys = child(columns, 0, &kv[0])?;
            let values = child(columns, 1, &kv[1])?;
            if keys.len() != values.len() {
                return Err(format!(
                    "map has {} keys for {} values",
                    keys.len(),
                    values.len()
                ));
            }
            let offsets = offsets(&o, keys.len())?;
            if offsets.last().copied().unwrap_or(0) as usize != keys.len() {
                return Err("map offsets do not end at the entries' length".into());
            }
            let entries_array = StructArray::try_new(kv.clone(), vec![keys, values], None)
                .map_err(|e| e.to_string())?;
            Arc::new(
                MapArray::try_new(entries.clone(), offsets, entries_array, nulls, *sorted)
                    .map_err(|e| e.to_string())?,
            )
        }
        (ColumnValues::Struct(rows), DataType::Struct(fields)) => {
            expect_children(fields.len())?;
            let arrays = fields
                .iter()
                .enumerate()
                .map(|(k, f)| child(columns, k, f))
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(a) = arrays.iter().find(|a| a.len() != rows as usize) {
                return Err(format!(
                    "struct of {rows} values has a field of {} values",
                    a.len()
                ));
            }
            Arc::new(
                StructArray::try_new_with_length(fields.clone(), arrays, nulls, rows as usize)
                    .map_err(|e| e.to_string())?,
            )
        }
        (v, _) => return Err(mismatch(kind(&v))),
    };
    Ok(array)
}

/// Offsets as a plugin sent them: from 0, rising, within `len`.
fn offsets(o: &[u32], len: usize) -> Result<OffsetBuffer<i32>, String> {
    if len > i32::MAX as usize {
        return Err("values over 2 GiB".into());
    }
    let fits = o.first() == Some(&0)
        && o.windows(2).all(|w| w[0] <= w[1])
        && o.last().is_some_and(|l| *l as usize <= len);
    if !fits {
        return Err("offsets out of range".into());
    }
    Ok(OffsetBuffer::new(ScalarBuffer::from(
        o.iter().map(|v| *v as i32).collect::<Vec<i32>>(),
    )))
}

fn values_len(v: &ColumnValues) -> usize {
    match v {
        ColumnValues::Boolean(x) => x.len(),
        ColumnValues::Int32(x) | ColumnValues::Date(x) => x.len(),
        ColumnValues::Int64(x) | ColumnValues::Timestamp(x) => x.len(),
        ColumnValues::Float32(x) => x.len(),
        ColumnValues::Float64(x) => x.len(),
        ColumnValues::Decimal(x) => x.len(),
        ColumnValues::Utf8(b) | ColumnValues::Binary(b) => b.offsets.len().saturating_sub(1),
        ColumnValues::List(o) | ColumnValues::Map(o) => o.len().saturating_sub(1),
        ColumnValues::Struct(n) => *n as usize,
    }
}

fn kind(v: &ColumnValues) -> &'static str {
    match v {
        ColumnValues::Boolean(_) => "booleans",
        ColumnValues::Int32(_) => "int32 values",
        ColumnValues::Int64(_) => "int64 values",
        ColumnValues::Float32(_) => "float32 values",
        ColumnValues::Float64(_) => "float64 values",
        ColumnValues::Utf8(_) => "strings",
        ColumnValues::Binary(_) => "binary values",
        ColumnValues::Date(_) => "dates",
        ColumnValues::Timestamp(_) => "timestamps",
        ColumnValues::Decimal(_) => "decimals",
        ColumnValues::List(_) => "lists",
        ColumnValues::Map(_) => "maps",
        ColumnValues::Struct(_) => "structs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, type_: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            type_: type_.into(),
            nullable,
        }
    }

    fn typed_col(
        values: ColumnValues,
        validity: Option<Vec<bool>>,
        children: Vec<u32>,
    ) -> TypedColumn {
        TypedColumn {
            values,
            validity,
            children,
        }
    }

    fn utf8(values: &[&str]) -> ColumnValues {
        let mut offsets = vec![0u32];
        let mut data = Vec::new();
        for v in values {
            data.extend_from_slice(v.as_bytes());
            offsets.push(data.len() as u32);
        }
        ColumnValues::Utf8(BytesValues { offsets, data })
    }

    #[test]
    fn typed_columns_and_json_lines_agree() {
        let schema =
            schema(&[col("id", "int64", false), col("name", "utf8", true)]).expect("schema");
        let typed = to_record_batch(
            &schema,
            Batch::Columns(vec![
                typed_col(ColumnValues::Int64(vec![1, 2]), None, vec![]),
                typed_col(utf8(&["abc", ""]), Some(vec![true, false]), vec![]),
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

    /// One column of every 0.2 type, nested ones included, as JSON lines.
    fn every_type() -> (SchemaRef, String) {
        let schema = schema(&[
            col("b", "boolean", true),
            col("i", "int32", true),
            col("l", "int64", true),
            col("f", "float32", true),
            col("d", "float64", true),
            col("s", "utf8", true),
            col("bin", "binary", true),
            col("day", "date", true),
            col("local", "timestamp", true),
            col("utc", "timestamp-tz", true),
            col("price", "decimal(9,2)", true),
            col("tags", "list<utf8>", true),
            col("labels", "map<utf8,float64>", true),
            col("pos", "struct<x: float64, hops: list<int32>>", true),
        ])
        .expect("schema");
        let lines: String = (0..40)
            .map(|i| {
                if i % 9 == 4 {
                    return "{}\n".to_string();
                }
                format!(
                    concat!(
                        "{{\"b\":{},\"i\":{},\"l\":{},\"f\":{},\"d\":{},\"s\":\"v{}é\",\"bin\":\"0a{:02x}\",",
                        "\"day\":{},\"local\":{},\"utc\":{},\"price\":\"{}.{:02}\",",
                        "\"tags\":[{}],\"labels\":{{\"a\":{},\"b\":null}},\"pos\":{{\"x\":{},\"hops\":[{}]}}}}\n"
                    ),
                    i % 2 == 0,
                    i - 20,
                    i64::MAX - i,
                    i as f32 / 4.0,
                    i as f64 / 3.0,
                    i,
                    i,
                    20_000 + i,
                    1_000_000 + i,
                    2_000_000 + i,
                    i,
                    i,
                    (0..i % 4).map(|k| format!("\"t{k}\"")).collect::<Vec<_>>().join(","),
                    i as f64 * 1.5,
                    i as f64 / 7.0,
                    (0..i % 3).map(|k| k.to_string()).collect::<Vec<_>>().join(","),
                )
            })
            .collect();
        (schema, lines)
    }

    #[test]
    fn every_type_goes_to_typed_columns_and_back_losslessly_even_for_slices() {
        let (schema, lines) = every_type();
        let batch = to_record_batch(&schema, Batch::JsonLines(lines)).expect("json");
        assert_eq!(batch.num_rows(), 40);
        assert!(
            batch.column(0).null_count() > 0,
            "the empty objects are nulls"
        );
        let declared: Vec<String> = columns(&schema)
            .expect("columns")
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(declared[12], "map<utf8,float64>");
        for (offset, len) in [(0, 40), (13, 20), (39, 1), (10, 0)] {
            let slice = batch.slice(offset, len);
            let wit = to_wit(&slice).expect("to wit");
            let back = to_record_batch(&schema, wit).expect("back");
            assert_eq!(back, slice, "slice {offset}+{len}");
        }
    }

    #[test]
    fn bad_batches_say_why() {
        let schema =
            schema(&[col("id", "int64", false), col("name", "utf8", true)]).expect("schema");
        let bad =
            |cols: Vec<TypedColumn>| to_record_batch(&schema, Batch::Columns(cols)).unwrap_err();
        let id = || typed_col(ColumnValues::Int64(vec![1]), None, vec![]);
        let err = bad(vec![typed_col(
            ColumnValues::Float64(vec![1.0]),
            None,
            vec![],
        )]);
        assert!(err.contains("1 columns but the plugin declared 2"), "{err}");
        let err = to_record_batch(&schema, Batch::JsonLines("{\"id\": oops}".into())).unwrap_err();
        assert!(err.contains("invalid JSON lines"), "{err}");
        let err = bad(vec![
            id(),
            typed_col(
                ColumnValues::Utf8(BytesValues {
                    offsets: vec![0, 9],
                    data: b"abc".to_vec(),
                }),
                None,
                vec![],
            ),
        ]);
        assert!(err.contains("offsets out of range"), "{err}");
        let err = bad(vec![
            typed_col(ColumnValues::Int64(vec![1]), Some(vec![false]), vec![]),
            typed_col(utf8(&["a"]), None, vec![]),
        ]);
        assert!(err.contains("non-null"), "{err}");
        let err = bad(vec![id(), typed_col(utf8(&["a"]), None, vec![]), id()]);
        assert!(
            err.contains("neither declared nor any column's child"),
            "{err}"
        );
        assert!(
            schema_err("_x", "int64").contains("reserved"),
            "reserved names"
        );
        assert!(schema_err("x", "list<nope>").contains("unknown type"));
    }

    #[test]
    fn hostile_nesting_is_refused_never_followed() {
        let schema = schema(&[
            col("tags", "list<utf8>", true),
            col("pos", "struct<x: float64>", true),
        ])
        .expect("schema");
        let run = |cols: Vec<TypedColumn>| to_record_batch(&schema, Batch::Columns(cols));
        let x = || typed_col(ColumnValues::Float64(vec![1.0]), None, vec![]);
        let pos = |child: u32| typed_col(ColumnValues::Struct(1), None, vec![child]);
        // A list pointing at itself, at a column out of range, at another's child.
        for (cols, why) in [
            (
                vec![
                    typed_col(ColumnValues::List(vec![0, 0]), None, vec![0]),
                    pos(2),
                    x(),
                ],
                "used twice",
            ),
            (
                vec![
                    typed_col(ColumnValues::List(vec![0, 1]), None, vec![9]),
                    pos(2),
                    x(),
                ],
                "out of range",
            ),
            (
                vec![
                    typed_col(ColumnValues::List(vec![0, 1]), None, vec![2]),
                    pos(2),
                    typed_col(utf8(&["a"]), None, vec![]),
                ],
                "used twice",
            ),
            (
                vec![
                    typed_col(ColumnValues::List(vec![0, 5]), None, vec![2]),
                    pos(3),
                    typed_col(utf8(&["a"]), None, vec![]),
                    x(),
                ],
                "offsets",
            ),
            (
                vec![
                    typed_col(ColumnValues::List(vec![0, 1]), None, vec![]),
                    pos(2),
                    x(),
                ],
                "child columns",
            ),
            (
                vec![
                    typed_col(ColumnValues::List(vec![1, 1]), None, vec![2]),
                    pos(3),
                    typed_col(utf8(&["a"]), None, vec![]),
                    x(),
                ],
                "offsets",
            ),
            (
                vec![
                    typed_col(ColumnValues::List(vec![0, 1]), None, vec![2]),
                    typed_col(ColumnValues::Struct(3), None, vec![3]),
                    typed_col(utf8(&["a"]), None, vec![]),
                    x(),
                ],
                "struct of 3 values",
            ),
        ] {
            let err = run(cols).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
        let ok = run(vec![
            typed_col(ColumnValues::List(vec![0, 1]), None, vec![2]),
            pos(3),
            typed_col(utf8(&["a"]), None, vec![]),
            x(),
        ])
        .expect("well formed");
        assert_eq!(ok.num_rows(), 1);
        // A decimal past its precision.
        let schema = super::schema(&[col("p", "decimal(3,1)", true)]).expect("schema");
        let err = to_record_batch(
            &schema,
            Batch::Columns(vec![typed_col(
                ColumnValues::Decimal(vec![WitDecimal {
                    low: 12_345,
                    high: 0,
                }]),
                None,
                vec![],
            )]),
        )
        .expect_err("too many digits");
        assert!(err.contains("precision"), "{err}");
    }

    #[test]
    fn input_spec_parses_nested_types_and_refuses_unknown_ones() {
        let s = schema_from_spec("ts:timestamp-tz, host:utf8,labels:map<utf8,int32>,up:boolean")
            .expect("spec");
        assert_eq!(s.fields().len(), 4);
        assert!(matches!(s.field(2).data_type(), DataType::Map(..)));
        let err = schema_from_spec("x:decimal").unwrap_err();
        assert!(err.contains("expected \"(\""), "{err}");
        assert!(schema_from_spec("x").unwrap_err().contains("name:type"));
    }

    fn schema_err(name: &str, type_: &str) -> String {
        schema(&[col(name, type_, true)]).unwrap_err()
    }
}

//! Plain JSON topics, written by any producer: one JSON object per message becomes one
//! bronze row. The columns are declared in the config, read from the table, or inferred
//! from the first message that parses. A key no column has yet becomes a column (its type
//! inferred from its first value) when the table's schema evolves, and sends its message to
//! the dead-letter table when it is strict. Messages that do not fit go to the dead-letter
//! table with their raw bytes and the reason.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{
    Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::land::SchemaPolicy;

/// Why a JSON message does not become a row; the message goes to the dead-letter table
/// with this as its reason. No retry helps: the message is what it is.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The message does not parse as JSON.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The message is JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A number with a fraction where the column holds integers.
    #[error("does not fit the columns: {column} is {value}, not an integer")]
    NotInteger {
        /// The column's name.
        column: String,
        /// The value as the message has it.
        value: String,
    },
    /// A value the JSON reader cannot convert to its column's type.
    #[error("does not fit the columns: {0}")]
    DoesNotFit(#[source] ArrowError),
    /// No message has parsed yet, so there are no columns to fit.
    #[error("no columns yet: nothing has parsed")]
    NoColumns,
    /// The JSON reader could not be set up for the columns.
    #[error("{0}")]
    Reader(#[source] ArrowError),
    /// The JSON reader gave back no rows.
    #[error("no rows")]
    NoRows,
    /// The first message's fields cannot be read as columns.
    #[error("cannot infer columns: {0}")]
    Infer(#[source] ArrowError),
    /// The first message has no field a column can hold.
    #[error("cannot infer columns: the message has no scalar field")]
    NoScalarField,
    /// A key no column has, and the table's schema is strict.
    #[error("key {0:?} is not a column, and the table's schema is strict")]
    UnknownKey(String),
}

impl JsonError {
    /// Whether the same message may become a row later: never.
    pub fn retryable(&self) -> bool {
        false
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::NotObject => "not_object",
            Self::NotInteger { .. } | Self::DoesNotFit(_) => "does_not_fit",
            Self::NoColumns | Self::NoRows | Self::Reader(_) => "no_rows",
            Self::Infer(_) | Self::NoScalarField => "no_columns",
            Self::UnknownKey(_) => "strict_schema",
        }
    }
}

/// A declared column type.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JsonType {
    /// UTF-8 text.
    String,
    /// A 64-bit signed integer; a number with a fraction does not fit.
    Long,
    /// A 32-bit signed integer; a number with a fraction does not fit.
    Int,
    /// A 64-bit float.
    Double,
    /// A 32-bit float.
    Float,
    /// `true` or `false`.
    Boolean,
    /// RFC 3339 text (or an integer count of microseconds), stored as UTC microseconds.
    Timestamp,
}

impl JsonType {
    fn arrow(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Long => DataType::Int64,
            Self::Int => DataType::Int32,
            Self::Double => DataType::Float64,
            Self::Float => DataType::Float32,
            Self::Boolean => DataType::Boolean,
            Self::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()))
            }
        }
    }
}

/// The Arrow schema of declared columns (all nullable: a message may omit a field).
pub fn declared_schema(columns: &indexmap::IndexMap<String, JsonType>) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, t)| Field::new(name, t.arrow(), true))
            .collect::<Vec<_>>(),
    ))
}

/// Turns one topic's messages into rows.
pub struct JsonTopic {
    /// The bronze table (stream) the rows land in.
    pub table: String,
    /// The columns, once declared, read from the table, or inferred.
    schema: Option<SchemaRef>,
    /// Their names, and the reserved names messages may not make columns.
    known: HashSet<String>,
    /// Whether a new key becomes a column.
    policy: SchemaPolicy,
}

impl JsonTopic {
    pub(super) fn new(table: String, schema: Option<SchemaRef>, policy: SchemaPolicy) -> Self {
        let mut known: HashSet<String> = crate::lake::LAKE_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .collect();
        if let Some(s) = &schema {
            known.extend(s.fields().iter().map(|f| f.name().clone()));
        }
        Self {
            table,
            schema,
            known,
            policy,
        }
    }

    /// One message, parsed and checked against the columns (inferred from it if it is
    /// the first that parses; its new keys made columns if the table evolves), or why it
    /// does not fit.
    pub fn parse(&mut self, payload: &[u8]) -> Result<serde_json::Value, JsonError> {
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(JsonError::NotJson)?;
        let Some(object) = value.as_object() else {
            return Err(JsonError::NotObject);
        };
        let schema = match &self.schema {
            Some(s) => {
                let new: serde_json::Map<String, serde_json::Value> = object
                    .iter()
                    .filter(|(k, _)| !self.known.contains(*k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if new.is_empty() {
                    s.clone()
                } else {
                    self.add_columns(s.clone(), new)?
                }
            }
            None => {
                let inferred = infer(&value)?;
                tracing::info!(table = %self.table, schema = %describe(&inferred), "columns inferred from the first message");
                self.known
                    .extend(inferred.fields().iter().map(|f| f.name().clone()));
                self.schema = Some(inferred.clone());
                inferred
            }
        };
        // The JSON reader would truncate 2.5 into an integer column: refuse it instead.
        for f in schema.fields() {
            if f.data_type().is_integer()
                && let Some(v) = value.get(f.name())
                && v.is_number()
                && !(v.is_i64() || v.is_u64())
            {
                return Err(JsonError::NotInteger {
                    column: f.name().clone(),
                    value: v.to_string(),
                });
            }
        }
        Ok(value)
    }

    /// The columns with `new` keys of a message added (when the table evolves), or why
    /// the message cannot have them. A key whose value is null or not a scalar waits for a
    /// message that shows its type.
    fn add_columns(
        &mut self,
        schema: SchemaRef,
        new: serde_json::Map<String, serde_json::Value>,
    ) -> Result<SchemaRef, JsonError> {
        if self.policy == SchemaPolicy::Strict {
            let mut keys: Vec<&String> = new.keys().collect();
            keys.sort();
            return Err(JsonError::UnknownKey(keys[0].clone()));
        }
        let (added, left_out) = scalar_fields(&serde_json::Value::Object(new))?;
        for (name, t) in left_out {
            // A null says nothing of the type: the key waits for a value that does.
            if t != DataType::Null {
                tracing::warn!(table = %self.table, field = %name, "key left out of the columns ({t}); only scalar keys become columns");
                self.known.insert(name);
            }
        }
        if added.is_empty() {
            return Ok(schema);
        }
        tracing::info!(table = %self.table, columns = %describe(&Schema::new(added.clone())), "new keys become columns");
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        self.known.extend(added.iter().map(|f| f.name().clone()));
        fields.extend(added);
        let next = Arc::new(Schema::new(fields));
        self.schema = Some(next.clone());
        Ok(next)
    }

    /// Parsed messages as the rows of one batch, or why they do not all fit the columns
    /// (a type the JSON reader cannot convert is only found here).
    pub fn rows(&self, values: &[serde_json::Value]) -> Result<RecordBatch, JsonError> {
        let schema = self.schema.clone().ok_or(JsonError::NoColumns)?;
        let mut decoder = arrow_json::ReaderBuilder::new(schema)
            .with_batch_size(values.len().max(1))
            .build_decoder()
            .map_err(JsonError::Reader)?;
        decoder.serialize(values).map_err(JsonError::DoesNotFit)?;
        decoder
            .flush()
            .map_err(JsonError::DoesNotFit)?
            .ok_or(JsonError::NoRows)
    }

    /// One message as a one-row batch, or why it does not fit.
    #[cfg(test)]
    fn decode(&mut self, payload: &[u8]) -> Result<RecordBatch, JsonError> {
        let value = self.parse(payload)?;
        self.rows(std::slice::from_ref(&value))
    }
}

/// Columns from a first message: its scalar fields (numbers, text, booleans).
fn infer(value: &serde_json::Value) -> Result<SchemaRef, JsonError> {
    let (fields, left_out) = scalar_fields(value)?;
    for (name, t) in left_out {
        tracing::warn!(field = %name, "field left out of the inferred columns ({t} in the first message); declare a schema to keep it");
    }
    if fields.is_empty() {
        return Err(JsonError::NoScalarField);
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Fields of a message left out of the columns, with the type they would have had.
type LeftOut = Vec<(String, DataType)>;

/// The columns a message's scalar fields make (numbers, text, booleans; reserved names
/// left out), and the fields left out for their type (null, lists, objects).
fn scalar_fields(value: &serde_json::Value) -> Result<(Vec<Field>, LeftOut), JsonError> {
    let inferred =
        arrow_json::reader::infer_json_schema_from_iterator(std::iter::once(Ok(value.clone())))
            .map_err(JsonError::Infer)?;
    let (mut fields, mut left_out) = (Vec::new(), Vec::new());
    for f in inferred.fields() {
        if crate::lake::LAKE_COLUMNS.contains(&f.name().as_str()) {
            tracing::warn!(field = %f.name(), "field left out of the columns: the name is reserved for the lake");
            continue;
        }
        match f.data_type() {
            DataType::Int64 | DataType::Float64 | DataType::Utf8 | DataType::Boolean => {
                fields.push(Field::new(f.name(), f.data_type().clone(), true));
            }
            other => left_out.push((f.name().clone(), other.clone())),
        }
    }
    Ok((fields, left_out))
}

fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dead-letter table's columns.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::LargeBinary, true),
        Field::new("value", DataType::LargeBinary, true),
        Field::new("reason", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into())),
            true,
        ),
    ]))
}

/// A message that did not land where it should, as a dead-letter row.
pub struct DeadLetter<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) key: Option<&'a [u8]>,
    pub(super) value: Option<&'a [u8]>,
    pub(super) reason: &'a str,
    /// The message's timestamp, microseconds since the epoch.
    pub(super) timestamp_us: Option<i64>,
}

/// Dead letters as rows of the dead-letter table.
pub fn dead_letter_batch(
    letters: &[DeadLetter<'_>],
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let l = letters.iter();
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(l.clone().map(|l| l.topic))),
            Arc::new(Int32Array::from_iter_values(l.clone().map(|l| l.partition))),
            Arc::new(Int64Array::from_iter_values(l.clone().map(|l| l.offset))),
            Arc::new(LargeBinaryArray::from_iter(l.clone().map(|l| l.key))),
            Arc::new(LargeBinaryArray::from_iter(l.clone().map(|l| l.value))),
            Arc::new(StringArray::from_iter_values(l.clone().map(|l| l.reason))),
            Arc::new(
                TimestampMicrosecondArray::from_iter(l.map(|l| l.timestamp_us))
                    .with_timezone(sluice_protocol::UTC),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};

    use super::*;

    #[test]
    fn declared_columns() {
        let cols: indexmap::IndexMap<String, JsonType> = [
            ("ts".to_string(), JsonType::Timestamp),
            ("level".to_string(), JsonType::String),
            ("ms".to_string(), JsonType::Double),
        ]
        .into_iter()
        .collect();
        let mut t = JsonTopic::new(
            "logs".into(),
            Some(declared_schema(&cols)),
            SchemaPolicy::Evolve,
        );
        let b = t
            .decode(br#"{"ts":"2026-01-01T00:00:01Z","level":"warn","ms":3,"extra":[1]}"#)
            .expect("fits");
        assert_eq!(b.num_rows(), 1);
        assert_eq!(
            b.column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_767_225_601_000_000
        );
        assert_eq!(b.column(2).as_primitive::<Float64Type>().value(0), 3.0);
        // A missing field is a null.
        let b = t.decode(br#"{"level":"info"}"#).expect("fits");
        assert!(b.column(2).is_null(0));
        for (bad, why) in [
            (&b"not json"[..], "not JSON"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"ms":"slow"}"#, "does not fit"),
        ] {
            let err = t.decode(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn inferred_then_new_keys_become_columns() {
        let mut t = JsonTopic::new("events".into(), None, SchemaPolicy::Evolve);
        assert!(t.decode(b"nope").is_err(), "nothing to infer from");
        let b = t
            .decode(br#"{"id":7,"name":"a","score":1.5,"ok":true,"tags":["x"],"gone":null}"#)
            .expect("infers");
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        // In name order: JSON objects carry no order the reader keeps.
        assert_eq!(names, ["id", "name", "ok", "score"]);
        assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 7);
        // A later value of another type does not change a column's type.
        let err = t.decode(br#"{"id":"seven"}"#).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        let err = t.decode(br#"{"id":2.5}"#).unwrap_err().to_string();
        assert!(err.contains("not an integer"), "{err}");
        // A new key becomes a column; earlier rows of a run read it as null.
        let b = t.decode(br#"{"id":8,"new":1}"#).expect("a new key");
        assert_eq!(b.num_columns(), 5);
        assert_eq!(b.schema().field(4).name(), "new");
        let b = t.decode(br#"{"id":9}"#).expect("fits");
        assert!(b.column(4).is_null(0));
        // A null or nested value is no column (yet).
        let b = t
            .decode(br#"{"id":9,"later":null,"deep":{"a":1}}"#)
            .expect("fits");
        assert_eq!(b.num_columns(), 5);
        let b = t.decode(br#"{"later":"now"}"#).expect("fits");
        assert_eq!(b.num_columns(), 6);
    }

    #[test]
    fn a_strict_topic_dead_letters_a_message_with_a_new_key() {
        let mut t = JsonTopic::new("events".into(), None, SchemaPolicy::Strict);
        t.decode(br#"{"id":7}"#)
            .expect("the first message makes the columns");
        let err = t.decode(br#"{"id":8,"site":"x"}"#).unwrap_err();
        assert!(
            matches!(err, JsonError::UnknownKey(ref k) if k == "site"),
            "{err}"
        );
        assert_eq!(err.reason(), "strict_schema");
        assert_eq!(t.decode(br#"{"id":9}"#).expect("fits").num_columns(), 1);
    }

    #[test]
    fn mutated_messages_are_rows_or_reasons_never_a_panic() {
        use sluice_protocol::hostile::fuzz::Mutator;
        let corpus: [&[u8]; 3] = [
            br#"{"ts":"2026-01-01T00:00:00Z","level":"info","ms":1.5,"status":200}"#,
            br#"{"ts":1767225600000000,"level":"warn","ms":null,"status":-1,"extra":[1,{"a":2}]}"#,
            br#"{"level":"\u00e9\ud83d\ude00","ms":1e308,"status":9223372036854775807}"#,
        ];
        let cols: indexmap::IndexMap<String, JsonType> = [
            ("ts".to_string(), JsonType::Timestamp),
            ("level".to_string(), JsonType::String),
            ("ms".to_string(), JsonType::Double),
            ("status".to_string(), JsonType::Long),
        ]
        .into_iter()
        .collect();
        let mut declared = JsonTopic::new(
            "logs".into(),
            Some(declared_schema(&cols)),
            SchemaPolicy::Evolve,
        );
        let mut m = Mutator::new(42);
        let (mut rows, mut refused) = (0, 0);
        for i in 0..20_000 {
            let input = m.mutate(corpus[i % corpus.len()]);
            // Inferred from the first mutated message that parses, as a new topic would.
            let mut inferred = JsonTopic::new("logs".into(), None, SchemaPolicy::Evolve);
            for topic in [&mut declared, &mut inferred] {
                match topic.decode(&input) {
                    Ok(b) => rows += b.num_rows(),
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(rows > 0 && refused > 0, "{rows} rows, {refused} refused");
    }

    #[test]
    fn reserved_keys_in_the_first_message_are_left_out_of_the_columns() {
        let mut t = JsonTopic::new("events".into(), None, SchemaPolicy::Evolve);
        let b = t
            .decode(br#"{"_seq":5,"_agent":"forged","_ingested_at":"x","msg":"hi"}"#)
            .expect("infers");
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["msg"]);
        assert!(crate::lake::uncreatable(&schema).is_none());
    }

    #[test]
    fn a_run_is_one_batch_and_a_bad_row_fails_it() {
        let cols: indexmap::IndexMap<String, JsonType> = [
            ("level".to_string(), JsonType::String),
            ("ms".to_string(), JsonType::Double),
        ]
        .into_iter()
        .collect();
        let mut t = JsonTopic::new(
            "logs".into(),
            Some(declared_schema(&cols)),
            SchemaPolicy::Evolve,
        );
        let good: Vec<serde_json::Value> = (0..5)
            .map(|i| {
                t.parse(format!(r#"{{"level":"l{i}","ms":{i}}}"#).as_bytes())
                    .expect("parses")
            })
            .collect();
        let b = t.rows(&good).expect("fits");
        assert_eq!(b.num_rows(), 5);
        assert_eq!(b.column(0).as_string::<i32>().value(4), "l4");
        assert_eq!(b.column(1).as_primitive::<Float64Type>().value(3), 3.0);
        // Text where a number belongs passes the parse and fails the batch it is in.
        let odd = t.parse(br#"{"ms":"slow"}"#).expect("is a JSON object");
        let mut mixed = good.clone();
        mixed.insert(2, odd.clone());
        let err = t.rows(&mixed).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        assert!(t.rows(std::slice::from_ref(&odd)).is_err());
        assert!(t.rows(&[]).is_err());
    }

    #[test]
    fn dead_letter_rows() {
        let letter = |offset, value: &'static [u8]| DeadLetter {
            topic: "t",
            partition: 2,
            offset,
            key: None,
            value: Some(value),
            reason: "not JSON",
            timestamp_us: Some(5),
        };
        let b = dead_letter_batch(&[letter(41, b"{oops"), letter(44, b"}")]).expect("rows");
        assert_eq!(b.schema(), dead_letter_schema());
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(4).as_binary::<i64>().value(0), b"{oops");
        assert_eq!(b.column(2).as_primitive::<Int64Type>().value(1), 44);
        assert!(b.column(3).is_null(1));
    }
}

//! Components built against `sluice:plugin@0.1.0`: their columns, batches and poll results
//! in the 0.2 shapes the agent works with, and 0.2 batches back for a 0.1 transform (whose
//! input can only hold the five 0.1 types).

use super::bindings::types as v2;
use super::bindings::v1::sluice::plugin::types as v1;

/// A 0.1 column declaration as 0.2 writes it.
pub fn column(c: v1::Column) -> v2::Column {
    v2::Column {
        name: c.name,
        type_: type_name(c.type_).into(),
        nullable: c.nullable,
    }
}

fn type_name(t: v1::ColumnType) -> &'static str {
    match t {
        v1::ColumnType::Boolean => "boolean",
        v1::ColumnType::Int64 => "int64",
        v1::ColumnType::Float64 => "float64",
        v1::ColumnType::Utf8 => "utf8",
        // UTC microseconds: 0.2's `timestamp-tz`.
        v1::ColumnType::TimestampMicros => "timestamp-tz",
    }
}

/// A 0.2 column for a 0.1 transform's input, or why 0.1 has no such type.
pub fn column_back(c: &v2::Column) -> Result<v1::Column, String> {
    let type_ = match c.type_.as_str() {
        "boolean" => v1::ColumnType::Boolean,
        "int64" => v1::ColumnType::Int64,
        "float64" => v1::ColumnType::Float64,
        "utf8" => v1::ColumnType::Utf8,
        "timestamp-tz" => v1::ColumnType::TimestampMicros,
        other => {
            return Err(format!(
                "column {:?} has type {other}, which a sluice:plugin@0.1.0 transform cannot \
                 take (rebuild it against 0.2.0)",
                c.name
            ));
        }
    };
    Ok(v1::Column {
        name: c.name.clone(),
        type_,
        nullable: c.nullable,
    })
}

/// A 0.1 batch as a 0.2 one.
pub fn batch(b: v1::Batch) -> v2::Batch {
    match b {
        v1::Batch::JsonLines(text) => v2::Batch::JsonLines(text),
        v1::Batch::Columns(cols) => v2::Batch::Columns(
            cols.into_iter()
                .map(|c| v2::TypedColumn {
                    values: match c.values {
                        v1::ColumnValues::Boolean(v) => v2::ColumnValues::Boolean(v),
                        v1::ColumnValues::Int64(v) => v2::ColumnValues::Int64(v),
                        v1::ColumnValues::Float64(v) => v2::ColumnValues::Float64(v),
                        v1::ColumnValues::Utf8(u) => v2::ColumnValues::Utf8(v2::BytesValues {
                            offsets: u.offsets,
                            data: u.data,
                        }),
                        v1::ColumnValues::TimestampMicros(v) => v2::ColumnValues::Timestamp(v),
                    },
                    validity: c.validity,
                    children: Vec::new(),
                })
                .collect(),
        ),
    }
}

/// A 0.2 batch of 0.1 types as a 0.1 one.
pub fn batch_back(b: v2::Batch) -> Result<v1::Batch, String> {
    Ok(match b {
        v2::Batch::JsonLines(text) => v1::Batch::JsonLines(text),
        v2::Batch::Columns(cols) => v1::Batch::Columns(
            cols.into_iter()
                .map(|c| {
                    let values = match c.values {
                        v2::ColumnValues::Boolean(v) => v1::ColumnValues::Boolean(v),
                        v2::ColumnValues::Int64(v) => v1::ColumnValues::Int64(v),
                        v2::ColumnValues::Float64(v) => v1::ColumnValues::Float64(v),
                        v2::ColumnValues::Utf8(u) => v1::ColumnValues::Utf8(v1::Utf8Values {
                            offsets: u.offsets,
                            data: u.data,
                        }),
                        v2::ColumnValues::Timestamp(v) => v1::ColumnValues::TimestampMicros(v),
                        _ => {
                            return Err(
                                "a sluice:plugin@0.1.0 transform cannot take this batch's types"
                                    .to_string(),
                            );
                        }
                    };
                    Ok(v1::TypedColumn {
                        values,
                        validity: c.validity,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    })
}

/// A 0.1 poll result as a 0.2 one.
pub fn poll_result(r: v1::PollResult) -> v2::PollResult {
    v2::PollResult {
        batch: r.batch.map(batch),
        checkpoint: r.checkpoint,
        finished: r.finished,
    }
}

/// A 0.1 log level as 0.2's.
pub fn level(l: v1::Level) -> v2::Level {
    match l {
        v1::Level::Trace => v2::Level::Trace,
        v1::Level::Debug => v2::Level::Debug,
        v1::Level::Info => v2::Level::Info,
        v1::Level::Warn => v2::Level::Warn,
        v1::Level::Error => v2::Level::Error,
    }
}

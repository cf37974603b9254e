//! The rows a transform receives: typed columns with their names, and the operations a
//! transform needs (read a column, keep some rows, replace, add or remove a column).

use std::rc::Rc;

use crate::bindings::sluice::plugin::types::{
    Column, ColumnValues, TypedColumn as WitTypedColumn, Utf8Values,
};
use crate::{Batch, TypedColumn};

/// A batch of rows handed to [`crate::Transform::apply`].
pub struct Rows {
    names: Vec<String>,
    columns: Vec<WitTypedColumn>,
    len: usize,
}

impl Rows {
    pub(crate) fn new(schema: Rc<[Column]>, columns: Vec<WitTypedColumn>) -> Result<Self, String> {
        if schema.len() != columns.len() {
            return Err(format!(
                "{} columns received for an input schema of {}",
                columns.len(),
                schema.len()
            ));
        }
        let len = columns.first().map_or(0, |c| values_len(&c.values));
        if columns.iter().any(|c| values_len(&c.values) != len) {
            return Err("columns of different lengths received".into());
        }
        Ok(Rows {
            names: schema.iter().map(|c| c.name.clone()).collect(),
            columns,
            len,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Column names, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn index(&self, name: &str) -> Result<usize, String> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| format!("no column named {name:?}"))
    }

    /// Read a column by name.
    pub fn column(&self, name: &str) -> Result<ColumnRef<'_>, String> {
        let c = &self.columns[self.index(name)?];
        Ok(ColumnRef {
            values: &c.values,
            validity: c.validity.as_deref(),
        })
    }

    /// Keep the rows whose `keep` entry is true.
    pub fn filter(self, keep: &[bool]) -> Result<Rows, String> {
        if keep.len() != self.len {
            return Err(format!(
                "filter has {} entries for {} rows",
                keep.len(),
                self.len
            ));
        }
        let len = keep.iter().filter(|k| **k).count();
        if len == self.len {
            return Ok(self);
        }
        let columns = self
            .columns
            .into_iter()
            .map(|c| WitTypedColumn {
                values: filter_values(c.values, keep, len),
                validity: c.validity.map(|v| pick(v, keep, len)),
            })
            .collect();
        Ok(Rows {
            names: self.names,
            columns,
            len,
        })
    }

    /// Replace the column `name`, or add it at the end when there is none.
    pub fn set(&mut self, name: &str, column: TypedColumn) -> Result<(), String> {
        let n = values_len(&column.0.values);
        if n != self.len {
            return Err(format!(
                "column {name:?} has {n} values for {} rows",
                self.len
            ));
        }
        match self.names.iter().position(|c| c == name) {
            Some(i) => self.columns[i] = column.0,
            None => {
                self.names.push(name.to_string());
                self.columns.push(column.0);
            }
        }
        Ok(())
    }

    /// Remove the column `name`.
    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        let i = self.index(name)?;
        self.names.remove(i);
        self.columns.remove(i);
        Ok(())
    }

    /// The rows as a batch of typed columns, in the current column order (which must be
    /// the output columns `open` declared).
    pub fn into_batch(self) -> Batch {
        Batch::columns(self.columns.into_iter().map(TypedColumn).collect())
    }
}

/// One column of [`Rows`].
#[derive(Clone, Copy)]
pub struct ColumnRef<'a> {
    values: &'a ColumnValues,
    validity: Option<&'a [bool]>,
}

impl<'a> ColumnRef<'a> {
    /// True when row `i` holds null.
    pub fn is_null(&self, i: usize) -> bool {
        self.validity.is_some_and(|v| !v[i])
    }

    /// One entry per row, false for null; none when the column holds no nulls.
    pub fn validity(&self) -> Option<&'a [bool]> {
        self.validity
    }

    pub fn as_int64(&self) -> Option<&'a [i64]> {
        match self.values {
            ColumnValues::Int64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_float64(&self) -> Option<&'a [f64]> {
        match self.values {
            ColumnValues::Float64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_boolean(&self) -> Option<&'a [bool]> {
        match self.values {
            ColumnValues::Boolean(v) => Some(v),
            _ => None,
        }
    }

    /// Microseconds since the Unix epoch, UTC.
    pub fn as_timestamp_micros(&self) -> Option<&'a [i64]> {
        match self.values {
            ColumnValues::TimestampMicros(v) => Some(v),
            _ => None,
        }
    }

    /// The string in row `i`; none when it is null or the column holds no strings.
    pub fn str(&self, i: usize) -> Option<&'a str> {
        match self.values {
            ColumnValues::Utf8(s) if !self.is_null(i) => {
                let (a, b) = (s.offsets[i] as usize, s.offsets[i + 1] as usize);
                std::str::from_utf8(&s.data[a..b]).ok()
            }
            _ => None,
        }
    }

    /// Row `i` as a number (int64, float64 or timestamp), when it is one and not null.
    pub fn number(&self, i: usize) -> Option<f64> {
        if self.is_null(i) {
            return None;
        }
        match self.values {
            ColumnValues::Int64(v) | ColumnValues::TimestampMicros(v) => Some(v[i] as f64),
            ColumnValues::Float64(v) => Some(v[i]),
            _ => None,
        }
    }

    /// Row `i` as a boolean, when it is one and not null.
    pub fn boolean(&self, i: usize) -> Option<bool> {
        match self.values {
            ColumnValues::Boolean(v) if !self.is_null(i) => Some(v[i]),
            _ => None,
        }
    }
}

fn values_len(v: &ColumnValues) -> usize {
    match v {
        ColumnValues::Boolean(x) => x.len(),
        ColumnValues::Int64(x) | ColumnValues::TimestampMicros(x) => x.len(),
        ColumnValues::Float64(x) => x.len(),
        ColumnValues::Utf8(s) => s.offsets.len().saturating_sub(1),
    }
}

fn pick<T: Copy>(v: Vec<T>, keep: &[bool], len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    out.extend(v.iter().zip(keep).filter(|(_, k)| **k).map(|(x, _)| *x));
    out
}

fn filter_values(v: ColumnValues, keep: &[bool], len: usize) -> ColumnValues {
    match v {
        ColumnValues::Boolean(x) => ColumnValues::Boolean(pick(x, keep, len)),
        ColumnValues::Int64(x) => ColumnValues::Int64(pick(x, keep, len)),
        ColumnValues::TimestampMicros(x) => ColumnValues::TimestampMicros(pick(x, keep, len)),
        ColumnValues::Float64(x) => ColumnValues::Float64(pick(x, keep, len)),
        ColumnValues::Utf8(s) => {
            let mut offsets = Vec::with_capacity(len + 1);
            let mut data = Vec::with_capacity(s.data.len());
            offsets.push(0u32);
            for (i, k) in keep.iter().enumerate() {
                if *k {
                    let (a, b) = (s.offsets[i] as usize, s.offsets[i + 1] as usize);
                    data.extend_from_slice(&s.data[a..b]);
                    offsets.push(data.len() as u32);
                }
            }
            ColumnValues::Utf8(Utf8Values { offsets, data })
        }
    }
}

//! The rows a transform receives: typed columns with their names, and the operations a
//! transform needs (read a column, keep some rows, replace, add or remove a column).
//! Nested columns (lists, maps, structs) come with their children and are filtered with
//! them.

use std::rc::Rc;

use crate::bindings::sluice::plugin::types::{
    BytesValues, Column, ColumnValues, TypedColumn as WitTypedColumn,
};
use crate::{Batch, TypedColumn};

/// A batch of rows handed to [`crate::Transform::apply`].
pub struct Rows {
    names: Vec<String>,
    columns: Vec<TypedColumn>,
    len: usize,
}

impl Rows {
    pub(crate) fn new(schema: Rc<[Column]>, columns: Vec<WitTypedColumn>) -> Result<Self, String> {
        if columns.len() < schema.len() {
            return Err(format!(
                "{} columns received for an input schema of {}",
                columns.len(),
                schema.len()
            ));
        }
        let mut flat: Vec<Option<WitTypedColumn>> = columns.into_iter().map(Some).collect();
        let columns = (0..schema.len())
            .map(|i| tree(&mut flat, i, 0))
            .collect::<Result<Vec<_>, String>>()?;
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
        Ok(ColumnRef {
            column: &self.columns[self.index(name)?],
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
        Ok(Rows {
            names: self.names,
            columns: self
                .columns
                .into_iter()
                .map(|c| filter_column(c, keep, len))
                .collect(),
            len,
        })
    }

    /// Replace the column `name`, or add it at the end when there is none.
    pub fn set(&mut self, name: &str, column: TypedColumn) -> Result<(), String> {
        let n = values_len(&column.values);
        if n != self.len {
            return Err(format!(
                "column {name:?} has {n} values for {} rows",
                self.len
            ));
        }
        match self.names.iter().position(|c| c == name) {
            Some(i) => self.columns[i] = column,
            None => {
                self.names.push(name.to_string());
                self.columns.push(column);
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
        Batch::columns(self.columns)
    }
}

/// Column `at` of a received batch with its children, each taken once.
fn tree(
    flat: &mut [Option<WitTypedColumn>],
    at: usize,
    depth: usize,
) -> Result<TypedColumn, String> {
    if depth > 16 {
        return Err("columns nested too deep".into());
    }
    let c = flat
        .get_mut(at)
        .and_then(Option::take)
        .ok_or_else(|| format!("column {at} is missing or used twice"))?;
    let children = c
        .children
        .iter()
        .map(|k| tree(flat, *k as usize, depth + 1))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(TypedColumn {
        values: c.values,
        validity: c.validity,
        children,
    })
}

/// One column of [`Rows`].
#[derive(Clone, Copy)]
pub struct ColumnRef<'a> {
    column: &'a TypedColumn,
}

impl<'a> ColumnRef<'a> {
    /// True when row `i` holds null.
    pub fn is_null(&self, i: usize) -> bool {
        self.column.validity.as_ref().is_some_and(|v| !v[i])
    }

    /// One entry per row, false for null; none when the column holds no nulls.
    pub fn validity(&self) -> Option<&'a [bool]> {
        self.column.validity.as_deref()
    }

    pub fn as_int32(&self) -> Option<&'a [i32]> {
        match &self.column.values {
            ColumnValues::Int32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_int64(&self) -> Option<&'a [i64]> {
        match &self.column.values {
            ColumnValues::Int64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_float32(&self) -> Option<&'a [f32]> {
        match &self.column.values {
            ColumnValues::Float32(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_float64(&self) -> Option<&'a [f64]> {
        match &self.column.values {
            ColumnValues::Float64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_boolean(&self) -> Option<&'a [bool]> {
        match &self.column.values {
            ColumnValues::Boolean(v) => Some(v),
            _ => None,
        }
    }

    /// Days since 1970-01-01.
    pub fn as_date(&self) -> Option<&'a [i32]> {
        match &self.column.values {
            ColumnValues::Date(v) => Some(v),
            _ => None,
        }
    }

    /// Microseconds since the Unix epoch.
    pub fn as_timestamp_micros(&self) -> Option<&'a [i64]> {
        match &self.column.values {
            ColumnValues::Timestamp(v) => Some(v),
            _ => None,
        }
    }

    /// The string in row `i`; none when it is null or the column holds no strings.
    pub fn str(&self, i: usize) -> Option<&'a str> {
        match &self.column.values {
            ColumnValues::Utf8(s) if !self.is_null(i) => std::str::from_utf8(slot(s, i)).ok(),
            _ => None,
        }
    }

    /// The bytes in row `i` of a binary column; none when null.
    pub fn bytes(&self, i: usize) -> Option<&'a [u8]> {
        match &self.column.values {
            ColumnValues::Binary(b) if !self.is_null(i) => Some(slot(b, i)),
            _ => None,
        }
    }

    /// A nested column's children: a list's elements, a map's keys and values, a struct's
    /// fields.
    pub fn children(&self) -> Vec<ColumnRef<'a>> {
        self.column
            .children
            .iter()
            .map(|column| ColumnRef { column })
            .collect()
    }

    /// Row `i` as a number (an integer, float or timestamp), when it is one and not null.
    pub fn number(&self, i: usize) -> Option<f64> {
        if self.is_null(i) {
            return None;
        }
        match &self.column.values {
            ColumnValues::Int64(v) | ColumnValues::Timestamp(v) => Some(v[i] as f64),
            ColumnValues::Int32(v) | ColumnValues::Date(v) => Some(f64::from(v[i])),
            ColumnValues::Float64(v) => Some(v[i]),
            ColumnValues::Float32(v) => Some(f64::from(v[i])),
            _ => None,
        }
    }

    /// Row `i` as a boolean, when it is one and not null.
    pub fn boolean(&self, i: usize) -> Option<bool> {
        match &self.column.values {
            ColumnValues::Boolean(v) if !self.is_null(i) => Some(v[i]),
            _ => None,
        }
    }
}

fn slot(b: &BytesValues, i: usize) -> &[u8] {
    &b.data[b.offsets[i] as usize..b.offsets[i + 1] as usize]
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

fn pick<T: Copy>(v: &[T], keep: &[bool], len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    out.extend(v.iter().zip(keep).filter(|(_, k)| **k).map(|(x, _)| *x));
    out
}

fn pick_bytes(b: &BytesValues, keep: &[bool], len: usize) -> BytesValues {
    let mut offsets = Vec::with_capacity(len + 1);
    let mut data = Vec::with_capacity(b.data.len());
    offsets.push(0u32);
    for (i, k) in keep.iter().enumerate() {
        if *k {
            data.extend_from_slice(slot(b, i));
            offsets.push(data.len() as u32);
        }
    }
    BytesValues { offsets, data }
}

/// The rows of a list or map kept, as new offsets and a mask over its elements.
fn pick_ranges(offsets: &[u32], keep: &[bool]) -> (Vec<u32>, Vec<bool>) {
    let total = offsets.last().copied().unwrap_or(0) as usize;
    let mut elements = vec![false; total];
    let mut out = vec![0u32];
    for (i, k) in keep.iter().enumerate() {
        if *k {
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            elements[a..b].iter_mut().for_each(|e| *e = true);
            out.push(out.last().copied().unwrap_or(0) + (b - a) as u32);
        }
    }
    (out, elements)
}

/// The kept rows of a list or map column: their offsets, and the children cut to their
/// elements.
fn nested_rows(
    offsets: &[u32],
    children: Vec<TypedColumn>,
    keep: &[bool],
) -> (Vec<u32>, Vec<TypedColumn>) {
    let (offsets, elements) = pick_ranges(offsets, keep);
    let n = elements.iter().filter(|e| **e).count();
    let children = children
        .into_iter()
        .map(|child| filter_column(child, &elements, n))
        .collect();
    (offsets, children)
}

fn filter_column(c: TypedColumn, keep: &[bool], len: usize) -> TypedColumn {
    let validity = c.validity.map(|v| pick(&v, keep, len));
    let (values, children) = match c.values {
        ColumnValues::Boolean(x) => (ColumnValues::Boolean(pick(&x, keep, len)), c.children),
        ColumnValues::Int32(x) => (ColumnValues::Int32(pick(&x, keep, len)), c.children),
        ColumnValues::Int64(x) => (ColumnValues::Int64(pick(&x, keep, len)), c.children),
        ColumnValues::Float32(x) => (ColumnValues::Float32(pick(&x, keep, len)), c.children),
        ColumnValues::Float64(x) => (ColumnValues::Float64(pick(&x, keep, len)), c.children),
        ColumnValues::Date(x) => (ColumnValues::Date(pick(&x, keep, len)), c.children),
        ColumnValues::Timestamp(x) => (ColumnValues::Timestamp(pick(&x, keep, len)), c.children),
        ColumnValues::Decimal(x) => (ColumnValues::Decimal(pick(&x, keep, len)), c.children),
        ColumnValues::Utf8(b) => (ColumnValues::Utf8(pick_bytes(&b, keep, len)), c.children),
        ColumnValues::Binary(b) => (ColumnValues::Binary(pick_bytes(&b, keep, len)), c.children),
        ColumnValues::List(o) => {
            let (offsets, children) = nested_rows(&o, c.children, keep);
            (ColumnValues::List(offsets), children)
        }
        ColumnValues::Map(o) => {
            let (offsets, children) = nested_rows(&o, c.children, keep);
            (ColumnValues::Map(offsets), children)
        }
        ColumnValues::Struct(_) => (
            ColumnValues::Struct(len as u32),
            c.children
                .into_iter()
                .map(|child| filter_column(child, keep, len))
                .collect(),
        ),
    };
    TypedColumn {
        values,
        validity,
        children,
    }
}

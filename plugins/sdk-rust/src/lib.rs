//! Write Sluice plugins in Rust: source connectors and transforms.
//!
//! A source implements [`Source`] — `open` returns the schema, `poll` returns a batch — and
//! exports it:
//!
//! ```ignore
//! use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};
//!
//! struct Counter { next: i64 }
//!
//! impl Source for Counter {
//!     fn open(_config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
//!         let next = checkpoint.map(|c| c.parse().map_err(|e| format!("{e}"))).transpose()?;
//!         Ok((Counter { next: next.unwrap_or(0) }, vec![Column::new("n", ColumnType::Int64)]))
//!     }
//!     fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
//!         let values: Vec<i64> = (self.next..self.next + i64::from(max_rows)).collect();
//!         self.next += i64::from(max_rows);
//!         Ok(Poll::batch(Batch::columns(vec![TypedColumn::int64(values)]))
//!             .checkpoint(self.next.to_string()))
//!     }
//! }
//!
//! sluice_plugin::export_source!(Counter);
//! ```
//!
//! A transform implements [`Transform`] — `open` maps the input schema to the output
//! schema, `apply` maps [`Rows`] to a batch — and exports it with [`export_transform!`]:
//!
//! ```ignore
//! use sluice_plugin::{Batch, Column, Rows, Transform};
//!
//! struct DropDebug;
//!
//! impl Transform for DropDebug {
//!     fn open(_config: &str, input: &[Column]) -> Result<(Self, Vec<Column>), String> {
//!         Ok((DropDebug, input.to_vec()))
//!     }
//!     fn apply(&mut self, rows: Rows) -> Result<Batch, String> {
//!         let level = rows.column("level")?;
//!         let keep: Vec<bool> = (0..rows.len()).map(|i| level.str(i) != Some("debug")).collect();
//!         Ok(rows.filter(&keep)?.into_batch())
//!     }
//! }
//!
//! sluice_plugin::export_transform!(DropDebug);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` file is a
//! component the agent runs with `type = "wasm"` under `[sources.NAME]` or
//! `[transforms.NAME]`.

use std::any::Any;
use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.3",
        world: "source",
        pub_export_macro: true,
        export_macro_name: "__export_source_world",
        default_bindings_module: "sluice_plugin::bindings",
    });

    /// The `transform` world, sharing the `types` and `host` interfaces generated above.
    /// (Each world's exports are described only by its export macro, so a component built
    /// with this crate exports just the world it invokes the macro of.)
    pub mod transform {
        wit_bindgen::generate!({
            path: "../../wit/v0.3",
            world: "transform",
            pub_export_macro: true,
            export_macro_name: "__export_transform_world",
            default_bindings_module: "sluice_plugin::bindings::transform",
            with: {
                "sluice:plugin/types@0.3.0": crate::bindings::sluice::plugin::types,
                "sluice:plugin/host@0.3.0": crate::bindings::sluice::plugin::host,
            },
        });
    }
}

pub mod net;
mod rows;
pub use rows::{ColumnRef, Rows};

use bindings::sluice::plugin::types::{
    Batch as WitBatch, BytesValues, ColumnValues, Decimal128, PollResult,
    TypedColumn as WitTypedColumn,
};
pub use bindings::sluice::plugin::types::{Column, Level};

/// A column's type (`sluice:plugin@0.2.0`); the agent maps each to Arrow and Iceberg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    Binary,
    /// Days since 1970-01-01.
    Date,
    /// Microseconds, no time zone.
    Timestamp,
    /// Microseconds since the Unix epoch, UTC.
    TimestampTz,
    /// `TimestampTz` under its 0.1 name.
    TimestampMicros,
    /// Precision (1..=38) and scale (0..=precision).
    Decimal(u8, u8),
    List(Box<ColumnType>),
    /// Keys (a primitive type) to values.
    Map(Box<ColumnType>, Box<ColumnType>),
    /// Named fields, in order.
    Struct(Vec<(String, ColumnType)>),
}

impl ColumnType {
    /// The type as the contract writes it (`list<utf8>`, `decimal(10,2)`).
    pub fn name(&self) -> String {
        match self {
            ColumnType::Boolean => "boolean".into(),
            ColumnType::Int32 => "int32".into(),
            ColumnType::Int64 => "int64".into(),
            ColumnType::Float32 => "float32".into(),
            ColumnType::Float64 => "float64".into(),
            ColumnType::Utf8 => "utf8".into(),
            ColumnType::Binary => "binary".into(),
            ColumnType::Date => "date".into(),
            ColumnType::Timestamp => "timestamp".into(),
            ColumnType::TimestampTz | ColumnType::TimestampMicros => "timestamp-tz".into(),
            ColumnType::Decimal(p, s) => format!("decimal({p},{s})"),
            ColumnType::List(item) => format!("list<{}>", item.name()),
            ColumnType::Map(k, v) => format!("map<{},{}>", k.name(), v.name()),
            ColumnType::Struct(fields) => format!(
                "struct<{}>",
                fields
                    .iter()
                    .map(|(n, t)| format!("{n}: {}", t.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl Column {
    /// A nullable column.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Column {
            name: name.into(),
            type_: ty.name(),
            nullable: true,
        }
    }

    /// A column that never holds nulls.
    pub fn required(name: impl Into<String>, ty: ColumnType) -> Self {
        Column {
            nullable: false,
            ..Self::new(name, ty)
        }
    }
}

/// One column of values, in the declared column's type; nested columns hold their
/// children (a list's elements, a map's keys and values, a struct's fields).
#[derive(Debug, Clone)]
pub struct TypedColumn {
    pub(crate) values: ColumnValues,
    pub(crate) validity: Option<Vec<bool>>,
    pub(crate) children: Vec<TypedColumn>,
}

impl TypedColumn {
    fn of(values: ColumnValues) -> Self {
        TypedColumn {
            values,
            validity: None,
            children: Vec::new(),
        }
    }

    pub fn boolean(values: Vec<bool>) -> Self {
        Self::of(ColumnValues::Boolean(values))
    }

    pub fn int32(values: Vec<i32>) -> Self {
        Self::of(ColumnValues::Int32(values))
    }

    pub fn int64(values: Vec<i64>) -> Self {
        Self::of(ColumnValues::Int64(values))
    }

    pub fn float32(values: Vec<f32>) -> Self {
        Self::of(ColumnValues::Float32(values))
    }

    pub fn float64(values: Vec<f64>) -> Self {
        Self::of(ColumnValues::Float64(values))
    }

    /// Days since 1970-01-01.
    pub fn date(values: Vec<i32>) -> Self {
        Self::of(ColumnValues::Date(values))
    }

    /// Microseconds since the Unix epoch (a `timestamp` or `timestamp-tz` column).
    pub fn timestamp(values: Vec<i64>) -> Self {
        Self::of(ColumnValues::Timestamp(values))
    }

    /// Microseconds since the Unix epoch, UTC (0.1's name).
    pub fn timestamp_micros(values: Vec<i64>) -> Self {
        Self::timestamp(values)
    }

    /// Decimals as unscaled integers (12.34 in a `decimal(P,2)` column is 1234).
    pub fn decimal(values: Vec<i128>) -> Self {
        Self::of(ColumnValues::Decimal(
            values
                .into_iter()
                .map(|v| Decimal128 {
                    low: v as u64,
                    high: (v >> 64) as i64,
                })
                .collect(),
        ))
    }

    /// Byte strings, packed into one buffer plus offsets.
    pub fn binary<I, B>(values: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        Self::of(ColumnValues::Binary(packed(values)))
    }

    /// Strings with nulls (`None`).
    pub fn utf8_opt<'a, I>(values: I) -> Self
    where
        I: IntoIterator<Item = Option<&'a str>>,
    {
        let mut validity = Vec::new();
        let col = Self::utf8(values.into_iter().map(|v| {
            validity.push(v.is_some());
            v.unwrap_or("")
        }));
        if validity.iter().all(|v| *v) {
            col
        } else {
            col.with_validity(validity)
        }
    }

    /// Strings, packed into one buffer plus offsets (no per-string copy on the host side).
    pub fn utf8<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        /// A string seen as its bytes, so packing copies each value once.
        struct AsBytes<S>(S);
        impl<S: AsRef<str>> AsRef<[u8]> for AsBytes<S> {
            fn as_ref(&self) -> &[u8] {
                self.0.as_ref().as_bytes()
            }
        }
        Self::of(ColumnValues::Utf8(packed(values.into_iter().map(AsBytes))))
    }

    /// Lists: row `i` holds `items[lengths[..i].sum()..][..lengths[i]]`.
    pub fn list(lengths: &[u32], items: TypedColumn) -> Self {
        TypedColumn {
            values: ColumnValues::List(offsets(lengths)),
            validity: None,
            children: vec![items],
        }
    }

    /// Maps: row `i` holds the next `lengths[i]` keys and values.
    pub fn map(lengths: &[u32], keys: TypedColumn, values: TypedColumn) -> Self {
        TypedColumn {
            values: ColumnValues::Map(offsets(lengths)),
            validity: None,
            children: vec![keys, values],
        }
    }

    /// Structs of `rows` values: one column per field, in declaration order.
    pub fn structs(rows: u32, fields: Vec<TypedColumn>) -> Self {
        TypedColumn {
            values: ColumnValues::Struct(rows),
            validity: None,
            children: fields,
        }
    }

    /// Mark nulls: one entry per value, `false` for null.
    pub fn with_validity(mut self, validity: Vec<bool>) -> Self {
        self.validity = Some(validity);
        self
    }
}

fn packed<I, B>(values: I) -> BytesValues
where
    I: IntoIterator<Item = B>,
    B: AsRef<[u8]>,
{
    let mut offsets = vec![0u32];
    let mut data = Vec::new();
    for v in values {
        data.extend_from_slice(v.as_ref());
        offsets.push(data.len() as u32);
    }
    BytesValues { offsets, data }
}

fn offsets(lengths: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(lengths.len() + 1);
    let mut at = 0u32;
    out.push(0);
    for l in lengths {
        at += l;
        out.push(at);
    }
    out
}

/// The typed columns of a batch as the contract sends them: the top-level ones first, the
/// children of nested ones after, named by index.
pub(crate) fn flatten(columns: Vec<TypedColumn>) -> Vec<WitTypedColumn> {
    let n = columns.len();
    let mut out: Vec<Option<WitTypedColumn>> = (0..n).map(|_| None).collect();
    for (i, c) in columns.into_iter().enumerate() {
        let placed = place(c, &mut out);
        out[i] = Some(placed);
    }
    out.into_iter().flatten().collect()
}

fn place(c: TypedColumn, out: &mut Vec<Option<WitTypedColumn>>) -> WitTypedColumn {
    let mut children = Vec::with_capacity(c.children.len());
    for child in c.children {
        let at = out.len();
        out.push(None);
        let placed = place(child, out);
        out[at] = Some(placed);
        children.push(at as u32);
    }
    WitTypedColumn {
        values: c.values,
        validity: c.validity,
        children,
    }
}

/// A batch of rows.
pub struct Batch(pub(crate) WitBatch);

impl Batch {
    /// One JSON object per line; the agent decodes them against the declared schema.
    pub fn json_lines(lines: impl Into<String>) -> Self {
        Batch(WitBatch::JsonLines(lines.into()))
    }

    /// Typed columns, one per declared column, in declaration order.
    pub fn columns(columns: Vec<TypedColumn>) -> Self {
        Batch(WitBatch::Columns(flatten(columns)))
    }
}

/// What one `poll` returns.
#[derive(Default)]
pub struct Poll {
    batch: Option<Batch>,
    checkpoint: Option<String>,
    finished: bool,
}

impl Poll {
    /// Rows were read.
    pub fn batch(batch: Batch) -> Self {
        Poll {
            batch: Some(batch),
            ..Default::default()
        }
    }

    /// Nothing new right now; the agent polls again after its poll interval.
    pub fn idle() -> Self {
        Poll::default()
    }

    /// The source is exhausted.
    pub fn finished() -> Self {
        Poll {
            finished: true,
            ..Default::default()
        }
    }

    /// Where to resume after this batch, once it is committed.
    pub fn checkpoint(mut self, checkpoint: impl Into<String>) -> Self {
        self.checkpoint = Some(checkpoint.into());
        self
    }

    /// Also mark the source finished.
    pub fn and_finish(mut self) -> Self {
        self.finished = true;
        self
    }
}

/// A source connector.
pub trait Source: Sized + 'static {
    /// Start from the config (the connector's TOML table as JSON) and the last committed
    /// checkpoint; return the connector and its schema.
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String>;

    /// Return at most `max_rows` rows.
    fn poll(&mut self, max_rows: u32) -> Result<Poll, String>;

    /// The lake holds every batch up to the one that carried `checkpoint`: release what
    /// the upstream keeps for it (a replication slot's flush position, message acks).
    /// Called between polls, newest checkpoint only. The default does nothing.
    fn committed(&mut self, checkpoint: &str) -> Result<(), String> {
        let _ = checkpoint;
        Ok(())
    }
}

/// A transform: maps each batch of its source's rows to a batch (filter, enrich, redact).
pub trait Transform: Sized + 'static {
    /// Start from the config (the transform's TOML table as JSON) and the input columns;
    /// return the transform and its output columns.
    fn open(config: &str, input: &[Column]) -> Result<(Self, Vec<Column>), String>;

    /// Map one batch of input rows to output rows, in the declared output columns.
    fn apply(&mut self, rows: Rows) -> Result<Batch, String>;
}

/// The longest checkpoint the agent keeps (the lake copies a stream's checkpoint into every
/// later snapshot); a poll returning a longer one fails.
pub const MAX_CHECKPOINT_BYTES: usize = 4096;

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (Howard Hinnant's
/// `days_from_civil`): a `date` column's value, and the day part of a timestamp. `month` is
/// 1..=12 and `day` 1..=31 (not checked against the month).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Log through the agent (tagged with the plugin's name there).
pub fn log(level: Level, message: &str) {
    bindings::sluice::plugin::host::log(level, message);
}

thread_local! {
    static STATE: RefCell<Option<Box<dyn Any>>> = RefCell::new(None);
}

#[doc(hidden)]
pub fn __open<T: Source>(
    config: String,
    checkpoint: Option<String>,
) -> Result<Vec<Column>, String> {
    let (source, schema) = T::open(&config, checkpoint)?;
    STATE.with(|s| *s.borrow_mut() = Some(Box::new(source)));
    Ok(schema)
}

#[doc(hidden)]
pub fn __poll<T: Source>(max_rows: u32) -> Result<PollResult, String> {
    // Take the source out for the call, so nothing the call does can find STATE borrowed.
    let mut boxed = STATE
        .with(|s| s.borrow_mut().take())
        .ok_or_else(|| "poll called before open".to_string())?;
    let result = match boxed.downcast_mut::<T>() {
        Some(source) => source.poll(max_rows),
        None => Err("internal error: state of another type".to_string()),
    };
    STATE.with(|s| *s.borrow_mut() = Some(boxed));
    let poll = result?;
    Ok(PollResult {
        batch: poll.batch.map(|b| b.0),
        checkpoint: poll.checkpoint,
        finished: poll.finished,
    })
}

#[doc(hidden)]
pub fn __committed<T: Source>(checkpoint: String) -> Result<(), String> {
    let mut boxed = STATE
        .with(|s| s.borrow_mut().take())
        .ok_or_else(|| "committed called before open".to_string())?;
    let result = match boxed.downcast_mut::<T>() {
        Some(source) => source.committed(&checkpoint),
        None => Err("internal error: state of another type".to_string()),
    };
    STATE.with(|s| *s.borrow_mut() = Some(boxed));
    result
}

struct TransformState<T> {
    transform: T,
    input: std::rc::Rc<[Column]>,
}

#[doc(hidden)]
pub fn __transform_open<T: Transform>(
    config: String,
    input: Vec<Column>,
) -> Result<Vec<Column>, String> {
    let (transform, output) = T::open(&config, &input)?;
    let state = TransformState {
        transform,
        input: input.into(),
    };
    STATE.with(|s| *s.borrow_mut() = Some(Box::new(state)));
    Ok(output)
}

#[doc(hidden)]
pub fn __transform_apply<T: Transform>(input: WitBatch) -> Result<WitBatch, String> {
    let mut boxed = STATE
        .with(|s| s.borrow_mut().take())
        .ok_or_else(|| "apply called before open".to_string())?;
    let result = match boxed.downcast_mut::<TransformState<T>>() {
        Some(state) => match input {
            WitBatch::Columns(columns) => {
                Rows::new(state.input.clone(), columns).and_then(|rows| state.transform.apply(rows))
            }
            WitBatch::JsonLines(_) => Err("the agent sent JSON lines to a transform".into()),
        },
        None => Err("internal error: state of another type".to_string()),
    };
    STATE.with(|s| *s.borrow_mut() = Some(boxed));
    result.map(|b| b.0)
}

/// Export a [`Transform`] implementation as the component's `transform` world.
#[macro_export]
macro_rules! export_transform {
    ($ty:ty) => {
        struct __SluiceTransformExport;

        impl $crate::bindings::transform::exports::sluice::plugin::transformer::Guest
            for __SluiceTransformExport
        {
            fn open(
                config: ::std::string::String,
                input: ::std::vec::Vec<$crate::Column>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::Column>,
                ::std::string::String,
            > {
                $crate::__transform_open::<$ty>(config, input)
            }

            fn apply(
                input: $crate::bindings::sluice::plugin::types::Batch,
            ) -> ::std::result::Result<
                $crate::bindings::sluice::plugin::types::Batch,
                ::std::string::String,
            > {
                $crate::__transform_apply::<$ty>(input)
            }
        }

        $crate::bindings::transform::__export_transform_world!(
            __SluiceTransformExport with_types_in $crate::bindings::transform
        );
    };
}

/// Export a [`Source`] implementation as the component's `source` world.
#[macro_export]
macro_rules! export_source {
    ($ty:ty) => {
        struct __SluiceSourceExport;

        impl $crate::bindings::exports::sluice::plugin::connector::Guest for __SluiceSourceExport {
            fn open(
                config: ::std::string::String,
                checkpoint: ::std::option::Option<::std::string::String>,
            ) -> ::std::result::Result<
                ::std::vec::Vec<$crate::Column>,
                ::std::string::String,
            > {
                $crate::__open::<$ty>(config, checkpoint)
            }

            fn poll(
                max_rows: u32,
            ) -> ::std::result::Result<
                $crate::bindings::sluice::plugin::types::PollResult,
                ::std::string::String,
            > {
                $crate::__poll::<$ty>(max_rows)
            }

            fn committed(
                checkpoint: ::std::string::String,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__committed::<$ty>(checkpoint)
            }
        }

        $crate::bindings::__export_source_world!(__SluiceSourceExport with_types_in $crate::bindings);
    };
}

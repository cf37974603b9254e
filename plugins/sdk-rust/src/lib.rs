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
        path: "../../wit",
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
            path: "../../wit",
            world: "transform",
            pub_export_macro: true,
            export_macro_name: "__export_transform_world",
            default_bindings_module: "sluice_plugin::bindings::transform",
            with: {
                "sluice:plugin/types@0.1.0": crate::bindings::sluice::plugin::types,
                "sluice:plugin/host@0.1.0": crate::bindings::sluice::plugin::host,
            },
        });
    }
}

mod rows;
pub use rows::{ColumnRef, Rows};

use bindings::sluice::plugin::types::{
    Batch as WitBatch, ColumnValues, PollResult, TypedColumn as WitTypedColumn, Utf8Values,
};
pub use bindings::sluice::plugin::types::{Column, ColumnType, Level};

impl Column {
    /// A nullable column.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        Column {
            name: name.into(),
            type_: ty,
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

/// One column of values, in the declared column's type.
pub struct TypedColumn(pub(crate) WitTypedColumn);

impl TypedColumn {
    fn of(values: ColumnValues) -> Self {
        TypedColumn(WitTypedColumn {
            values,
            validity: None,
        })
    }

    pub fn boolean(values: Vec<bool>) -> Self {
        Self::of(ColumnValues::Boolean(values))
    }

    pub fn int64(values: Vec<i64>) -> Self {
        Self::of(ColumnValues::Int64(values))
    }

    pub fn float64(values: Vec<f64>) -> Self {
        Self::of(ColumnValues::Float64(values))
    }

    /// Microseconds since the Unix epoch, UTC.
    pub fn timestamp_micros(values: Vec<i64>) -> Self {
        Self::of(ColumnValues::TimestampMicros(values))
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
        let mut offsets = vec![0u32];
        let mut data = Vec::new();
        for v in values {
            data.extend_from_slice(v.as_ref().as_bytes());
            offsets.push(data.len() as u32);
        }
        Self::of(ColumnValues::Utf8(Utf8Values { offsets, data }))
    }

    /// Mark nulls: one entry per value, `false` for null.
    pub fn with_validity(mut self, validity: Vec<bool>) -> Self {
        self.0.validity = Some(validity);
        self
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
        Batch(WitBatch::Columns(
            columns.into_iter().map(|c| c.0).collect(),
        ))
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
}

/// A transform: maps each batch of its source's rows to a batch (filter, enrich, redact).
pub trait Transform: Sized + 'static {
    /// Start from the config (the transform's TOML table as JSON) and the input columns;
    /// return the transform and its output columns.
    fn open(config: &str, input: &[Column]) -> Result<(Self, Vec<Column>), String>;

    /// Map one batch of input rows to output rows, in the declared output columns.
    fn apply(&mut self, rows: Rows) -> Result<Batch, String>;
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
        }

        $crate::bindings::__export_source_world!(__SluiceSourceExport with_types_in $crate::bindings);
    };
}

//! A transform built against `sluice:plugin@0.1.0` with wit-bindgen alone, as components
//! were before 0.2.0: it passes its rows on with one more utf8 column, `tag`, holding the
//! configured text (and refuses an input that already has one). The agent must keep
//! running it unchanged.
//!
//! ```toml
//! [transforms.tag]
//! type = "wasm"
//! plugin = "plugins/dist/compat_v01_tag.wasm"
//! config = { tag = "site-7" }
//! ```

use std::cell::RefCell;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "transform",
});

use exports::sluice::plugin::transformer::Guest;
use sluice::plugin::types::{Batch, Column, ColumnType, ColumnValues, TypedColumn, Utf8Values};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    tag: String,
}

thread_local! {
    static TAG: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct Tag;

impl Guest for Tag {
    fn open(config: String, input: Vec<Column>) -> Result<Vec<Column>, String> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| format!("bad config: {e}"))?;
        if input.iter().any(|c| c.name == "tag") {
            return Err("the input already has a column \"tag\"".into());
        }
        TAG.with(|t| *t.borrow_mut() = Some(config.tag));
        let mut out = input;
        out.push(Column {
            name: "tag".into(),
            type_: ColumnType::Utf8,
            nullable: false,
        });
        Ok(out)
    }

    fn apply(input: Batch) -> Result<Batch, String> {
        let Batch::Columns(mut columns) = input else {
            return Err("expected typed columns".into());
        };
        let rows = columns.first().map_or(0, |c| match &c.values {
            ColumnValues::Boolean(v) => v.len(),
            ColumnValues::Int64(v) | ColumnValues::TimestampMicros(v) => v.len(),
            ColumnValues::Float64(v) => v.len(),
            ColumnValues::Utf8(v) => v.offsets.len().saturating_sub(1),
        });
        let tag = TAG
            .with(|t| t.borrow().clone())
            .ok_or("apply before open")?;
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut data = Vec::with_capacity(rows * tag.len());
        offsets.push(0u32);
        for _ in 0..rows {
            data.extend_from_slice(tag.as_bytes());
            offsets.push(u32::try_from(data.len()).map_err(|_| "batch too large")?);
        }
        columns.push(TypedColumn {
            values: ColumnValues::Utf8(Utf8Values { offsets, data }),
            validity: None,
        });
        Ok(Batch::Columns(columns))
    }
}

export!(Tag);

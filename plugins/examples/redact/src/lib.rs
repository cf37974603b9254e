//! Edge transform: keep rows by conditions, pseudonymise or mask string columns, drop
//! columns and add constant ones, before anything leaves the host.
//!
//! ```toml
//! [transforms.scrub]
//! type = "wasm"
//! plugin = "plugins/dist/redact.wasm"
//! [transforms.scrub.config]
//! keep = [{ column = "ok", op = "==", value = true }]  # every condition must hold
//! hash = ["device"]        # keyed FNV-1a 64, as 16 hex digits: same input, same output
//! salt = "per-site-secret"
//! mask = ["email"]         # replaced by "[redacted]"
//! drop = ["ok"]            # removed (after `keep` is evaluated)
//! add = { site = "plant-7" }
//! ```
//!
//! A comparison with null is false (as in SQL), so `keep` drops rows whose column is null
//! unless the condition is `is_null`.

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnRef, ColumnType, Rows, Transform, TypedColumn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    keep: Vec<Condition>,
    #[serde(default)]
    hash: Vec<String>,
    #[serde(default)]
    salt: String,
    #[serde(default)]
    mask: Vec<String>,
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Condition {
    column: String,
    op: Op,
    #[serde(default)]
    value: serde_json::Value,
}

#[derive(Deserialize, Clone, Copy)]
enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "is_null")]
    IsNull,
    #[serde(rename = "not_null")]
    NotNull,
}

struct Redact {
    cfg: Config,
}

const MASK: &str = "[redacted]";

impl Transform for Redact {
    fn open(config: &str, input: &[Column]) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let find = |name: &str, what: &str| {
            input
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| format!("{what}: no input column named {name:?}"))
        };
        for c in &cfg.keep {
            let col = find(&c.column, "keep")?;
            let ok = matches!(
                (&c.value, col.type_.as_str(), c.op),
                (_, _, Op::IsNull | Op::NotNull)
                    | (serde_json::Value::Bool(_), "boolean", Op::Eq | Op::Ne)
                    | (serde_json::Value::String(_), "utf8", _)
                    | (
                        serde_json::Value::Number(_),
                        "int32" | "int64" | "float32" | "float64" | "timestamp" | "timestamp-tz",
                        _,
                    )
            );
            if !ok {
                return Err(format!(
                    "keep: cannot compare column {:?} with {}",
                    c.column, c.value
                ));
            }
        }
        for name in cfg.hash.iter().chain(&cfg.mask) {
            if find(name, "hash/mask")?.type_ != ColumnType::Utf8.name() {
                return Err(format!("hash/mask: column {name:?} is not a string column"));
            }
        }
        let mut output: Vec<Column> = input.to_vec();
        for name in &cfg.drop {
            find(name, "drop")?;
            output.retain(|c| &c.name != name);
        }
        for name in cfg.add.keys() {
            if output.iter().any(|c| &c.name == name) {
                return Err(format!("add: column {name:?} exists already"));
            }
            output.push(Column::required(name.clone(), ColumnType::Utf8));
        }
        Ok((Redact { cfg }, output))
    }

    fn apply(&mut self, rows: Rows) -> Result<Batch, String> {
        let mut rows = if self.cfg.keep.is_empty() {
            rows
        } else {
            let mut keep = vec![true; rows.len()];
            for c in &self.cfg.keep {
                let col = rows.column(&c.column)?;
                for (i, k) in keep.iter_mut().enumerate() {
                    *k = *k && holds(c, col, i);
                }
            }
            rows.filter(&keep)?
        };
        for name in &self.cfg.hash {
            let col = rows.column(name)?;
            let hashed: Vec<Option<String>> = (0..rows.len())
                .map(|i| col.str(i).map(|s| hash(&self.cfg.salt, s)))
                .collect();
            rows.set(
                name,
                TypedColumn::utf8_opt(hashed.iter().map(|h| h.as_deref())),
            )?;
        }
        for name in &self.cfg.mask {
            let col = rows.column(name)?;
            let masked: Vec<Option<&str>> =
                (0..rows.len()).map(|i| col.str(i).map(|_| MASK)).collect();
            rows.set(name, TypedColumn::utf8_opt(masked))?;
        }
        for name in &self.cfg.drop {
            rows.remove(name)?;
        }
        for (name, value) in &self.cfg.add {
            rows.set(
                name,
                TypedColumn::utf8(std::iter::repeat_n(value, rows.len())),
            )?;
        }
        Ok(rows.into_batch())
    }
}

/// Does condition `c` hold for row `i` of `col`?
fn holds(c: &Condition, col: ColumnRef<'_>, i: usize) -> bool {
    use std::cmp::Ordering;
    let ord = match c.op {
        Op::IsNull => return col.is_null(i),
        Op::NotNull => return !col.is_null(i),
        _ => match &c.value {
            serde_json::Value::Bool(b) => col.boolean(i).map(|v| v.cmp(b)),
            serde_json::Value::String(s) => col.str(i).map(|v| v.cmp(s.as_str())),
            serde_json::Value::Number(n) => col
                .number(i)
                .zip(n.as_f64())
                .and_then(|(v, n)| v.partial_cmp(&n)),
            _ => None,
        },
    };
    let Some(ord) = ord else { return false };
    match c.op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::IsNull | Op::NotNull => false, // answered above
    }
}

/// FNV-1a 64 over the salt then the value, as 16 hex digits.
fn hash(salt: &str, value: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in salt.bytes().chain(value.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

sluice_plugin::export_transform!(Redact);

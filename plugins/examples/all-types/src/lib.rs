//! One column of every `sluice:plugin@0.2.0` type, nested ones included, as typed columns
//! (`mode = "columns"`) or JSON lines (`mode = "json"`). Row `i` is a function of `i` (the
//! type tests compute the same values to check what lands); the checkpoint is the next `i`.

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Rows in all.
    total: u64,
    #[serde(default)]
    mode: Option<String>,
    /// Declare `small` as int64 and `ratio` as float64 (a connector upgraded to wider
    /// types; the table widens its columns).
    #[serde(default)]
    wide: bool,
}

struct AllTypes {
    next: u64,
    total: u64,
    json: bool,
    wide: bool,
}

/// 2026-01-01T00:00:00Z in microseconds, and in days.
const START_US: i64 = 1_767_225_600_000_000;
const START_DAY: i32 = 20_454;

fn schema(wide: bool) -> Vec<Column> {
    use ColumnType::*;
    vec![
        Column::required("i", Int64),
        Column::required("small", if wide { Int64 } else { Int32 }),
        Column::new("ratio", if wide { Float64 } else { Float32 }),
        Column::required("day", Date),
        Column::required("price", Decimal(9, 2)),
        Column::required("blob", Binary),
        Column::required("local", Timestamp),
        Column::required("utc", TimestampTz),
        Column::required("tags", List(Box::new(Utf8))),
        Column::required("labels", Map(Box::new(Utf8), Box::new(Int32))),
        Column::required(
            "point",
            Struct(vec![("x".into(), Float64), ("y".into(), Int64)]),
        ),
    ]
}

impl Source for AllTypes {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let json = match cfg.mode.as_deref() {
            None | Some("columns") => false,
            Some("json") => true,
            Some(other) => {
                return Err(format!(
                    "mode must be \"columns\" or \"json\", not {other:?}"
                ));
            }
        };
        let next = match checkpoint {
            Some(c) => c
                .parse()
                .map_err(|e| format!("bad checkpoint {c:?}: {e}"))?,
            None => 0,
        };
        Ok((
            AllTypes {
                next,
                total: cfg.total,
                json,
                wide: cfg.wide,
            },
            schema(cfg.wide),
        ))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        let end = (self.next + u64::from(max_rows)).min(self.total);
        if self.next >= end {
            return Ok(Poll::finished());
        }
        let rows: Vec<i64> = (self.next as i64..end as i64).collect();
        self.next = end;
        let batch = if self.json {
            json(&rows)
        } else {
            columns(&rows, self.wide)
        };
        let poll = Poll::batch(batch).checkpoint(self.next.to_string());
        Ok(if self.next >= self.total {
            poll.and_finish()
        } else {
            poll
        })
    }
}

/// The tags of row `i`: `t0`, `t1`, ... (`i % 3` of them).
fn tags(i: i64) -> Vec<String> {
    (0..i % 3).map(|k| format!("t{k}")).collect()
}

/// The labels of row `i`: `a` → i and `b` → 2i for even rows, none for odd ones.
fn labels(i: i64) -> Vec<(&'static str, i32)> {
    if i % 2 == 0 {
        vec![("a", i as i32), ("b", 2 * i as i32)]
    } else {
        Vec::new()
    }
}

fn columns(rows: &[i64], wide: bool) -> Batch {
    let n = rows.len();
    let tag_lists: Vec<Vec<String>> = rows.iter().map(|i| tags(*i)).collect();
    let label_maps: Vec<Vec<(&str, i32)>> = rows.iter().map(|i| labels(*i)).collect();
    let small = rows.iter().map(|i| *i * 7 - 100);
    let ratio = rows.iter().map(|i| *i as f64 / 4.0);
    let valid: Vec<bool> = rows.iter().map(|i| i % 5 != 0).collect();
    Batch::columns(vec![
        TypedColumn::int64(rows.to_vec()),
        if wide {
            TypedColumn::int64(small.collect())
        } else {
            TypedColumn::int32(small.map(|v| v as i32).collect())
        },
        if wide {
            TypedColumn::float64(ratio.collect())
        } else {
            TypedColumn::float32(ratio.map(|v| v as f32).collect())
        }
        .with_validity(valid),
        TypedColumn::date(rows.iter().map(|i| START_DAY + *i as i32).collect()),
        TypedColumn::decimal(rows.iter().map(|i| i128::from(*i) * 100 + 5).collect()),
        TypedColumn::binary(
            rows.iter()
                .map(|i| [(*i % 256) as u8, (*i * 3 % 256) as u8]),
        ),
        TypedColumn::timestamp(rows.iter().map(|i| START_US + i * 1_000_000).collect()),
        TypedColumn::timestamp(
            rows.iter()
                .map(|i| START_US + i * 1_000_000 + 500_000)
                .collect(),
        ),
        TypedColumn::list(
            &tag_lists.iter().map(|t| t.len() as u32).collect::<Vec<_>>(),
            TypedColumn::utf8(tag_lists.iter().flatten()),
        ),
        TypedColumn::map(
            &label_maps
                .iter()
                .map(|m| m.len() as u32)
                .collect::<Vec<_>>(),
            TypedColumn::utf8(label_maps.iter().flatten().map(|(k, _)| *k)),
            TypedColumn::int32(label_maps.iter().flatten().map(|(_, v)| *v).collect()),
        ),
        TypedColumn::structs(
            n as u32,
            vec![
                TypedColumn::float64(rows.iter().map(|i| *i as f64 / 2.0).collect()),
                TypedColumn::int64(rows.iter().map(|i| -i).collect()),
            ],
        ),
    ])
}

fn json(rows: &[i64]) -> Batch {
    let mut out = String::new();
    for &i in rows {
        let ratio = if i % 5 == 0 {
            serde_json::Value::Null
        } else {
            serde_json::json!(i as f32 / 4.0)
        };
        let line = serde_json::json!({
            "i": i,
            "small": i * 7 - 100,
            "ratio": ratio,
            "day": START_DAY + i as i32,
            "price": format!("{}.05", i),
            "blob": format!("{:02x}{:02x}", i % 256, i * 3 % 256),
            "local": START_US + i * 1_000_000,
            "utc": START_US + i * 1_000_000 + 500_000,
            "tags": tags(i),
            "labels": labels(i)
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
            "point": {"x": i as f64 / 2.0, "y": -i},
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Batch::json_lines(out)
}

sluice_plugin::export_source!(AllTypes);

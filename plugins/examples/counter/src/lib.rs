//! Synthetic device telemetry, as typed columns (`mode = "columns"`, the fast path) or as
//! JSON lines (`mode = "json"`, the easy path). Deterministic: row `i` is a function of `i`,
//! and the checkpoint is the next row index, so a restart resumes exactly.

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Stop after this many rows (absent: never).
    total: Option<u64>,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default = "default_devices")]
    devices: u64,
}

fn default_mode() -> String {
    "columns".into()
}
fn default_devices() -> u64 {
    100
}

struct Counter {
    next: u64,
    total: Option<u64>,
    json: bool,
    devices: u64,
    names: Vec<String>,
}

const START_US: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

impl Source for Counter {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let json = match cfg.mode.as_str() {
            "columns" => false,
            "json" => true,
            other => {
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
        let devices = cfg.devices.max(1);
        let schema = vec![
            Column::required("ts", ColumnType::TimestampMicros),
            Column::required("seq", ColumnType::Int64),
            Column::required("device", ColumnType::Utf8),
            Column::new("temp", ColumnType::Float64),
            Column::required("ok", ColumnType::Boolean),
        ];
        let names = (0..devices).map(|d| format!("dev-{d:04}")).collect();
        Ok((
            Counter {
                next,
                total: cfg.total,
                json,
                devices,
                names,
            },
            schema,
        ))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        let end = match self.total {
            Some(t) => t.min(self.next + u64::from(max_rows)),
            None => self.next + u64::from(max_rows),
        };
        if self.next >= end {
            return Ok(Poll::finished());
        }
        let range = self.next..end;
        let batch = if self.json {
            let mut out = String::with_capacity((end - self.next) as usize * 96);
            for i in range {
                let (ts, device, temp, ok) = self.row(i);
                let temp = temp.map_or("null".to_string(), |t| t.to_string());
                out.push_str(&format!(
                    "{{\"ts\":{ts},\"seq\":{i},\"device\":\"{device}\",\"temp\":{temp},\"ok\":{ok}}}\n"
                ));
            }
            Batch::json_lines(out)
        } else {
            let n = (end - self.next) as usize;
            let (mut ts, mut seq, mut temp, mut valid, mut ok) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for i in range.clone() {
                let (t, _, v, o) = self.row(i);
                ts.push(t);
                seq.push(i as i64);
                temp.push(v.unwrap_or(0.0));
                valid.push(v.is_some());
                ok.push(o);
            }
            let names = range.map(|i| self.names[(i % self.devices) as usize].as_str());
            Batch::columns(vec![
                TypedColumn::timestamp_micros(ts),
                TypedColumn::int64(seq),
                TypedColumn::utf8(names),
                TypedColumn::float64(temp).with_validity(valid),
                TypedColumn::boolean(ok),
            ])
        };
        self.next = end;
        let poll = Poll::batch(batch).checkpoint(self.next.to_string());
        Ok(if self.total == Some(self.next) {
            poll.and_finish()
        } else {
            poll
        })
    }
}

impl Counter {
    /// Row `i`: event time 1 ms apart, a device, a temperature (null every 97th row), a flag.
    fn row(&self, i: u64) -> (i64, &str, Option<f64>, bool) {
        let ts = START_US + i as i64 * 1000;
        let device = &self.names[(i % self.devices) as usize];
        let temp = (!i.is_multiple_of(97)).then(|| 20.0 + ((i * 7919) % 1000) as f64 / 100.0);
        (ts, device, temp, !i.is_multiple_of(10))
    }
}

sluice_plugin::export_source!(Counter);

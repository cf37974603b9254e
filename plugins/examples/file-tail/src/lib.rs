//! Tails one log file. Each complete line becomes a row: its byte offset, and, when the line
//! reads `<RFC 3339 time> <LEVEL> <message>`, the parsed time and level (otherwise those are
//! null and the whole line is the message). The checkpoint is the byte offset after the last
//! line returned, so a restarted agent resumes exactly after what the lake holds.
//!
//! Needs the file's directory granted: `allow_dirs = ["/var/log/app"]`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};

use serde::Deserialize;
use sluice_plugin::{Batch, Column, ColumnType, Level, Poll, Source, TypedColumn, log};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    path: String,
}

struct Tail {
    path: String,
    offset: u64,
    warned_missing: bool,
}

impl Source for Tail {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let offset = match checkpoint {
            Some(c) => c
                .parse()
                .map_err(|e| format!("bad checkpoint {c:?}: {e}"))?,
            None => 0,
        };
        log(
            Level::Info,
            &format!("tailing {} from byte {offset}", cfg.path),
        );
        let schema = vec![
            Column::required("offset", ColumnType::Int64),
            Column::new("ts", ColumnType::TimestampMicros),
            Column::new("level", ColumnType::Utf8),
            Column::required("message", ColumnType::Utf8),
        ];
        Ok((
            Tail {
                path: cfg.path,
                offset,
                warned_missing: false,
            },
            schema,
        ))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.warned_missing {
                    log(
                        Level::Warn,
                        &format!("{} does not exist yet; waiting", self.path),
                    );
                    self.warned_missing = true;
                }
                return Ok(Poll::idle());
            }
            Err(e) => return Err(format!("cannot open {}: {e}", self.path)),
        };
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|e| format!("cannot seek in {}: {e}", self.path))?;
        if len < self.offset {
            return Err(format!(
                "{} shrank to {len} bytes, below the checkpoint at {} (truncated or rotated)",
                self.path, self.offset
            ));
        }
        file.seek(SeekFrom::Start(self.offset))
            .map_err(|e| format!("cannot seek in {}: {e}", self.path))?;
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let (mut offsets, mut ts, mut ts_valid, mut levels, mut level_valid, mut messages) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut line = String::new();
        let mut pos = self.offset;
        while offsets.len() < max_rows as usize {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| format!("cannot read {}: {e}", self.path))?;
            // A line without its newline is still being written: leave it for later.
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            let text = line.trim_end_matches(['\n', '\r']);
            offsets.push(pos as i64);
            match parse(text) {
                Some((t, level, msg)) => {
                    ts.push(t);
                    ts_valid.push(true);
                    levels.push(level.to_string());
                    level_valid.push(true);
                    messages.push(msg.to_string());
                }
                None => {
                    ts.push(0);
                    ts_valid.push(false);
                    levels.push(String::new());
                    level_valid.push(false);
                    messages.push(text.to_string());
                }
            }
            pos += n as u64;
        }
        if offsets.is_empty() {
            return Ok(Poll::idle());
        }
        self.offset = pos;
        Ok(Poll::batch(Batch::columns(vec![
            TypedColumn::int64(offsets),
            TypedColumn::timestamp_micros(ts).with_validity(ts_valid),
            TypedColumn::utf8(levels).with_validity(level_valid),
            TypedColumn::utf8(messages),
        ]))
        .checkpoint(pos.to_string()))
    }
}

/// `2026-01-01T00:00:00[.ffffff]Z LEVEL message` → (micros since epoch, level, message).
fn parse(line: &str) -> Option<(i64, &str, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let (level, message) = rest.split_once(' ').unwrap_or((rest, ""));
    if level.is_empty() || !level.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Some((rfc3339_utc_micros(time)?, level, message))
}

fn rfc3339_utc_micros(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(6).collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i64>().ok()? * 10i64.pow(6 - digits.len() as u32)
    };
    let days = sluice_plugin::days_from_civil(y, m as u32, day as u32);
    Some(((days * 86_400 + hh * 3_600 + mm * 60 + ss) * 1_000_000) + micros)
}

sluice_plugin::export_source!(Tail);

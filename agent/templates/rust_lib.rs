//! {{name}}: a Sluice source connector. Edit `open` (the schema) and `poll` (the rows).

use sluice_plugin::{Batch, Column, ColumnType, Level, Poll, Source, TypedColumn, log};

struct Connector {
    next: i64,
    total: Option<i64>,
}

impl Source for Connector {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        // `config` is the `[sources.NAME.config]` table as JSON, e.g. {"total": 1000}.
        let total = config
            .split("\"total\"")
            .nth(1)
            .and_then(|rest| rest.trim_start_matches([' ', ':']).split([',', '}']).next())
            .and_then(|n| n.trim().parse().ok());
        let next = match checkpoint {
            Some(c) => c.parse().map_err(|e| format!("bad checkpoint {c:?}: {e}"))?,
            None => 0,
        };
        log(Level::Info, &format!("{{name}} starting at row {next}"));
        let schema = vec![
            Column::required("n", ColumnType::Int64),
            Column::required("message", ColumnType::Utf8),
        ];
        Ok((Connector { next, total }, schema))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        let mut end = self.next + i64::from(max_rows);
        if let Some(total) = self.total {
            end = end.min(total);
        }
        if self.next >= end {
            return Ok(Poll::finished());
        }
        let n: Vec<i64> = (self.next..end).collect();
        let messages: Vec<String> = n.iter().map(|i| format!("hello #{i}")).collect();
        self.next = end;
        let poll = Poll::batch(Batch::columns(vec![
            TypedColumn::int64(n),
            TypedColumn::utf8(messages),
        ]))
        .checkpoint(end.to_string());
        Ok(if self.total == Some(end) { poll.and_finish() } else { poll })
    }
}

sluice_plugin::export_source!(Connector);

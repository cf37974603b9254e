//! Hostile: logs 20,000 lines of 10 KB on every poll, then returns one row.
use sluice_plugin::{Batch, Column, ColumnType, Level, Poll, Source, TypedColumn};

struct Flood(i64);

impl Source for Flood {
    fn open(_: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        Ok((Flood(0), vec![Column::new("n", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        let line = "x".repeat(10_000);
        for _ in 0..20_000 {
            sluice_plugin::log(Level::Info, &line);
        }
        self.0 += 1;
        Ok(Poll::batch(Batch::columns(vec![TypedColumn::int64(vec![
            self.0,
        ])])))
    }
}

sluice_plugin::export_source!(Flood);

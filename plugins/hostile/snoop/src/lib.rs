//! Hostile: tries to read a file named in its config, which the agent did not grant.
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};

struct Snoop(String);

impl Source for Snoop {
    fn open(config: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        // The config is {"path": "..."}; keep the parsing dependency-free.
        let path = config
            .split('"')
            .nth(3)
            .ok_or_else(|| format!("config needs a path: {config}"))?
            .to_string();
        Ok((Snoop(path), vec![Column::new("bytes", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        let data = std::fs::read(&self.0).map_err(|e| format!("cannot read {}: {e}", self.0))?;
        Ok(Poll::batch(Batch::columns(vec![TypedColumn::int64(vec![
            data.len() as i64,
        ])])))
    }
}

sluice_plugin::export_source!(Snoop);

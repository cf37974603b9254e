//! Hostile: JSON lines that are not JSON.
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source};

struct BadJson;

impl Source for BadJson {
    fn open(_: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        Ok((BadJson, vec![Column::new("id", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        Ok(Poll::batch(Batch::json_lines(
            "{\"id\": 1}\n{\"id\": oops\n",
        )))
    }
}

sluice_plugin::export_source!(BadJson);

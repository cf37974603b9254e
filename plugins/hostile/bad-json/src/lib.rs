//! Hostile: JSON lines that are not JSON, with a checkpoint past them. The agent refuses
//! the batch, so a restart must not resume from that checkpoint: `open` fails differently
//! if it does.
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source};

struct BadJson;

impl Source for BadJson {
    fn open(_: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        if let Some(c) = checkpoint {
            return Err(format!(
                "resumed from {c:?}, past a batch the agent refused"
            ));
        }
        Ok((BadJson, vec![Column::new("id", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        Ok(
            Poll::batch(Batch::json_lines("{\"id\": 1}\n{\"id\": oops\n"))
                .checkpoint("past-the-bad-batch"),
        )
    }
}

sluice_plugin::export_source!(BadJson);

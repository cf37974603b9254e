//! Hostile: declares (int64, utf8) and returns a single float64 column.
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};

struct Wrong;

impl Source for Wrong {
    fn open(_: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        Ok((
            Wrong,
            vec![
                Column::new("id", ColumnType::Int64),
                Column::new("name", ColumnType::Utf8),
            ],
        ))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        Ok(Poll::batch(Batch::columns(vec![TypedColumn::float64(
            vec![1.5],
        )])))
    }
}

sluice_plugin::export_source!(Wrong);

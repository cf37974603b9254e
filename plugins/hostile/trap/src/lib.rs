//! Hostile: panics (a trap) on its third poll, after two good batches.
use sluice_plugin::{Batch, Column, ColumnType, Poll, Source, TypedColumn};

struct Trap(u32);

impl Source for Trap {
    fn open(_: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        Ok((Trap(0), vec![Column::new("x", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        self.0 += 1;
        if self.0 > 2 {
            panic!("deliberate panic in poll #{}", self.0);
        }
        Ok(Poll::batch(Batch::columns(vec![TypedColumn::int64(vec![
            1, 2, 3,
        ])])))
    }
}

sluice_plugin::export_source!(Trap);

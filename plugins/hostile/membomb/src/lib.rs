//! Hostile: allocates 16 MiB per step, forever, and keeps it.
use sluice_plugin::{Column, ColumnType, Poll, Source};

struct Bomb(Vec<Vec<u8>>);

impl Source for Bomb {
    fn open(_: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        Ok((Bomb(Vec::new()), vec![Column::new("x", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        loop {
            self.0.push(std::hint::black_box(vec![1u8; 16 << 20]));
        }
    }
}

sluice_plugin::export_source!(Bomb);

//! Hostile: never returns from `poll`.
use sluice_plugin::{Column, ColumnType, Poll, Source};

struct Spin;

impl Source for Spin {
    fn open(_: &str, _: Option<String>) -> Result<(Self, Vec<Column>), String> {
        Ok((Spin, vec![Column::new("x", ColumnType::Int64)]))
    }

    fn poll(&mut self, _: u32) -> Result<Poll, String> {
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

sluice_plugin::export_source!(Spin);

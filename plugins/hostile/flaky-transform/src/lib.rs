//! Hostile transform: passes rows through unchanged, but fails on every `every`th `apply`
//! of an instance — a fresh instance (after the agent restarts it) starts counting again.
//! `mode` picks the failure: "trap" (panic), "spin" (endless loop), "memory" (allocates
//! until the cap), "error" (returns an error), "bad_batch" (drops a column).
use serde::Deserialize;
use sluice_plugin::{Batch, Column, Rows, Transform};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    every: u64,
    mode: String,
}

struct Flaky {
    cfg: Config,
    calls: u64,
}

impl Transform for Flaky {
    fn open(config: &str, input: &[Column]) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        if cfg.every == 0 {
            return Err("every must be at least 1".into());
        }
        Ok((Flaky { cfg, calls: 0 }, input.to_vec()))
    }

    fn apply(&mut self, mut rows: Rows) -> Result<Batch, String> {
        self.calls += 1;
        if !self.calls.is_multiple_of(self.cfg.every) {
            return Ok(rows.into_batch());
        }
        match self.cfg.mode.as_str() {
            "trap" => panic!("deliberate panic in apply #{}", self.calls),
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 16 << 20]));
                }
            }
            "bad_batch" => {
                let first = rows.names()[0].clone();
                rows.remove(&first)?;
                Ok(rows.into_batch())
            }
            _ => Err(format!("deliberate error in apply #{}", self.calls)),
        }
    }
}

sluice_plugin::export_transform!(Flaky);

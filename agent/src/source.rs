//! Running sources: each source task produces Arrow chunks into its stream's batcher.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batcher::Chunk;
use crate::metrics::Metrics;
use crate::simulator::{Simulator, SimulatorConfig};

/// Run a simulator source until its total is reached or `stop` fires.
pub async fn run_simulator(
    name: String,
    cfg: SimulatorConfig,
    out: mpsc::Sender<Chunk>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<u64> {
    let mut sim = Simulator::new(&cfg);
    let started = Instant::now();
    // Paced sources produce at most ~100 chunks a second, so high rates stay cheap.
    let min_chunk = cfg
        .rate
        .map(|r| ((r / 100.0).ceil() as usize).clamp(1, cfg.chunk_rows))
        .unwrap_or(cfg.chunk_rows);
    loop {
        if *stop.borrow() {
            break;
        }
        let want = match cfg.rate {
            None => cfg.chunk_rows,
            Some(rate) => {
                let due = Simulator::due(rate, started.elapsed()).saturating_sub(sim.produced());
                if (due as usize) < min_chunk && sim.remaining().is_none_or(|r| r > due) {
                    let at = sim.produced() + min_chunk as u64;
                    let wake = started + Duration::from_secs_f64(at as f64 / rate);
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                (due as usize).min(cfg.chunk_rows)
            }
        };
        let Some(chunk) = sim.next_chunk(want)? else {
            break;
        };
        let rows = chunk.num_rows() as u64;
        tokio::select! {
            sent = out.send(chunk.into()) => {
                if sent.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
        metrics.source_rows(&name, rows);
    }
    tracing::info!(source = %name, rows = sim.produced(), "source finished");
    Ok(sim.produced())
}

//! Running sources: each source task produces Arrow chunks into its streams' batchers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::batcher::Chunk;
use crate::metrics::Metrics;
use crate::simulator::{Pace, SimulatorConfig, Step};

/// Paced sources wake at most this often, so high rates come in chunks, not single rows.
const MIN_WAKE: Duration = Duration::from_millis(10);

/// Run a simulator source until its streams end or `stop` fires. `out` holds one sender
/// per stream of the source, in the scenario's stream order.
pub async fn run_simulator(
    name: String,
    cfg: SimulatorConfig,
    out: Vec<mpsc::Sender<Chunk>>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<u64> {
    let mut sim = cfg
        .simulation(1)
        .map_err(|e| anyhow::anyhow!("source {name:?}: {e}"))?;
    let started = Instant::now();
    // The simulated clock runs from the scenario's start (or now) at wall-clock speed.
    let clock_start = sim.start_us();
    let mut produced = 0u64;
    loop {
        if *stop.borrow() {
            break;
        }
        let now = match cfg.pace {
            Pace::Realtime => Some(clock_start + started.elapsed().as_micros() as i64),
            Pace::Fast => None,
        };
        match sim.step(cfg.chunk_rows, now)? {
            Step::Done => break,
            Step::Wait(t) => {
                let due = Duration::from_micros(u64::try_from(t - clock_start).unwrap_or(0));
                let wake = (started + due).max(Instant::now() + MIN_WAKE);
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {}
                    _ = stop.changed() => {}
                }
            }
            Step::Rows { stream, batch } => {
                let rows = batch.num_rows() as u64;
                let Some(tx) = out.get(stream) else {
                    anyhow::bail!("source {name:?}: no channel for stream {stream}");
                };
                tokio::select! {
                    sent = tx.send(batch.into()) => {
                        if sent.is_err() {
                            break;
                        }
                    }
                    _ = stop.changed() => break,
                }
                produced += rows;
                metrics.source_rows(&name, rows);
            }
        }
    }
    tracing::info!(source = %name, rows = produced, "source finished");
    Ok(produced)
}

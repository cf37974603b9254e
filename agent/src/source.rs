//! Running sources: each source task produces Arrow chunks into its streams' batchers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::batcher::Chunk;
use crate::metrics::Metrics;
use crate::simulator::{Pace, SimulatorConfig, Step};

/// Paced sources wake at most this often, so high rates come in chunks, not single rows.
const MIN_WAKE: Duration = Duration::from_millis(10);

/// Where a stream's checkpoint comes from: `None` until known, then the checkpoint (itself
/// `None` for a stream that has none yet).
pub type Resume = watch::Receiver<Option<Option<String>>>;

/// A simulator stream's checkpoint. Its output is a function of the scenario and the
/// clock's start, so a resumed run regenerates from the same start and skips the rows it
/// already emitted.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SimCheckpoint {
    /// Start of the simulated clock (µs since the epoch).
    start_us: i64,
    /// Wall-clock time the first run began: real-time pacing continues from it.
    wall_start_us: i64,
    /// Rows of this stream emitted so far.
    rows: u64,
}

/// Wait until the stream's checkpoint is known; `None` if `stop` fires first.
pub async fn wait_resume(
    resume: &mut Resume,
    stop: &mut watch::Receiver<bool>,
) -> Option<Option<String>> {
    tokio::select! {
        r = resume.wait_for(Option::is_some) => r.ok().and_then(|c| c.clone()),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// Run a simulator source until its streams end or `stop` fires. `out` and `resume` hold
/// one entry per stream of the source, in the scenario's stream order. Each chunk carries
/// its stream's checkpoint, so a restarted agent continues the same output.
pub async fn run_simulator(
    name: String,
    cfg: SimulatorConfig,
    out: Vec<mpsc::Sender<Chunk>>,
    resume: Vec<Resume>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<u64> {
    let mut marks = Vec::with_capacity(resume.len());
    for mut r in resume {
        let Some(cp) = wait_resume(&mut r, &mut stop).await else {
            return Ok(0);
        };
        let mark = match cp {
            None => None,
            Some(text) => Some(serde_json::from_str::<SimCheckpoint>(&text).with_context(
                || format!("source {name:?}: stored checkpoint {text:?} is not a simulator's"),
            )?),
        };
        marks.push(mark);
    }
    let wall_now = Utc::now().timestamp_micros();
    let first = marks.iter().flatten().next().copied();
    let start_us = first.map_or(wall_now, |m| m.start_us);
    let wall_start_us = first.map_or(wall_now, |m| m.wall_start_us);
    let mut skip: Vec<u64> = marks.iter().map(|m| m.map_or(0, |m| m.rows)).collect();
    let mut emitted = skip.clone();
    if skip.iter().any(|n| *n > 0) {
        tracing::info!(source = %name, rows_done = ?skip, "resuming the simulation after the rows already emitted");
    }
    let mut sim = cfg
        .simulation_from(1, start_us)
        .map_err(|e| anyhow::anyhow!("source {name:?}: {e}"))?;
    // The simulated clock runs from the scenario's start (or the first run's) at
    // wall-clock speed.
    let clock_start = sim.start_us();
    let mut produced = 0u64;
    loop {
        if *stop.borrow() {
            break;
        }
        let elapsed_us = Utc::now().timestamp_micros() - wall_start_us;
        let now = match cfg.pace {
            Pace::Realtime => Some(clock_start + elapsed_us),
            Pace::Fast => None,
        };
        match sim.step(cfg.chunk_rows, now)? {
            Step::Done => break,
            Step::Wait(t) => {
                let wait = u64::try_from(t - clock_start - elapsed_us).unwrap_or(0);
                let wait = Duration::from_micros(wait).max(MIN_WAKE);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
            Step::Rows { stream, batch } => {
                let (Some(tx), Some(skip), Some(emitted)) = (
                    out.get(stream),
                    skip.get_mut(stream),
                    emitted.get_mut(stream),
                ) else {
                    anyhow::bail!("source {name:?}: no channel for stream {stream}");
                };
                let n = batch.num_rows() as u64;
                // Rows a previous run emitted are regenerated and passed over.
                let batch = if *skip >= n {
                    *skip -= n;
                    continue;
                } else if *skip > 0 {
                    let b = batch.slice(*skip as usize, (n - *skip) as usize);
                    *skip = 0;
                    b
                } else {
                    batch
                };
                let rows = batch.num_rows() as u64;
                *emitted += rows;
                let checkpoint = serde_json::to_string(&SimCheckpoint {
                    start_us,
                    wall_start_us,
                    rows: *emitted,
                })?;
                let chunk = Chunk {
                    batch,
                    checkpoint: Some(checkpoint),
                };
                tokio::select! {
                    sent = tx.send(chunk) => {
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

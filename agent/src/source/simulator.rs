//! The simulator source: drives a `sluice_simulator` scenario in real time or as fast as
//! the pipeline takes, with checkpoints that let a restarted agent continue the same output.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{Resume, wait_resume};
use crate::pipeline::Chunk;
use crate::telemetry::Metrics;
use sluice_simulator::{Pace, SimulatorConfig, Step};

/// Paced sources wake at most this often, so high rates come in chunks, not single rows.
const MIN_WAKE: Duration = Duration::from_millis(10);

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

/// Run a simulator source until its streams end or `stop` fires. `out` and `resume` hold
/// one entry per stream of the source, in the scenario's stream order. Each chunk carries
/// its stream's checkpoint, so a restarted agent continues the same output; no chunk is
/// bigger than `max_chunk_bytes` (by Arrow memory size) unless it is a single row.
pub async fn run_simulator(
    name: String,
    cfg: SimulatorConfig,
    max_chunk_bytes: usize,
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
    'run: loop {
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
                // A chunk over the batch's byte limit goes in pieces, each with its own
                // checkpoint: the batcher never splits a checkpointed chunk, and a batch
                // bigger than the sink's limit (a Kafka message) could not be shipped.
                let n = batch.num_rows();
                let size = batch.get_array_memory_size().max(1);
                let per_piece = (max_chunk_bytes.saturating_mul(n) / size).clamp(1, n.max(1));
                let mut from = 0;
                while from < n {
                    let k = per_piece.min(n - from);
                    let piece = batch.slice(from, k);
                    from += k;
                    *emitted += k as u64;
                    let checkpoint = serde_json::to_string(&SimCheckpoint {
                        start_us,
                        wall_start_us,
                        rows: *emitted,
                    })?;
                    let chunk = Chunk {
                        batch: piece,
                        checkpoint: Some(checkpoint),
                    };
                    tokio::select! {
                        sent = tx.send(chunk) => {
                            if sent.is_err() {
                                break 'run;
                            }
                        }
                        _ = stop.changed() => break 'run,
                    }
                    produced += k as u64;
                    // A slice reports its parent's buffers: count its share.
                    metrics.source_rows(&name, k as u64, (size * k / n.max(1)) as u64);
                }
            }
        }
    }
    tracing::info!(source = %name, rows = produced, "source finished");
    Ok(produced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run a simulator to its end and collect its chunks.
    async fn chunks_of(text: &str, max_chunk_bytes: usize) -> Vec<Chunk> {
        let cfg: SimulatorConfig = toml::from_str(text).expect("simulator config");
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let (_resume_tx, resume) = watch::channel(Some(None));
        let (_stop_tx, stop) = watch::channel(false);
        let produced = run_simulator(
            "sim".into(),
            cfg,
            max_chunk_bytes,
            vec![tx],
            vec![resume],
            stop,
            Arc::new(Metrics::default()),
        )
        .await
        .expect("simulator runs");
        let mut out = Vec::new();
        while let Some(c) = rx.recv().await {
            out.push(c);
        }
        assert_eq!(
            produced,
            out.iter().map(|c| c.batch.num_rows() as u64).sum::<u64>()
        );
        out
    }

    #[tokio::test]
    async fn chunks_over_the_byte_limit_go_in_checkpointed_pieces() {
        let text = r#"
            total = 40000
            seed = 3
            chunk_rows = 20000
            [fields]
            seq = { type = "sequence" }
            note = { type = "choice", values = ["a fairly long status text", "short"] }
        "#;
        let whole = chunks_of(text, usize::MAX).await;
        assert_eq!(whole.len(), 2);
        let limit = 64 << 10;
        let pieces = chunks_of(text, limit).await;
        assert!(pieces.len() > 2, "{} chunks", pieces.len());
        let mut rows = 0u64;
        for c in &pieces {
            // A slice reports its parent's buffers, so measure what would be shipped.
            let ipc = sluice_protocol::encode_batch(&c.batch).expect("encode");
            // Within the 10 % the Kafka sink leaves below a message's limit (IPC framing,
            // and rows longer than the chunk's average).
            assert!(ipc.len() <= limit + limit / 10, "{} bytes", ipc.len());
            rows += c.batch.num_rows() as u64;
            // Each piece's checkpoint counts the rows up to its end.
            let cp: SimCheckpoint =
                serde_json::from_str(c.checkpoint.as_deref().expect("checkpoint"))
                    .expect("simulator checkpoint");
            assert_eq!(cp.rows, rows);
        }
        assert_eq!(rows, 40_000);
        // The same rows, in the same order, as the unsplit run.
        let concat = |cs: &[Chunk]| {
            arrow_select::concat::concat_batches(&cs[0].batch.schema(), cs.iter().map(|c| &c.batch))
                .expect("concat")
        };
        assert_eq!(concat(&whole), concat(&pieces));
    }
}

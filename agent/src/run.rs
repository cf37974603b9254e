//! Wires the stages, sources → per-stream batchers → write-ahead logs → sink lanes, and
//! runs them to completion.

use std::sync::Arc;

use anyhow::Context;
use indexmap::IndexMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{AgentConfig, SourceConfig, TransformConfig};
use crate::pipeline::{self, Chunk, Limits, ReadyBatch};
use crate::sink::{Feedback, LaneLog, Sink};
use crate::telemetry::{Metrics, Taps};
use crate::wal::{self, WalError, WalHandle, WalMetricsSink, WalWriter};
use crate::{source, wasm};

/// What a finished run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Rows the sources produced.
    pub rows_generated: u64,
    /// Batches the far side has.
    pub batches_acked: u64,
    /// Batches refused for good (counted as lost).
    pub batches_rejected: u64,
    /// Left in the write-ahead log at shutdown, to ship at the next start.
    pub batches_unshipped: u64,
}

/// Run the agent until every source is exhausted and shipped, or until `stop` fires
/// (then buffered batches are drained within the sink's drain timeout).
pub async fn run(
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    taps: Taps,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<RunSummary> {
    let _lock = lock_data_dir(&cfg.agent.data_dir)?;
    let sink = Sink::new(&cfg.agent.id, &cfg.sink, &metrics)?;
    let limits = Limits {
        max_rows: cfg.batch.max_rows,
        max_bytes: usize::try_from(cfg.batch_max_bytes()).unwrap_or(usize::MAX),
        max_age: cfg.batch.max_age,
    };

    // One batcher and one lane per stream; sources of a stream share its batcher.
    let mut stream_inputs: IndexMap<String, mpsc::Sender<Chunk>> = IndexMap::new();
    // Per stream, where its sources resume: the newest checkpoint in the write-ahead log,
    // or else the lake's (learnt from the lane's first Welcome). Checkpointing sources wait
    // for it before they start.
    let mut resume: IndexMap<String, source::Resume> = IndexMap::new();
    let mut committed: IndexMap<String, watch::Receiver<Option<String>>> = IndexMap::new();
    let mut batchers = JoinSet::new();
    let mut stores = JoinSet::new();
    let mut lanes = JoinSet::new();
    for stream in cfg.sources.iter().flat_map(|(n, s)| s.streams(n)) {
        if stream_inputs.contains_key(&stream) {
            continue;
        }
        let stream_name: Arc<str> = stream.as_str().into();
        let (writer, handle, reader, recovered) = open_log(&cfg, &stream_name, &metrics)?;
        let (chunk_tx, chunk_rx) = mpsc::channel(8);
        let (batch_tx, batch_rx) = mpsc::channel(2);
        batchers.spawn(pipeline::run(
            stream_name.clone(),
            limits,
            chunk_rx,
            batch_tx,
            metrics.clone(),
            taps.tap(&stream_name),
        ));
        stores.spawn(store(
            stream_name.clone(),
            batch_rx,
            writer,
            stop.clone(),
            metrics.clone(),
        ));
        let (resume_tx, resume_rx) = watch::channel(recovered.checkpoint);
        let (committed_tx, committed_rx) = watch::channel(None);
        let log = LaneLog {
            records: reader.spawn(2)?,
            handle,
        };
        sink.spawn_lane(
            &mut lanes,
            &metrics,
            stream_name,
            log,
            Feedback {
                resume: resume_tx,
                committed: committed_tx,
            },
            stop.clone(),
        );
        resume.insert(stream.clone(), resume_rx);
        committed.insert(stream.clone(), committed_rx);
        stream_inputs.insert(stream, chunk_tx);
    }

    let needs_wasm = cfg
        .sources
        .values()
        .any(|s| matches!(s, SourceConfig::Wasm(_)) || !s.transforms().is_empty());
    let runtime = if needs_wasm {
        Some(wasm::Runtime::new(
            Some(cfg.agent.data_dir.clone()),
            wasm::network::Network::new(&cfg.network)?,
            Some(metrics.clone()),
        )?)
    } else {
        None
    };
    let mut sources = JoinSet::new();
    let mut chains = JoinSet::new();
    for (name, source) in &cfg.sources {
        let streams = source.streams(name);
        let mut txs: Vec<mpsc::Sender<Chunk>> =
            streams.iter().map(|s| stream_inputs[s].clone()).collect();
        if !source.transforms().is_empty() {
            // Source → its transforms → the stream's batcher.
            let stages = source
                .transforms()
                .iter()
                .map(|t| {
                    let TransformConfig::Wasm(cfg) = &cfg.transforms[t];
                    wasm::TransformStage {
                        name: t.clone(),
                        cfg: cfg.clone(),
                    }
                })
                .collect();
            // Validation allows transforms on single-stream sources only.
            let (chain_tx, chain_rx) = mpsc::channel(2);
            let runtime = runtime.clone().context("wasm runtime")?;
            let tx = txs.remove(0);
            let (name, stream, stop, metrics) = (
                name.clone(),
                streams[0].clone(),
                stop.clone(),
                metrics.clone(),
            );
            chains.spawn_blocking(move || {
                wasm::run_transforms(name, stream, stages, runtime, chain_rx, tx, stop, metrics)
            });
            txs = vec![chain_tx];
        }
        match source {
            SourceConfig::Simulator(sim) => {
                let resume = streams.iter().map(|s| resume[s].clone()).collect();
                // Its chunks carry checkpoints, and the batcher never splits those: chunks
                // no larger than a batch keep batches close to `max_rows`.
                let mut sim = sim.clone();
                sim.chunk_rows = sim.chunk_rows.min(cfg.batch.max_rows);
                sources.spawn(source::run_simulator(
                    name.clone(),
                    sim,
                    limits.max_bytes,
                    txs,
                    resume,
                    stop.clone(),
                    metrics.clone(),
                ));
            }
            SourceConfig::Wasm(w) => {
                let runtime = runtime.clone().context("wasm runtime")?;
                let link = wasm::SourceLink {
                    resume: resume[&streams[0]].clone(),
                    committed: committed[&streams[0]].clone(),
                };
                let tx = txs.remove(0);
                let (name, w, stop, metrics) =
                    (name.clone(), w.clone(), stop.clone(), metrics.clone());
                sources.spawn_blocking(move || {
                    wasm::run_source(name, w, runtime, tx, link, stop, metrics)
                });
            }
        }
    }
    // Batchers see their input close once every source of the stream is done.
    drop(stream_inputs);

    let mut summary = RunSummary::default();
    while let Some(r) = sources.join_next().await {
        summary.rows_generated += r.context("source task panicked")??;
    }
    while let Some(r) = chains.join_next().await {
        r.context("transform task panicked")??;
    }
    while let Some(r) = batchers.join_next().await {
        r.context("batcher task panicked")?
            .context("batcher failed")?;
    }
    while let Some(r) = stores.join_next().await {
        r.context("write-ahead log task panicked")??;
    }
    while let Some(r) = lanes.join_next().await {
        let lane = r.context("shipper lane panicked")?;
        summary.batches_acked += lane.acked_batches;
        summary.batches_rejected += lane.rejected_batches;
        summary.batches_unshipped += lane.unshipped_batches;
    }
    sink.close().await;
    Ok(summary)
}

/// Hold the data directory for this run: two agents sharing one would interleave their
/// write-ahead logs.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create agent.data_dir {}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "agent.data_dir {} is in use by another running agent",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Open a stream's write-ahead log under the data directory and report what it recovered.
fn open_log(
    cfg: &AgentConfig,
    stream: &Arc<str>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(WalWriter, WalHandle, wal::WalReader, wal::Recovered)> {
    let dir = cfg.agent.data_dir.join("wal").join(&**stream);
    let sink = {
        let (m1, m2, m3) = (metrics.clone(), metrics.clone(), metrics.clone());
        let (s1, s2, s3) = (stream.clone(), stream.clone(), stream.clone());
        WalMetricsSink {
            on_size: Some(Arc::new(move |bytes| m1.set_wal_size(&s1, bytes))),
            on_dropped: Some(Arc::new(move |rows| m2.lost(&s2, "wal_full", rows))),
            on_sync: Some(Arc::new(move |bytes, _| m3.wal_synced(&s3, bytes))),
        }
    };
    let (writer, handle, reader, recovered) = wal::open(&dir, cfg.buffer.wal_options(), sink)
        .with_context(|| format!("cannot open the write-ahead log of stream {stream:?}"))?;
    if recovered.corrupt_records > 0 {
        metrics.wal_corrupt(stream, recovered.corrupt_records);
    }
    if recovered.torn_bytes > 0 {
        tracing::warn!(
            %stream,
            bytes = recovered.torn_bytes,
            "cut a half-written record from the write-ahead log (the agent stopped mid-write)"
        );
    }
    if recovered.pending_records > 0 {
        tracing::info!(
            %stream,
            batches = recovered.pending_records,
            rows = recovered.pending_rows,
            "write-ahead log holds batches not yet acknowledged: shipping them first"
        );
    }
    Ok((writer, handle, reader, recovered))
}

/// Append a stream's batches to its log. A failed append (a full disk, typically) is
/// retried with backoff, which holds the sources back meanwhile; once `stop` has fired a
/// batch that cannot be stored is given up (a checkpointing source regenerates it at the
/// next start, as the log's newest checkpoint is from before it).
async fn store(
    stream: Arc<str>,
    mut batches: mpsc::Receiver<ReadyBatch>,
    writer: WalWriter,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);
    let health = metrics
        .health
        .watch(format!("write-ahead log of stream {stream:?}"), "batches");
    while let Some(batch) = batches.recv().await {
        let mut retry = std::time::Duration::from_millis(100);
        loop {
            match writer.append(batch.clone()).await {
                Ok(_) => {
                    health.progressed();
                    health.waiting(0);
                    break;
                }
                Err(e @ WalError::TooLarge { .. }) => {
                    tracing::error!(%stream, rows = batch.rows, "batch dropped: {e}");
                    metrics.lost(&stream, "too_large", u64::from(batch.rows));
                    break;
                }
                Err(e) if *stop.borrow() => {
                    tracing::warn!(%stream, rows = batch.rows, "stopping: batch not stored: {e}");
                    break;
                }
                Err(e @ WalError::Io { .. }) => {
                    metrics.wal_write_error(&stream);
                    health.waiting(1);
                    health.error(&e);
                    tracing::error!(%stream, retry_in = ?retry, "cannot store a batch: {e}");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
                Err(e) => {
                    health.failed(&e);
                    return Err(e)
                        .with_context(|| format!("stream {stream:?}: cannot store a batch"));
                }
            }
        }
    }
    health.done();
    Ok(())
}

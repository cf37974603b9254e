//! Wires sources → per-stream batchers → shipper lanes, and runs them to completion.

use std::sync::Arc;

use anyhow::Context;
use indexmap::IndexMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::batcher::{self, Chunk, Limits};
use crate::config::{AgentConfig, SinkConfig, SourceConfig, TransformConfig};
use crate::metrics::Metrics;
use crate::shipper::QuicShipper;
use crate::{source, tls, wasm};

/// What a finished run did.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub rows_generated: u64,
    pub batches_acked: u64,
    pub batches_rejected: u64,
    pub batches_abandoned: u64,
}

/// Run the agent until every source is exhausted and shipped, or until `stop` fires
/// (then buffered batches are drained within the sink's drain timeout).
pub async fn run(
    cfg: AgentConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<RunSummary> {
    let SinkConfig::Quic(quic) = &cfg.sink;
    let client = tls::client_config(&quic.ca, &quic.cert, &quic.key, quic.idle_timeout)
        .context("cannot set up TLS for the QUIC sink")?;
    let shipper = Arc::new(QuicShipper::new(
        cfg.agent.id.clone(),
        quic.clone(),
        client,
        metrics.clone(),
    )?);
    let limits = Limits {
        max_rows: cfg.batch.max_rows,
        max_bytes: usize::try_from(cfg.batch.max_bytes.as_u64()).unwrap_or(usize::MAX),
        max_age: cfg.batch.max_age,
    };

    // One batcher and one lane per stream; sources of a stream share its batcher.
    let mut stream_inputs: IndexMap<String, mpsc::Sender<Chunk>> = IndexMap::new();
    // Per stream, the checkpoint the lake holds, learnt from the lane's first Welcome:
    // checkpointing sources wait for it before they start.
    let mut resume: IndexMap<String, watch::Receiver<Option<Option<String>>>> = IndexMap::new();
    let mut batchers = JoinSet::new();
    let mut lanes = JoinSet::new();
    for stream in cfg.sources.iter().flat_map(|(n, s)| s.streams(n)) {
        if stream_inputs.contains_key(&stream) {
            continue;
        }
        let (chunk_tx, chunk_rx) = mpsc::channel(8);
        let (batch_tx, batch_rx) = mpsc::channel(2);
        let stream_name: Arc<str> = stream.as_str().into();
        batchers.spawn(batcher::run(
            stream_name.clone(),
            limits,
            chunk_rx,
            batch_tx,
            metrics.clone(),
        ));
        let (resume_tx, resume_rx) = watch::channel(None);
        lanes.spawn(
            shipper
                .clone()
                .run_lane(stream_name, batch_rx, resume_tx, stop.clone()),
        );
        resume.insert(stream.clone(), resume_rx);
        stream_inputs.insert(stream, chunk_tx);
    }

    let needs_wasm = cfg
        .sources
        .values()
        .any(|s| matches!(s, SourceConfig::Wasm(_)) || !s.transforms().is_empty());
    let runtime = if needs_wasm {
        Some(wasm::Runtime::new(Some(
            cfg.agent.data_dir.join("wasm-cache"),
        ))?)
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
                sources.spawn(source::run_simulator(
                    name.clone(),
                    sim.clone(),
                    txs,
                    stop.clone(),
                    metrics.clone(),
                ));
            }
            SourceConfig::Wasm(w) => {
                let runtime = runtime.clone().context("wasm runtime")?;
                let resume = resume[&streams[0]].clone();
                let tx = txs.remove(0);
                let (name, w, stop, metrics) =
                    (name.clone(), w.clone(), stop.clone(), metrics.clone());
                sources.spawn_blocking(move || {
                    wasm::run_source(name, w, runtime, tx, resume, stop, metrics)
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
    while let Some(r) = lanes.join_next().await {
        let lane = r.context("shipper lane panicked")?;
        summary.batches_acked += lane.acked_batches;
        summary.batches_rejected += lane.rejected_batches;
        summary.batches_abandoned += lane.abandoned_batches;
    }
    shipper.close().await;
    Ok(summary)
}

//! Runs a source's transforms: every chunk goes through each stage in order before it
//! reaches the stream's batcher. A stage that fails is restarted with backoff; the chunk it
//! failed on is retried (`on_error = "retry"`, nothing lost) or dropped and counted
//! (`on_error = "drop"`). A stage given up on holds its input: the source stops at the
//! channel (backpressure) and `/health` names the transform, until the agent stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use tokio::sync::{mpsc, watch};
use wasmtime::component::Component;

use super::instance::Transform;
use super::instance::{Failure, Instance, Sandbox};
use super::restart::{self, Restarts};
use super::{OnError, PluginSettings, Runtime, WasmTransformConfig, arrow};
use crate::pipeline::Chunk;
use crate::telemetry::Metrics;

/// One transform in a source's chain.
#[derive(Debug, Clone)]
pub struct TransformStage {
    /// `[transforms.NAME]`.
    pub name: String,
    /// Its `[transforms.NAME]` table, paths resolved.
    pub cfg: WasmTransformConfig,
}

/// Why a stage stopped passing chunks on.
enum Halt {
    /// The agent is stopping.
    Stopped,
    /// The stage failed too often and is given up.
    GaveUp,
}

/// Move chunks from `input` through the stages to `out` until the input closes (the
/// source ended) or the agent stops. Blocking: call it on a thread of its own.
#[allow(clippy::too_many_arguments)]
pub fn run_transforms(
    source: String,
    stream: String,
    stages: Vec<TransformStage>,
    runtime: Arc<Runtime>,
    mut input: mpsc::Receiver<Chunk>,
    out: mpsc::Sender<Chunk>,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let mut chain = Vec::with_capacity(stages.len());
    for stage in stages {
        let label: Arc<str> = format!("{source}/{}", stage.name).into();
        match runtime.load(stage.cfg.plugin()) {
            Ok((component, info)) => {
                tracing::info!(plugin = %label, sha256 = %info.digest, from_cache = info.cached, "loaded transform");
                chain.push(Stage::new(label, stream.clone(), stage.cfg, component));
            }
            Err(e) => {
                let reason = format!("cannot load {}: {e:#}", stage.cfg.plugin.display());
                tracing::error!(plugin = %label, "{reason}; transform failed");
                metrics.plugin_failed(&label, &reason);
                hold(&stop);
                return Ok(());
            }
        }
    }
    while let Some(chunk) = input.blocking_recv() {
        let mut current = Some(chunk);
        for stage in &mut chain {
            let Some(chunk) = current.take() else { break };
            match stage.apply(chunk, &runtime, &stop, &metrics) {
                Ok(next) => current = next,
                Err(Halt::Stopped) => return Ok(()),
                Err(Halt::GaveUp) => {
                    hold(&stop);
                    return Ok(());
                }
            }
        }
        if let Some(chunk) = current
            && out.blocking_send(chunk).is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Keep the input open (so the source waits instead of producing rows nobody would
/// land) until the agent stops.
fn hold(stop: &watch::Receiver<bool>) {
    while !*stop.borrow() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One transform of one source, with its instance (started on first use).
struct Stage {
    label: Arc<str>,
    stream: String,
    cfg: WasmTransformConfig,
    config_json: String,
    sandbox: Sandbox,
    component: Component,
    instance: Option<Instance<Transform>>,
    /// The input schema the instance was opened with.
    input: Option<SchemaRef>,
    /// The output schema the instance declared; a restart over the same input must agree.
    output: Option<SchemaRef>,
    restarts: Restarts,
}

impl Stage {
    fn new(
        label: Arc<str>,
        stream: String,
        cfg: WasmTransformConfig,
        component: Component,
    ) -> Self {
        Self {
            label,
            stream,
            config_json: cfg.config_json(),
            sandbox: cfg.sandbox(),
            restarts: Restarts::new(cfg.policy()),
            cfg,
            component,
            instance: None,
            input: None,
            output: None,
        }
    }

    /// Transform one chunk; `Ok(None)` when it was dropped (`on_error = "drop"`) or the
    /// transform filtered out every row and there is no checkpoint to carry.
    fn apply(
        &mut self,
        chunk: Chunk,
        runtime: &Runtime,
        stop: &watch::Receiver<bool>,
        metrics: &Metrics,
    ) -> Result<Option<Chunk>, Halt> {
        let rows_in = chunk.batch.num_rows();
        if rows_in == 0 {
            return Ok(Some(chunk));
        }
        loop {
            let failure = match self.try_apply(&chunk.batch, runtime, metrics) {
                Ok(batch) => {
                    metrics.transform_rows(&self.label, rows_in as u64, batch.num_rows() as u64);
                    if batch.num_rows() == 0 && chunk.checkpoint.is_none() {
                        return Ok(None);
                    }
                    return Ok(Some(Chunk {
                        batch,
                        checkpoint: chunk.checkpoint,
                    }));
                }
                Err(f) => f,
            };
            self.instance = None;
            metrics.plugin_failure(&self.label, failure.reason());
            let next = match self.restarts.failed(&failure) {
                Ok(next) => next,
                Err(reason) => {
                    tracing::error!(
                        plugin = %self.label,
                        "transform failed for good: {reason}; its source waits until the agent restarts"
                    );
                    metrics.plugin_failed(&self.label, &reason);
                    return Err(Halt::GaveUp);
                }
            };
            let action = match self.cfg.on_error {
                OnError::Retry => "retrying the batch",
                OnError::Drop => "dropping the batch",
            };
            tracing::warn!(
                plugin = %self.label,
                reason = failure.reason(),
                rows = rows_in,
                "transform {:?}: {failure}; {action}, restart in {:?} (restart {})",
                &*self.label,
                next.delay,
                next.number
            );
            if self.cfg.on_error == OnError::Drop {
                let reason = format!("transform_{}", failure.reason());
                metrics.lost(&self.stream, &reason, rows_in as u64);
            }
            if !restart::sleep(next.delay, stop) {
                return Err(Halt::Stopped);
            }
            metrics.plugin_restart(&self.label);
            if self.cfg.on_error == OnError::Drop {
                return Ok(None);
            }
        }
    }

    /// Open an instance when there is none (or the input schema changed), then `apply`.
    fn try_apply(
        &mut self,
        batch: &RecordBatch,
        runtime: &Runtime,
        metrics: &Metrics,
    ) -> Result<RecordBatch, Failure> {
        let schema = batch.schema();
        let instance = match &mut self.instance {
            Some(i) if self.input.as_ref() == Some(&schema) => i,
            _ => {
                let mut inst = Instance::<Transform>::new(
                    runtime,
                    &self.component,
                    self.label.clone(),
                    &self.sandbox,
                )?;
                let columns = arrow::columns(&schema).map_err(Failure::BadBatch)?;
                let declared = inst.open(&self.config_json, &columns)?;
                let output = arrow::schema(&declared).map_err(|e| Failure::Plugin {
                    call: "open",
                    message: format!("unusable output schema: {e}"),
                })?;
                // A restart over the same input must declare the same output; new input
                // columns (a source that reopened with more) may bring new output ones.
                if self.input.as_ref() == Some(&schema)
                    && self.output.as_ref().is_some_and(|was| *was != output)
                {
                    return Err(Failure::Plugin {
                        call: "open",
                        message: "declared other output columns than before its restart, for the same input"
                            .into(),
                    });
                }
                self.output = Some(output);
                self.input = Some(schema);
                self.instance.insert(inst)
            }
        };
        let wit = arrow::to_wit(batch).map_err(Failure::BadBatch)?;
        let started = Instant::now();
        let result = instance.apply(wit);
        metrics.plugin_call(&self.label, started.elapsed().as_secs_f64());
        let output = self.output.as_ref().ok_or_else(|| {
            Failure::Instantiate("internal error: no output schema after open".into())
        })?;
        arrow::to_record_batch(output, result?).map_err(Failure::BadBatch)
    }
}

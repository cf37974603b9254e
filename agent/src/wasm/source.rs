//! Runs a wasm source: polls it, restarts it with exponential backoff when it fails, and
//! gives up (marking it failed, with the reason) after too many failures in a window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use tokio::sync::{mpsc, watch};
use wasmtime::component::Component;

use super::instance::Source;
use super::instance::{Failure, Instance, Sandbox};
use super::restart::{self, Restarts};
use super::{PluginSettings, Runtime, WasmSourceConfig, arrow};
use crate::pipeline::Chunk;
use crate::telemetry::Metrics;

/// How a session of one instance ended.
enum End {
    /// The plugin said it is finished.
    Finished,
    /// The agent is stopping, or nobody reads the output any more.
    Stopped,
}

/// What a source hears back from its stream's lane.
pub struct SourceLink {
    /// Where to resume: set once the lane knows (the log's checkpoint, or the lake's).
    pub resume: watch::Receiver<Option<Option<String>>>,
    /// The newest checkpoint whose batch, and every one before it, the lake holds.
    pub committed: watch::Receiver<Option<String>>,
}

/// Run the source until it finishes, fails for good, or `stop` fires. Blocking: call it on
/// a thread of its own. Returns the rows produced.
pub fn run_source(
    name: String,
    cfg: WasmSourceConfig,
    runtime: Arc<Runtime>,
    out: mpsc::Sender<Chunk>,
    link: SourceLink,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<u64> {
    let SourceLink { resume, committed } = link;
    let plugin: Arc<str> = name.as_str().into();
    let (component, info) = match runtime.load(&cfg.plugin) {
        Ok(x) => x,
        Err(e) => {
            let reason = format!("cannot load {}: {e:#}", cfg.plugin.display());
            tracing::error!(plugin = %plugin, "{reason}; plugin failed");
            metrics.plugin_failed(&plugin, &reason);
            return Ok(0);
        }
    };
    tracing::info!(plugin = %plugin, sha256 = %info.digest, from_cache = info.cached, "loaded plugin");
    // Start from the stream's newest checkpoint: the write-ahead log's, or else the lake's
    // (then the processor's first answer is awaited before the plugin opens).
    let checkpoint = loop {
        if let Some(c) = resume.borrow().clone() {
            break c;
        }
        if *stop.borrow() {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    tracing::info!(plugin = %plugin, checkpoint = ?checkpoint, "resuming from the stored checkpoint");
    let mut s = Supervisor {
        plugin,
        config_json: cfg.config_json(),
        sandbox: cfg.sandbox(),
        cfg,
        runtime,
        component,
        out,
        stop,
        metrics,
        checkpoint,
        committed,
        schema: None,
        rows: 0,
    };
    s.run();
    Ok(s.rows)
}

struct Supervisor {
    plugin: Arc<str>,
    cfg: WasmSourceConfig,
    config_json: String,
    sandbox: Sandbox,
    runtime: Arc<Runtime>,
    component: Component,
    out: mpsc::Sender<Chunk>,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    /// Checkpoint after the last batch handed on; a restart resumes from it.
    checkpoint: Option<String>,
    /// What the lake holds, for `committed` (a 0.3.0 connector's).
    committed: watch::Receiver<Option<String>>,
    /// The schema declared by the first instance; later instances must declare the same.
    schema: Option<SchemaRef>,
    rows: u64,
}

impl Supervisor {
    fn run(&mut self) {
        let mut restarts = Restarts::new(self.cfg.policy());
        loop {
            let failure = match self.session() {
                Ok(End::Finished) => {
                    tracing::info!(plugin = %self.plugin, rows = self.rows, "plugin finished");
                    return;
                }
                Ok(End::Stopped) => return,
                Err(f) => f,
            };
            self.metrics.plugin_failure(&self.plugin, failure.reason());
            let next = match restarts.failed(&failure) {
                Ok(next) => next,
                Err(reason) => {
                    tracing::error!(plugin = %self.plugin, "plugin failed for good: {reason}");
                    self.metrics.plugin_failed(&self.plugin, &reason);
                    return;
                }
            };
            tracing::warn!(
                plugin = %self.plugin,
                reason = failure.reason(),
                "plugin {:?}: {failure}; restarting in {:?} (restart {})",
                &*self.plugin,
                next.delay,
                next.number
            );
            if !restart::sleep(next.delay, &self.stop) {
                return;
            }
            self.metrics.plugin_restart(&self.plugin);
        }
    }

    /// One instance, from instantiation until it finishes, fails or is stopped.
    fn session(&mut self) -> Result<End, Failure> {
        let mut inst = Instance::<Source>::new(
            &self.runtime,
            &self.component,
            self.plugin.clone(),
            &self.sandbox,
        )?;
        let cols = inst.open(&self.config_json, self.checkpoint.as_deref())?;
        let schema = arrow::schema(&cols).map_err(|e| Failure::Plugin {
            call: "open",
            message: format!("unusable schema: {e}"),
        })?;
        // A connector may declare other columns when it reopens (a database table gained
        // one): the batcher cuts its buffered rows and the stream goes on in the new schema.
        if self.schema.as_ref().is_some_and(|was| *was != schema) {
            tracing::info!(
                plugin = %self.plugin,
                columns = schema.fields().len(),
                "the plugin declared other columns than before its restart"
            );
        }
        self.schema = Some(schema.clone());
        // What the lake held before this instance opened is news to it too.
        self.committed.mark_changed();
        loop {
            if *self.stop.borrow() {
                return Ok(End::Stopped);
            }
            if inst.takes_commits()
                && self.committed.has_changed().unwrap_or(false)
                && let Some(c) = self.committed.borrow_and_update().clone()
            {
                let started = Instant::now();
                let said = inst.committed(&c);
                self.metrics
                    .plugin_call(&self.plugin, started.elapsed().as_secs_f64());
                said?;
            }
            let started = Instant::now();
            let result = inst.poll(self.cfg.max_rows);
            self.metrics
                .plugin_call(&self.plugin, started.elapsed().as_secs_f64());
            let result = result?;
            // The batch is checked before its checkpoint is taken: a restart after a
            // refused batch must ask for it again, not resume past it.
            if let Some(c) = &result.checkpoint
                && c.len() > sluice_protocol::MAX_CHECKPOINT_BYTES
            {
                // The lake keeps a stream's checkpoint in every later snapshot: a large
                // one would be copied for ever, and the processor refuses it.
                return Err(Failure::BadBatch(format!(
                    "a checkpoint of {} bytes; at most {} are kept",
                    c.len(),
                    sluice_protocol::MAX_CHECKPOINT_BYTES
                )));
            }
            let batch = match result.batch {
                Some(b) => Some(arrow::to_record_batch(&schema, b).map_err(Failure::BadBatch)?),
                None => None,
            };
            if let Some(b) = &batch
                && b.num_rows() > self.cfg.max_rows as usize
            {
                return Err(Failure::BadBatch(format!(
                    "{} rows returned for max_rows {}",
                    b.num_rows(),
                    self.cfg.max_rows
                )));
            }
            if result.checkpoint.is_some() {
                self.checkpoint = result.checkpoint;
            }
            let mut got_rows = false;
            if let Some(batch) = batch
                && batch.num_rows() > 0
            {
                got_rows = true;
                let n = batch.num_rows() as u64;
                let bytes = batch.get_array_memory_size() as u64;
                let chunk = Chunk {
                    batch,
                    checkpoint: self.checkpoint.clone(),
                };
                if self.out.blocking_send(chunk).is_err() {
                    return Ok(End::Stopped);
                }
                self.rows += n;
                self.metrics.source_rows(&self.plugin, n, bytes);
            }
            if result.finished {
                return Ok(End::Finished);
            }
            if !got_rows && !restart::sleep(self.cfg.poll_interval, &self.stop) {
                return Ok(End::Stopped);
            }
        }
    }
}

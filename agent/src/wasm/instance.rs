//! One sandboxed connector instance: its own store with a memory cap, WASI with only the
//! granted capabilities, and calls bounded by a time budget.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::host::Host;
use super::bindings::sluice::plugin::types::{Batch, Column, Level, PollResult};
use super::bindings::{Source, Transform};
use super::runtime::{EPOCH_TICK, Runtime};

/// What a connector may do and use.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub memory_limit: usize,
    pub call_timeout: Duration,
    /// Host directories readable by the guest, at the same path.
    pub allow_dirs: Vec<std::path::PathBuf>,
    /// Environment variables passed through (only those set on the host).
    pub allow_env: Vec<String>,
}

/// Per-store state.
pub struct State {
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl super::bindings::sluice::plugin::types::Host for State {}

impl Host for State {
    fn log(&mut self, level: Level, message: String) {
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Why a call failed; each is a reason label in metrics.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    #[error("time budget of {budget:?} exceeded in {call}()")]
    Timeout {
        call: &'static str,
        budget: Duration,
    },
    #[error("memory cap of {cap_mib} MiB exceeded in {call}()")]
    Memory { call: &'static str, cap_mib: usize },
    #[error("trapped in {call}(): {detail}")]
    Trap { call: &'static str, detail: String },
    #[error("{call}() returned an error: {message}")]
    Plugin { call: &'static str, message: String },
    #[error("invalid batch: {0}")]
    BadBatch(String),
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
}

impl Failure {
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout { .. } => "timeout",
            Failure::Memory { .. } => "memory",
            Failure::Trap { .. } => "trap",
            Failure::Plugin { .. } => "plugin_error",
            Failure::BadBatch(_) => "bad_batch",
            Failure::Instantiate(_) => "instantiate",
        }
    }
}

/// A world a plugin implements: `Source` or `Transform`.
pub trait World: Sized {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self>;
}

impl World for Source {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self> {
        Source::instantiate(store, component, linker)
    }
}

impl World for Transform {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self> {
        Transform::instantiate(store, component, linker)
    }
}

/// A live instance of a plugin of world `W`.
pub struct Instance<W> {
    store: Store<State>,
    bindings: W,
    sandbox: Sandbox,
    stderr: MemoryOutputPipe,
}

impl<W: World> Instance<W> {
    /// Instantiate `component` in a fresh store.
    pub fn new(
        runtime: &Runtime,
        component: &Component,
        plugin: Arc<str>,
        sandbox: &Sandbox,
    ) -> Result<Self, Failure> {
        let inst = |e: wasmtime::Error| Failure::Instantiate(format!("{e:#}"));
        let mut linker: Linker<State> = Linker::new(&runtime.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(inst)?;
        // Both worlds import the same interfaces (`host`), so one linker setup serves both.
        Source::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).map_err(inst)?;

        let stderr = MemoryOutputPipe::new(64 * 1024);
        let mut wasi = WasiCtxBuilder::new();
        // Guest output (panics, tracebacks) is kept to explain a failure.
        wasi.stdout(stderr.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for dir in &sandbox.allow_dirs {
            let guest = dir.to_string_lossy();
            wasi.preopened_dir(dir, guest.as_ref(), FsPerms::ReadOnly)
                .map_err(|e| {
                    Failure::Instantiate(format!("cannot grant {}: {e:#}", dir.display()))
                })?;
        }
        for var in &sandbox.allow_env {
            if let Ok(v) = std::env::var(var) {
                wasi.env(var, v);
            }
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(sandbox.memory_limit)
            .trap_on_grow_failure(true)
            .instances(16)
            .build();
        let mut store = Store::new(
            &runtime.engine,
            State {
                plugin,
                wasi: wasi.build(),
                table: ResourceTable::new(),
                limits,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(budget_ticks(sandbox.call_timeout));
        let bindings = W::instantiate(&mut store, component, &linker)
            .map_err(|e| classify(e, "instantiate", sandbox, &stderr))?;
        Ok(Self {
            store,
            bindings,
            sandbox: sandbox.clone(),
            stderr,
        })
    }

    fn arm(&mut self) {
        self.store
            .set_epoch_deadline(budget_ticks(self.sandbox.call_timeout));
    }

    /// Turn a call's outcome into the plugin's answer or a classified failure.
    fn outcome<T>(
        &self,
        call: &'static str,
        r: wasmtime::Result<Result<T, String>>,
    ) -> Result<T, Failure> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(message)) => Err(Failure::Plugin { call, message }),
            Err(e) => Err(classify(e, call, &self.sandbox, &self.stderr)),
        }
    }
}

impl Instance<Source> {
    /// `open(config, checkpoint)` → declared columns.
    pub fn open(&mut self, config: &str, checkpoint: Option<&str>) -> Result<Vec<Column>, Failure> {
        self.arm();
        let r =
            self.bindings
                .sluice_plugin_connector()
                .call_open(&mut self.store, config, checkpoint);
        self.outcome("open", r)
    }

    /// `poll(max_rows)`.
    pub fn poll(&mut self, max_rows: u32) -> Result<PollResult, Failure> {
        self.arm();
        let r = self
            .bindings
            .sluice_plugin_connector()
            .call_poll(&mut self.store, max_rows);
        self.outcome("poll", r)
    }
}

impl Instance<Transform> {
    /// `open(config, input columns)` → output columns.
    pub fn open(&mut self, config: &str, input: &[Column]) -> Result<Vec<Column>, Failure> {
        self.arm();
        let r = self
            .bindings
            .sluice_plugin_transformer()
            .call_open(&mut self.store, config, input);
        self.outcome("open", r)
    }

    /// `apply(batch)` → the transformed batch.
    pub fn apply(&mut self, batch: &Batch) -> Result<Batch, Failure> {
        self.arm();
        let r = self
            .bindings
            .sluice_plugin_transformer()
            .call_apply(&mut self.store, batch);
        self.outcome("apply", r)
    }
}

fn budget_ticks(budget: Duration) -> u64 {
    (budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}

/// Name the cause of a trap: time budget, memory cap, or the guest's own panic message
/// (the last line it wrote to stderr).
fn classify(
    e: wasmtime::Error,
    call: &'static str,
    sandbox: &Sandbox,
    stderr: &MemoryOutputPipe,
) -> Failure {
    if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
        return Failure::Timeout {
            call,
            budget: sandbox.call_timeout,
        };
    }
    let text = format!("{e:#}");
    if text.contains("growing memory") || text.contains("memory limit") {
        return Failure::Memory {
            call,
            cap_mib: sandbox.memory_limit >> 20,
        };
    }
    let said = String::from_utf8_lossy(&stderr.contents()).into_owned();
    let last = guest_message(&said);
    let detail = match (e.downcast_ref::<wasmtime::Trap>(), last) {
        (Some(trap), Some(msg)) => format!("{trap} ({msg})"),
        (Some(trap), None) => trap.to_string(),
        (None, Some(msg)) => format!("{} ({msg})", first_line(&text)),
        (None, None) => first_line(&text).to_string(),
    };
    Failure::Trap { call, detail }
}

/// What the guest said last on stderr: a Rust panic's message (the lines after
/// "panicked at"), or else its last three lines; runtime hints ("note: run with ...")
/// skipped.
fn guest_message(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
        .collect();
    if let Some(i) = lines.iter().rposition(|l| l.contains("panicked at")) {
        let msg = lines[i + 1..].join(" ");
        return Some(if msg.is_empty() {
            lines[i].to_string()
        } else {
            msg
        });
    }
    // Otherwise the last few lines (for Python: the exception before the runtime's note).
    let tail = &lines[lines.len().saturating_sub(3)..];
    (!tail.is_empty()).then(|| tail.join(" | "))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

//! One sandboxed connector instance: its own store with a memory budget, WASI with only
//! the granted capabilities, calls bounded by a time budget, and logs bounded in size and
//! rate.
//!
//! The instance lives on a thread of its own. Epoch interruption stops wasm code at its
//! budget, but not a call blocked in the host (a read of a FIFO, a hung network file
//! system): the caller waits for the budget plus [`HOST_GRACE`], then gives the instance up
//! and leaves its thread to finish the host call on its own.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::types::{Batch, Column, Level, PollResult};
use super::bindings::{v1, v2, v3};
use super::compat;
use super::grants::FileGrants;
use super::limits::{Budget, LogBudget};
use super::network;
use super::runtime::{EPOCH_TICK, Runtime};

/// How much longer than its budget a call may take before it is given up: the time for an
/// epoch trap to land, so only a call stuck in the host reaches it.
pub const HOST_GRACE: Duration = Duration::from_secs(1);

/// What a connector may do and use.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The cap of the instance's one linear memory, in bytes.
    pub memory_limit: usize,
    /// The time budget of each call.
    pub call_timeout: Duration,
    /// Host directories readable by the guest, at the same path.
    pub allow_dirs: Vec<std::path::PathBuf>,
    /// Host files readable by the guest, at the same path, as copies refreshed before each
    /// call (see [`FileGrants`]).
    pub allow_files: Vec<std::path::PathBuf>,
    /// Environment variables passed through (only those set on the host).
    pub allow_env: Vec<String>,
    /// Hosts and URLs it may connect to (`allow_tcp`, `allow_http`).
    pub grants: network::Grants,
    /// The longest any one network wait may take.
    pub network_timeout: Duration,
}

impl Sandbox {
    /// A sandbox that grants nothing: no files, no environment, no network.
    pub fn bare(memory_limit: usize, call_timeout: Duration) -> Self {
        Self {
            memory_limit,
            call_timeout,
            allow_dirs: Vec::new(),
            allow_files: Vec::new(),
            allow_env: Vec::new(),
            grants: network::Grants::default(),
            network_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-store state.
pub struct State {
    plugin: Arc<str>,
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    budget: Budget,
    logs: LogBudget,
    pub(super) net: network::NetState,
    pub(super) http: network::Http,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v2::sluice::plugin::types::Host for State {}
impl v1::sluice::plugin::types::Host for State {}

impl v3::sluice::plugin::host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        v2::sluice::plugin::host::Host::log(self, level, message);
    }
}

impl v1::sluice::plugin::host::Host for State {
    fn log(&mut self, level: v1::sluice::plugin::types::Level, message: String) {
        v2::sluice::plugin::host::Host::log(self, compat::level(level), message);
    }
}

impl v2::sluice::plugin::host::Host for State {
    fn log(&mut self, level: Level, message: String) {
        let Some(message) = self.logs.admit(message) else {
            return;
        };
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
    #[error("{call}() blocked in a host call past its time budget of {budget:?}; given up")]
    Blocked {
        call: &'static str,
        budget: Duration,
    },
    #[error("{call}() waited on the network past {after:?} (network_timeout); cut off")]
    NetTimeout { call: &'static str, after: Duration },
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
            Failure::Blocked { .. } => "blocked",
            Failure::NetTimeout { .. } => "network_timeout",
            Failure::Memory { .. } => "memory",
            Failure::Trap { .. } => "trap",
            Failure::Plugin { .. } => "plugin_error",
            Failure::BadBatch(_) => "bad_batch",
            Failure::Instantiate(_) => "instantiate",
        }
    }
}

/// A world a plugin implements: `Source` or `Transform`.
pub trait World: Sized + Send + 'static {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self>;
}

/// A source component, of any version of the contract.
pub enum Source {
    V1(v1::Source),
    V2(v2::Source),
    V3(v3::Source),
}

/// A transform component, of any version of the contract.
pub enum Transform {
    V1(v1::Transform),
    V2(v2::Transform),
    V3(v3::Transform),
}

/// Whether a component exports `name` (an interface of a given version).
fn exports(store: &Store<State>, component: &Component, name: &str) -> bool {
    component
        .component_type()
        .exports(store.engine())
        .any(|(n, _)| n == name)
}

impl World for Source {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self> {
        Ok(
            if exports(store, component, "sluice:plugin/connector@0.3.0") {
                Source::V3(v3::Source::instantiate(store, component, linker)?)
            } else if exports(store, component, "sluice:plugin/connector@0.2.0") {
                Source::V2(v2::Source::instantiate(store, component, linker)?)
            } else {
                Source::V1(v1::Source::instantiate(store, component, linker)?)
            },
        )
    }
}

impl World for Transform {
    fn instantiate(
        store: &mut Store<State>,
        component: &Component,
        linker: &Linker<State>,
    ) -> wasmtime::Result<Self> {
        Ok(
            if exports(store, component, "sluice:plugin/transformer@0.3.0") {
                Transform::V3(v3::Transform::instantiate(store, component, linker)?)
            } else if exports(store, component, "sluice:plugin/transformer@0.2.0") {
                Transform::V2(v2::Transform::instantiate(store, component, linker)?)
            } else {
                Transform::V1(v1::Transform::instantiate(store, component, linker)?)
            },
        )
    }
}

/// What the instance's thread owns.
struct Live<W> {
    store: Store<State>,
    bindings: W,
    sandbox: Sandbox,
    stderr: MemoryOutputPipe,
    files: FileGrants,
}

type Job<W> = Box<dyn FnOnce(&mut Live<W>) + Send>;

/// A live instance of a plugin of world `W`, on a thread of its own.
pub struct Instance<W> {
    /// `None` once a call was given up: the thread may still be inside it.
    jobs: Option<SyncSender<Job<W>>>,
    plugin: Arc<str>,
    sandbox: Sandbox,
    /// Exports `connector.committed` (a source built against 0.3.0 or later).
    takes_commits: bool,
}

impl<W: World> Instance<W> {
    /// Instantiate `component` in a fresh store, on a new thread.
    pub fn new(
        runtime: &Runtime,
        component: &Component,
        plugin: Arc<str>,
        sandbox: &Sandbox,
    ) -> Result<Self, Failure> {
        let (jobs, inbox) = sync_channel::<Job<W>>(1);
        let (ready_tx, ready) = sync_channel(1);
        let takes_commits = super::exports(&runtime.engine, component)
            .iter()
            .any(|e| e == "sluice:plugin/connector@0.3.0");
        let (engine, component, s, name) = (
            runtime.engine.clone(),
            component.clone(),
            sandbox.clone(),
            plugin.clone(),
        );
        let files = runtime.grants_dir(&plugin);
        // Every plugin has one, so that what it tries without a grant is counted too.
        let net = Arc::new(network::NetShared {
            grants: sandbox.grants.clone(),
            network: runtime.network.clone(),
            meter: runtime.meter(&plugin),
            timeout: sandbox.network_timeout,
        });
        std::thread::Builder::new()
            .name(format!("wasm-{plugin}"))
            .spawn(move || {
                let live = Live::<W>::new(&engine, &component, name, s, files, net);
                let mut live = match live {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&mut live, inbox);
            })
            .map_err(|e| Failure::Instantiate(format!("cannot start its thread: {e}")))?;
        let this = Self {
            jobs: Some(jobs),
            plugin,
            sandbox: sandbox.clone(),
            takes_commits,
        };
        this.wait("instantiate", &ready)?;
        Ok(this)
    }

    /// Wait for a call's answer within its budget plus the grace; past it, give up.
    fn wait<T>(
        &self,
        call: &'static str,
        answer: &Receiver<Result<T, Failure>>,
    ) -> Result<T, Failure> {
        if let Some(r) = spin(answer) {
            return r;
        }
        match answer.recv_timeout(self.sandbox.call_timeout + HOST_GRACE) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(plugin = %self.plugin, "{call}() is stuck in a host call past its budget; its thread is left to finish it");
                Err(Failure::Blocked {
                    call,
                    budget: self.sandbox.call_timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Failure::Trap {
                call,
                detail: "the instance's thread ended".into(),
            }),
        }
    }

    /// Run `f` on the instance's thread within the time budget.
    fn call<T: Send + 'static>(
        &mut self,
        call: &'static str,
        f: impl FnOnce(&mut Live<W>) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let Some(jobs) = &self.jobs else {
            return Err(Failure::Blocked {
                call,
                budget: self.sandbox.call_timeout,
            });
        };
        let (tx, answer) = sync_channel(1);
        let job: Job<W> = Box::new(move |live| {
            let _ = tx.send(f(live));
        });
        if jobs.send(job).is_err() {
            return Err(Failure::Trap {
                call,
                detail: "the instance's thread ended".into(),
            });
        }
        let r = self.wait(call, &answer);
        if matches!(r, Err(Failure::Blocked { .. })) {
            self.jobs = None;
        }
        r
    }
}

/// A store held to the sandbox's budgets: memory, counts, time.
fn new_store(
    engine: &Engine,
    plugin: Arc<str>,
    sandbox: &Sandbox,
    wasi: WasiCtx,
    net: Option<Arc<network::NetShared>>,
) -> Store<State> {
    let mut store = Store::new(
        engine,
        State {
            logs: LogBudget::new(plugin.clone()),
            plugin,
            wasi,
            table: ResourceTable::new(),
            budget: Budget::new(sandbox.memory_limit),
            http: network::Http::new(net.clone()),
            net: network::NetState {
                shared: net,
                ..Default::default()
            },
        },
    );
    store.limiter(|s| &mut s.budget);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(budget_ticks(sandbox.call_timeout));
    store
}

/// How long a thread polls for the other side before it sleeps. Waking a sleeping thread
/// costs tens of microseconds on a busy or virtual machine, more than a short call itself;
/// polling a little while keeps a burst of calls (a connector read in small polls) fast,
/// and costs nothing between calls that come seconds apart.
const SPIN: Duration = Duration::from_micros(100);

/// A message on `rx` if one comes within [`SPIN`].
fn spin<T>(rx: &Receiver<T>) -> Option<T> {
    let started = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) if started.elapsed() >= SPIN => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
}

/// The instance's thread: run jobs until the instance is dropped.
fn serve<W>(live: &mut Live<W>, inbox: Receiver<Job<W>>) {
    loop {
        let job = match spin(&inbox) {
            Some(job) => job,
            None => match inbox.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        job(live);
    }
}

impl<W: World> Live<W> {
    fn new(
        engine: &Engine,
        component: &Component,
        plugin: Arc<str>,
        sandbox: Sandbox,
        grants_dir: std::path::PathBuf,
        net: Arc<network::NetShared>,
    ) -> Result<Self, Failure> {
        let inst = |e: wasmtime::Error| Failure::Instantiate(format!("{e:#}"));
        let mut linker: Linker<State> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(inst)?;
        // wasi:http is there for every plugin; without an `allow_http` grant each request
        // is refused.
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(inst)?;
        network::link_sockets(&mut linker).map_err(inst)?;
        if net.grants.any() {
            network::BoundedIo::link(&mut linker).map_err(inst)?;
        }
        // Both worlds import the same interfaces (`host`), so one linker setup serves both;
        // every version of the contract is linked, for components of any.
        v3::Source::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).map_err(inst)?;
        v2::Source::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).map_err(inst)?;
        v1::Source::add_to_linker::<_, HasSelf<State>>(&mut linker, |s| s).map_err(inst)?;

        let stderr = MemoryOutputPipe::new(64 * 1024);
        let mut wasi = WasiCtxBuilder::new();
        // Guest output (panics, tracebacks) is kept to explain a failure.
        // TCP sockets only with a TCP grant (each use then meets the address check, which
        // passes only granted connects), never UDP; `link_sockets` counts the refused ones.
        // Lookups meet the same grants.
        wasi.stdout(stderr.clone())
            .stderr(stderr.clone())
            .allow_tcp(!net.grants.tcp.is_empty())
            .allow_udp(false)
            .allow_ip_name_lookup(true)
            .socket_addr_check(network::addr_check(net.clone()));
        let files = FileGrants::new(grants_dir, &sandbox.allow_files)
            .map_err(|e| Failure::Instantiate(format!("cannot grant the files: {e}")))?;
        files
            .refresh()
            .map_err(|e| Failure::Instantiate(format!("cannot copy a granted file: {e}")))?;
        for (host, guest) in files.preopens() {
            wasi.preopened_dir(&host, &guest, FsPerms::ReadOnly)
                .map_err(|e| Failure::Instantiate(format!("cannot grant {guest}: {e:#}")))?;
        }
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
        let mut store = new_store(engine, plugin, &sandbox, wasi.build(), Some(net));
        let bindings = W::instantiate(&mut store, component, &linker)
            .map_err(|e| classify(e, "instantiate", &sandbox, &stderr))?;
        Ok(Self {
            store,
            bindings,
            sandbox,
            stderr,
            files,
        })
    }

    /// Before a call: a fresh time budget, fresh copies of the granted files.
    fn arm(&mut self, call: &'static str) -> Result<(), Failure> {
        self.store
            .set_epoch_deadline(budget_ticks(self.sandbox.call_timeout));
        self.store.data_mut().net.deadline =
            Some(std::time::Instant::now() + self.sandbox.call_timeout);
        self.files.refresh().map_err(|e| Failure::Plugin {
            call,
            message: format!("cannot copy a granted file: {e}"),
        })
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
        let (config, checkpoint) = (config.to_string(), checkpoint.map(str::to_string));
        self.call("open", move |l| {
            l.arm("open")?;
            let r = match &l.bindings {
                Source::V3(b) => b.sluice_plugin_connector().call_open(
                    &mut l.store,
                    &config,
                    checkpoint.as_deref(),
                ),
                Source::V2(b) => b.sluice_plugin_connector().call_open(
                    &mut l.store,
                    &config,
                    checkpoint.as_deref(),
                ),
                Source::V1(b) => b
                    .sluice_plugin_connector()
                    .call_open(&mut l.store, &config, checkpoint.as_deref())
                    .map(|r| r.map(|cols| cols.into_iter().map(compat::column).collect())),
            };
            l.outcome("open", r)
        })
    }

    /// `poll(max_rows)`.
    pub fn poll(&mut self, max_rows: u32) -> Result<PollResult, Failure> {
        self.call("poll", move |l| {
            l.arm("poll")?;
            let r = match &l.bindings {
                Source::V3(b) => b
                    .sluice_plugin_connector()
                    .call_poll(&mut l.store, max_rows),
                Source::V2(b) => b
                    .sluice_plugin_connector()
                    .call_poll(&mut l.store, max_rows),
                Source::V1(b) => b
                    .sluice_plugin_connector()
                    .call_poll(&mut l.store, max_rows)
                    .map(|r| r.map(compat::poll_result)),
            };
            l.outcome("poll", r)
        })
    }

    /// Whether the component takes [`Self::committed`] (built against 0.3.0 or later).
    pub fn takes_commits(&self) -> bool {
        self.takes_commits
    }

    /// `committed(checkpoint)`: the lake holds the batches up to the one that carried it.
    /// A component of an older contract is not called.
    pub fn committed(&mut self, checkpoint: &str) -> Result<(), Failure> {
        if !self.takes_commits {
            return Ok(());
        }
        let checkpoint = checkpoint.to_string();
        self.call("committed", move |l| {
            l.arm("committed")?;
            let r = match &l.bindings {
                Source::V3(b) => b
                    .sluice_plugin_connector()
                    .call_committed(&mut l.store, &checkpoint),
                Source::V1(_) | Source::V2(_) => Ok(Ok(())),
            };
            l.outcome("committed", r)
        })
    }
}

impl Instance<Transform> {
    /// `open(config, input columns)` → output columns.
    pub fn open(&mut self, config: &str, input: &[Column]) -> Result<Vec<Column>, Failure> {
        let (config, input) = (config.to_string(), input.to_vec());
        self.call("open", move |l| {
            l.arm("open")?;
            let r = match &l.bindings {
                Transform::V3(b) => {
                    b.sluice_plugin_transformer()
                        .call_open(&mut l.store, &config, &input)
                }
                Transform::V2(b) => {
                    b.sluice_plugin_transformer()
                        .call_open(&mut l.store, &config, &input)
                }
                Transform::V1(b) => {
                    let input = input
                        .iter()
                        .map(compat::column_back)
                        .collect::<Result<Vec<_>, String>>()
                        .map_err(|message| Failure::Plugin {
                            call: "open",
                            message,
                        })?;
                    b.sluice_plugin_transformer()
                        .call_open(&mut l.store, &config, &input)
                        .map(|r| r.map(|cols| cols.into_iter().map(compat::column).collect()))
                }
            };
            l.outcome("open", r)
        })
    }

    /// `apply(batch)` → the transformed batch.
    pub fn apply(&mut self, batch: Batch) -> Result<Batch, Failure> {
        self.call("apply", move |l| {
            l.arm("apply")?;
            let r = match &l.bindings {
                Transform::V3(b) => b
                    .sluice_plugin_transformer()
                    .call_apply(&mut l.store, &batch),
                Transform::V2(b) => b
                    .sluice_plugin_transformer()
                    .call_apply(&mut l.store, &batch),
                Transform::V1(b) => {
                    let batch = compat::batch_back(batch).map_err(Failure::BadBatch)?;
                    b.sluice_plugin_transformer()
                        .call_apply(&mut l.store, &batch)
                        .map(|r| r.map(compat::batch))
                }
            };
            l.outcome("apply", r)
        })
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
    if let Some(t) = e.downcast_ref::<network::NetTimeout>() {
        return Failure::NetTimeout { call, after: t.0 };
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A component whose one core module defines `n` memories and exports nothing.
    fn component_with_memories(n: usize) -> Vec<u8> {
        use wasm_encoder as e;
        let mut module = e::Module::new();
        let mut memories = e::MemorySection::new();
        for _ in 0..n {
            memories.memory(e::MemoryType {
                minimum: 1,
                maximum: None,
                memory64: false,
                shared: false,
                page_size_log2: None,
            });
        }
        module.section(&memories);
        let mut component = e::Component::new();
        component.section(&e::ModuleSection(&module));
        let mut instances = e::InstanceSection::new();
        instances.instantiate(0, std::iter::empty::<(&str, e::ModuleArg)>());
        component.section(&instances);
        component.finish()
    }

    #[test]
    fn a_component_declaring_a_second_memory_is_refused() {
        let runtime = Runtime::bare().expect("runtime");
        let sandbox = Sandbox::bare(64 << 20, Duration::from_secs(2));
        for (n, refused) in [(1, false), (2, true)] {
            let component = Component::new(&runtime.engine, component_with_memories(n))
                .expect("a valid component");
            let mut store = new_store(
                &runtime.engine,
                "m".into(),
                &sandbox,
                WasiCtxBuilder::new().build(),
                None,
            );
            let linker: Linker<State> = Linker::new(&runtime.engine);
            let made = linker.instantiate(&mut store, &component);
            assert_eq!(made.is_err(), refused, "{n} memories");
            if let Err(e) = made {
                assert!(format!("{e:#}").contains("memory count too high"), "{e:#}");
            }
        }
    }
}

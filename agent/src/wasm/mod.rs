//! WebAssembly connectors: components written against `wit/plugin.wit`, run in a sandbox.

mod arrow;
pub mod bench;
mod instance;
mod runtime;
pub mod scaffold;
mod supervisor;

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

pub use runtime::Runtime;
pub use supervisor::run_source;

use crate::config::Invalid;

/// Host bindings generated from the WIT package.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "source",
    });
}

/// `[sources.NAME] type = "wasm"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmSourceConfig {
    /// The component file (`.wasm`).
    pub plugin: PathBuf,
    /// Stream to feed; defaults to the source name. A wasm source has its stream to itself.
    #[serde(default)]
    pub stream: Option<String>,
    /// Most rows asked for per `poll` call.
    #[serde(default = "default_max_rows")]
    pub max_rows: u32,
    /// Wait this long after a poll that returned nothing.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Memory cap of the instance.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// Time budget of each call into the plugin.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Host directories the plugin may read (mounted read-only at the same path).
    #[serde(default)]
    pub allow_dirs: Vec<PathBuf>,
    /// Environment variables the plugin may see (their host values).
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// First restart delay after a failure; doubles up to `restart_backoff_max`.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// This many failures within `failure_window` mark the plugin failed (no more restarts).
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
    /// The plugin's own settings, handed to `open` as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_max_rows() -> u32 {
    8192
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_memory_limit() -> ByteSize {
    ByteSize::mib(64)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_backoff_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_max_failures() -> u32 {
    5
}
fn default_failure_window() -> Duration {
    Duration::from_secs(300)
}

impl WasmSourceConfig {
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.max_rows == 0 {
            return Err(Invalid::new(
                format!("{key}.max_rows"),
                "must be at least 1",
            ));
        }
        if self.memory_limit.as_u64() < 1 << 20 {
            return Err(Invalid::new(
                format!("{key}.memory_limit"),
                "must be at least 1 MiB",
            ));
        }
        if self.call_timeout < Duration::from_millis(20) {
            return Err(Invalid::new(
                format!("{key}.call_timeout"),
                "must be at least 20ms",
            ));
        }
        if self.max_failures == 0 {
            return Err(Invalid::new(
                format!("{key}.max_failures"),
                "must be at least 1",
            ));
        }
        if self.restart_backoff_initial.is_zero()
            || self.restart_backoff_initial > self.restart_backoff_max
        {
            return Err(Invalid::new(
                format!("{key}.restart_backoff_initial"),
                "must be greater than zero and at most restart_backoff_max",
            ));
        }
        Ok(())
    }

    /// Make relative paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        if self.plugin.is_relative() {
            self.plugin = base.join(&self.plugin);
        }
        for d in &mut self.allow_dirs {
            if d.is_relative() {
                *d = base.join(&*d);
            }
        }
    }

    /// The plugin's settings as the JSON `open` receives.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

/// What `sluice-agent plugin check` reports about a component.
pub struct CheckReport {
    pub digest: String,
    pub imports: Vec<String>,
    pub schema: arrow_schema::SchemaRef,
}

/// Load a component, check it implements the `source` world, open it with `config` and
/// report its schema and the interfaces it imports.
pub fn check(
    runtime: &Runtime,
    path: &std::path::Path,
    config: &str,
) -> anyhow::Result<CheckReport> {
    let (component, info) = runtime.load(path)?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(&runtime.engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let exports: Vec<String> = ty
        .exports(&runtime.engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let want = "sluice:plugin/connector@0.1.0";
    if !exports.iter().any(|e| e == want) {
        anyhow::bail!(
            "{} does not implement the sluice:plugin/source world: it exports no `{want}` \
             (exports: {})",
            path.display(),
            if exports.is_empty() {
                "none".to_string()
            } else {
                exports.join(", ")
            }
        );
    }
    let sandbox = instance::Sandbox {
        memory_limit: 256 << 20,
        call_timeout: Duration::from_secs(10),
        allow_dirs: Vec::new(),
        allow_env: Vec::new(),
    };
    let mut inst = instance::Instance::new(runtime, &component, "check".into(), &sandbox)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let cols = inst
        .open(config, None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let schema = arrow::schema(&cols).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(CheckReport {
        digest: info.digest,
        imports,
        schema,
    })
}

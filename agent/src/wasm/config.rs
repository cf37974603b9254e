//! Config of wasm plugins: `[sources.NAME] type = "wasm"` and `[transforms.NAME] type = "wasm"`.
//!
//! Both kinds share the sandbox and restart settings; they are declared in each struct
//! (serde cannot combine `flatten` with `deny_unknown_fields`) and checked by one function.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

use super::instance::Sandbox;
use super::network::Grants;
use super::restart::RestartPolicy;
use sluice_ops::config::Invalid;

/// `[sources.NAME] type = "wasm"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmSourceConfig {
    /// The component file (`.wasm`).
    pub plugin: PathBuf,
    /// Stream (and bronze table) to feed; not shared with another source.
    /// Default: `NAME`.
    #[serde(default)]
    pub stream: Option<String>,
    /// Transforms applied to this source's rows, in order (`[transforms.NAME]`).
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Rows asked for per `poll` call.
    #[serde(default = "default_max_rows")]
    pub max_rows: u32,
    /// Wait after a poll that returned nothing.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Memory cap of the instance (≥ 1 MiB): its one linear memory (a component declaring a
    /// second one is refused).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// Time budget of each call (≥ 20 ms). A call stuck in the host (a read that never
    /// returns) is given up 1 s after it, reason `blocked`.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Host directories readable by the plugin (read-only, same path). Not `/`, `/proc` or
    /// anything under `/proc`: they expose the agent's own process (`/proc/self/mem`,
    /// `/proc/self/environ`); the config is refused. Symbolic links are judged by where they
    /// lead.
    #[serde(default)]
    pub allow_dirs: Vec<PathBuf>,
    /// Host files readable by the plugin, at the same path, as copies the agent refreshes
    /// before every call (at most 1 MiB each): the way to grant `/proc/stat`,
    /// `/proc/meminfo`, `/proc/loadavg`. Nothing beside them is visible. A process's files
    /// (`/proc/self/…`, `/proc/PID/…`) are refused.
    #[serde(default)]
    pub allow_files: Vec<PathBuf>,
    /// Environment variables visible to the plugin (their host values).
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// TCP connections the plugin may open, `host:port` each (`[v6]:port`): a connect is
    /// allowed only to an address the host name resolves to at that moment, on that port.
    /// UDP and listening are never allowed.
    #[serde(default)]
    pub allow_tcp: Vec<String>,
    /// HTTP requests the plugin may send through `wasi:http`:
    /// `"https://api.example.com/v1/*"` (scheme, host, port, path prefix; without `*` the
    /// exact path). The host sends them, with TLS.
    #[serde(default)]
    pub allow_http: Vec<String>,
    /// The longest a networked plugin may wait on the network at once (a connect, a read,
    /// a write, a response); past it the call is cut off, reason `network_timeout`. From
    /// 10 ms to 1 h.
    #[serde(default = "default_network_timeout", with = "humantime_serde")]
    pub network_timeout: Duration,
    /// Restart delay after a failure; doubles after each one, up to `restart_backoff_max`.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    /// Longest restart delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// This many failures within `failure_window` mark the plugin failed (no more
    /// restarts).
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The time `max_failures` are counted over.
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
    /// Table handed to the plugin's `open` as JSON: the plugin's own settings.
    #[serde(default)]
    pub config: toml::Table,
}

/// `[transforms.NAME] type = "wasm"`: a plugin of the `transform` world, applied to the
/// rows of every source that lists it in `transforms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmTransformConfig {
    /// The component file (`.wasm`).
    pub plugin: PathBuf,
    /// A batch the transform fails on: `"retry"` it on the restarted instance (nothing lost;
    /// the transform is failed and its source held after `max_failures`), or `"drop"` it,
    /// counted in `lost_rows` with reason `transform_<reason>`.
    #[serde(default)]
    pub on_error: OnError,
    /// Memory cap of the instance (≥ 1 MiB): its one linear memory (a component declaring a
    /// second one is refused).
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// Time budget of each call (≥ 20 ms). A call stuck in the host (a read that never
    /// returns) is given up 1 s after it, reason `blocked`.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Host directories readable by the plugin (read-only, same path). Not `/`, `/proc` or
    /// anything under `/proc`: they expose the agent's own process (`/proc/self/mem`,
    /// `/proc/self/environ`); the config is refused. Symbolic links are judged by where they
    /// lead.
    #[serde(default)]
    pub allow_dirs: Vec<PathBuf>,
    /// Host files readable by the plugin, at the same path, as copies the agent refreshes
    /// before every call (at most 1 MiB each): the way to grant `/proc/stat`,
    /// `/proc/meminfo`, `/proc/loadavg`. Nothing beside them is visible. A process's files
    /// (`/proc/self/…`, `/proc/PID/…`) are refused.
    #[serde(default)]
    pub allow_files: Vec<PathBuf>,
    /// Environment variables visible to the plugin (their host values).
    #[serde(default)]
    pub allow_env: Vec<String>,
    /// TCP connections the plugin may open, `host:port` each (`[v6]:port`): a connect is
    /// allowed only to an address the host name resolves to at that moment, on that port.
    /// UDP and listening are never allowed.
    #[serde(default)]
    pub allow_tcp: Vec<String>,
    /// HTTP requests the plugin may send through `wasi:http`:
    /// `"https://api.example.com/v1/*"` (scheme, host, port, path prefix; without `*` the
    /// exact path). The host sends them, with TLS.
    #[serde(default)]
    pub allow_http: Vec<String>,
    /// The longest a networked plugin may wait on the network at once (a connect, a read,
    /// a write, a response); past it the call is cut off, reason `network_timeout`. From
    /// 10 ms to 1 h.
    #[serde(default = "default_network_timeout", with = "humantime_serde")]
    pub network_timeout: Duration,
    /// Restart delay after a failure; doubles after each one, up to `restart_backoff_max`.
    #[serde(default = "default_backoff_initial", with = "humantime_serde")]
    pub restart_backoff_initial: Duration,
    /// Longest restart delay.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// This many failures within `failure_window` mark the plugin failed (no more
    /// restarts).
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The time `max_failures` are counted over.
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
    /// Table handed to the plugin's `open` as JSON: the plugin's own settings.
    #[serde(default)]
    pub config: toml::Table,
}

/// `on_error` of a transform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Restart the transform and retry the same batch: nothing is lost, and a batch that
    /// keeps failing stops its source (backpressure) once the transform is marked failed.
    #[default]
    Retry,
    /// Restart the transform and drop the batch, counted in `lost_rows` with the reason.
    Drop,
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
fn default_network_timeout() -> Duration {
    Duration::from_secs(10)
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

/// The settings every plugin has, borrowed from either config.
struct Common<'a> {
    memory_limit: ByteSize,
    call_timeout: Duration,
    allow_dirs: &'a [PathBuf],
    allow_files: &'a [PathBuf],
    allow_env: &'a [String],
    allow_tcp: &'a [String],
    allow_http: &'a [String],
    network_timeout: Duration,
    policy: RestartPolicy,
    config: &'a toml::Table,
}

macro_rules! common {
    ($cfg:expr) => {{
        let c = $cfg;
        Common {
            memory_limit: c.memory_limit,
            call_timeout: c.call_timeout,
            allow_dirs: &c.allow_dirs,
            allow_files: &c.allow_files,
            allow_env: &c.allow_env,
            allow_tcp: &c.allow_tcp,
            allow_http: &c.allow_http,
            network_timeout: c.network_timeout,
            policy: RestartPolicy {
                backoff_initial: c.restart_backoff_initial,
                backoff_max: c.restart_backoff_max,
                max_failures: c.max_failures,
                failure_window: c.failure_window,
            },
            config: &c.config,
        }
    }};
}

impl Common<'_> {
    fn validate(&self, key: &str) -> Result<(), Invalid> {
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
        for (grants, dir, what) in [
            (self.allow_dirs, true, "allow_dirs"),
            (self.allow_files, false, "allow_files"),
        ] {
            for path in grants {
                if let Some(why) = super::grants::refused_grant(path, dir) {
                    return Err(Invalid::new(
                        format!("{key}.{what}"),
                        format!("{}: {why}", path.display()),
                    ));
                }
            }
        }
        if let Err((what, why)) = Grants::parse(self.allow_tcp, self.allow_http) {
            return Err(Invalid::new(format!("{key}.{what}"), why));
        }
        if self.network_timeout < Duration::from_millis(10)
            || self.network_timeout > Duration::from_secs(3600)
        {
            return Err(Invalid::new(
                format!("{key}.network_timeout"),
                "must be from 10ms to 1h",
            ));
        }
        if self.policy.max_failures == 0 {
            return Err(Invalid::new(
                format!("{key}.max_failures"),
                "must be at least 1",
            ));
        }
        if self.policy.backoff_initial.is_zero()
            || self.policy.backoff_initial > self.policy.backoff_max
        {
            return Err(Invalid::new(
                format!("{key}.restart_backoff_initial"),
                "must be greater than zero and at most restart_backoff_max",
            ));
        }
        Ok(())
    }

    fn sandbox(&self) -> Sandbox {
        Sandbox {
            memory_limit: usize::try_from(self.memory_limit.as_u64()).unwrap_or(usize::MAX),
            call_timeout: self.call_timeout,
            allow_dirs: self.allow_dirs.to_vec(),
            allow_files: self.allow_files.to_vec(),
            allow_env: self.allow_env.to_vec(),
            // Checked by `validate` before any sandbox is made.
            grants: Grants::parse(self.allow_tcp, self.allow_http).unwrap_or_default(),
            network_timeout: self.network_timeout,
        }
    }
}

/// Make relative paths relative to the config file's directory.
fn resolve_paths(base: &Path, plugin: &mut PathBuf, allow_dirs: &mut [PathBuf]) {
    for p in std::iter::once(plugin).chain(allow_dirs.iter_mut()) {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

/// What the supervisors need from either config.
pub trait PluginSettings {
    /// The component file, resolved against the config file's directory.
    fn plugin(&self) -> &Path;
    /// The limits and grants each instance runs with.
    fn sandbox(&self) -> Sandbox;
    /// When a failed instance is restarted, and when it is given up on.
    fn policy(&self) -> RestartPolicy;
    /// The plugin's settings as the JSON `open` receives.
    fn config_json(&self) -> String;
}

macro_rules! settings {
    ($ty:ty) => {
        impl PluginSettings for $ty {
            fn plugin(&self) -> &Path {
                &self.plugin
            }
            fn sandbox(&self) -> Sandbox {
                common!(self).sandbox()
            }
            fn policy(&self) -> RestartPolicy {
                common!(self).policy
            }
            fn config_json(&self) -> String {
                serde_json::to_string(common!(self).config).unwrap_or_else(|_| "{}".into())
            }
        }

        impl $ty {
            /// Make relative paths relative to the config file's directory.
            pub fn resolve_paths(&mut self, base: &Path) {
                resolve_paths(base, &mut self.plugin, &mut self.allow_dirs);
            }
        }
    };
}

settings!(WasmSourceConfig);
settings!(WasmTransformConfig);

impl WasmSourceConfig {
    /// Check values that serde cannot; `key` is this source's config path.
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        if self.max_rows == 0 {
            return Err(Invalid::new(
                format!("{key}.max_rows"),
                "must be at least 1",
            ));
        }
        common!(self).validate(key)
    }
}

impl WasmTransformConfig {
    /// Check values that serde cannot; `key` is this transform's config path.
    pub fn validate(&self, key: &str) -> Result<(), Invalid> {
        common!(self).validate(key)
    }
}

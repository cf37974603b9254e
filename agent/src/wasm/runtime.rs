//! The wasmtime engine shared by every connector, the epoch clock that enforces time
//! budgets, and the on-disk cache of compiled components.
//!
//! A cached component is native code the agent runs, so the cache is trusted only as far
//! as its directory: created owner-only (0700); a directory or file that another user owns
//! or may write is not used (the component is compiled again).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use super::network::{Meter, Network, NetworkConfig};
use crate::telemetry::Metrics;

/// How often the epoch advances; time budgets are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One engine for the agent, with epoch interruption on and a ticker thread.
pub struct Runtime {
    pub(crate) engine: Engine,
    /// How plugins' network grants are served.
    pub(crate) network: Network,
    metrics: Option<Arc<Metrics>>,
    /// Per plugin, what its network use is counted in (kept across restarts, so the
    /// bound on its refusal labels holds for the plugin, not each instance).
    meters: Mutex<HashMap<Arc<str>, Meter>>,
    cache_dir: Option<PathBuf>,
    /// Where instances keep the copies of their granted files.
    grants: PathBuf,
    instances: AtomicU64,
    /// Removes `grants` when it is a temporary directory.
    _temporary: Option<tempfile::TempDir>,
}

impl Runtime {
    /// Build the engine. With a `state_dir` (the agent's data directory), compiled
    /// components are cached in its `wasm-cache/` and granted files copied under
    /// `wasm-grants/`; without, nothing is cached and the copies go to a temporary
    /// directory.
    pub fn new(
        state_dir: Option<PathBuf>,
        network: Network,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;
        let (cache_dir, grants, temporary) = match state_dir {
            Some(d) => {
                let cache = d.join("wasm-cache");
                let cache = match private_dir(&cache) {
                    Ok(()) => Some(cache),
                    Err(e) => {
                        tracing::warn!(dir = %cache.display(), "not caching compiled plugins: {e}");
                        None
                    }
                };
                let grants = d.join("wasm-grants");
                // Copies of an earlier run's instances are stale.
                let _ = std::fs::remove_dir_all(&grants);
                private_dir(&grants)?;
                (cache, grants, None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("sluice-grants-")
                    .tempdir()?;
                (None, t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Arc::new(Self {
            engine,
            network,
            metrics,
            meters: Mutex::default(),
            cache_dir,
            grants,
            instances: AtomicU64::new(0),
            _temporary: temporary,
        }))
    }

    /// Where `plugin`'s network use is counted.
    pub fn meter(&self, plugin: &Arc<str>) -> Meter {
        let Ok(mut meters) = self.meters.lock() else {
            return Meter::new(plugin.clone(), self.metrics.clone());
        };
        meters
            .entry(plugin.clone())
            .or_insert_with(|| Meter::new(plugin.clone(), self.metrics.clone()))
            .clone()
    }

    /// A runtime for tools and tests: no cache, no metrics, default `[network]`.
    pub fn bare() -> anyhow::Result<Arc<Self>> {
        Self::new(None, Network::new(&NetworkConfig::default())?, None)
    }

    /// A directory of its own for one instance of `plugin` (its granted files' copies).
    pub fn grants_dir(&self, plugin: &str) -> PathBuf {
        let n = self.instances.fetch_add(1, Ordering::Relaxed);
        let safe: String = plugin
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.grants.join(format!("{safe}-{n}"))
    }

    /// Load a component, from the compile cache when this exact file (by content hash) was
    /// compiled before by this exact engine.
    pub fn load(&self, path: &Path) -> anyhow::Result<(Component, LoadInfo)> {
        use anyhow::Context;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let digest = hex(&Sha256::digest(&bytes));
        let Some(dir) = &self.cache_dir else {
            let c = Component::new(&self.engine, &bytes).map_err(|e| invalid(path, e))?;
            return Ok((
                c,
                LoadInfo {
                    digest,
                    cached: false,
                },
            ));
        };
        let mut engine_hash = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(
            &self.engine.precompile_compatibility_hash(),
            &mut engine_hash,
        );
        let key = format!(
            "{digest}-{:016x}.cwasm",
            std::hash::Hasher::finish(&engine_hash)
        );
        let cached = dir.join(&key);
        if cached.exists()
            && let Err(e) = trusted(&cached)
        {
            tracing::warn!(path = %cached.display(), "compiling again, not loading a cache entry: {e}");
            let _ = std::fs::remove_file(&cached);
        } else if cached.exists() {
            match deserialize_cached(&self.engine, &cached) {
                Ok(c) => {
                    return Ok((
                        c,
                        LoadInfo {
                            digest,
                            cached: true,
                        },
                    ));
                }
                Err(e) => {
                    tracing::warn!(path = %cached.display(), "ignoring unusable cache entry: {e}")
                }
            }
        }
        let c = Component::new(&self.engine, &bytes).map_err(|e| invalid(path, e))?;
        if let Err(e) = write_cache(dir, &key, &c) {
            tracing::warn!(dir = %dir.display(), "cannot cache the compiled component: {e}");
        }
        Ok((
            c,
            LoadInfo {
                digest,
                cached: false,
            },
        ))
    }
}

/// Where a component came from.
#[derive(Debug, Clone)]
pub struct LoadInfo {
    /// SHA-256 of the component file.
    pub digest: String,
    /// Loaded from the compile cache rather than compiled now.
    pub cached: bool,
}

fn write_cache(dir: &Path, key: &str, c: &Component) -> anyhow::Result<()> {
    private_dir(dir)?;
    let tmp = dir.join(format!("{key}.tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let _ = std::fs::remove_file(&tmp);
    std::io::Write::write_all(&mut options.open(&tmp)?, &c.serialize()?)?;
    // Atomic publish: a concurrent reader never sees a half-written entry.
    std::fs::rename(&tmp, dir.join(key))?;
    Ok(())
}

/// Create `dir` owner-only, or check that an existing one is this user's and nobody
/// else's to write.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    trusted(dir)?;
    // One made by an earlier version may be readable by others: it is ours, so close it.
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(())
}

/// Ok when `path` belongs to this user and no one else may write it.
fn trusted(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        let me = effective_uid();
        if m.uid() != me {
            return Err(std::io::Error::other(format!(
                "{} belongs to user {}, not this agent's ({me})",
                path.display(),
                m.uid()
            )));
        }
        if m.mode() & 0o022 != 0 {
            return Err(std::io::Error::other(format!(
                "{} may be written by others (mode {:o})",
                path.display(),
                m.mode() & 0o777
            )));
        }
    }
    Ok(())
}

fn invalid(path: &Path, e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not a valid WebAssembly component: {e:#}",
        path.display()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Load a component compiled earlier from the agent's cache.
#[expect(
    unsafe_code,
    reason = "wasmtime cannot check a serialized component; the cache is the agent's own"
)]
fn deserialize_cached(engine: &wasmtime::Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was written by `Component::serialize` of an engine with the same
    // compatibility hash, into the agent's own cache directory, which `trusted` checked
    // belongs to this user and no one else may write.
    unsafe { Component::deserialize_file(engine, path) }
}

/// The user the agent runs as.
#[cfg(unix)]
#[expect(unsafe_code, reason = "std has no safe geteuid")]
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

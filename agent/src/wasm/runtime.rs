//! The wasmtime engine shared by every connector, the epoch clock that enforces time
//! budgets, and the on-disk cache of compiled components.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the epoch advances; time budgets are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// One engine for the agent, with epoch interruption on and a ticker thread.
pub struct Runtime {
    pub engine: Engine,
    cache_dir: Option<PathBuf>,
}

impl Runtime {
    /// Build the engine; compiled components are cached under `cache_dir` when given.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
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
        Ok(Arc::new(Self { engine, cache_dir }))
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
        if cached.exists() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the
            // same compatibility hash, into the agent's own cache directory.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
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
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{key}.tmp{}", std::process::id()));
    std::fs::write(&tmp, c.serialize()?)?;
    // Atomic publish: a concurrent reader never sees a half-written entry.
    std::fs::rename(&tmp, dir.join(key))?;
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

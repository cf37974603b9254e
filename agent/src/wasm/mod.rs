//! WebAssembly connectors: components written against `wit/v0.2/plugin.wit` (or the 0.1
//! contract in `wit/plugin.wit`), run in a sandbox.
//!
//! | file | job |
//! |---|---|
//! | `runtime.rs` | the engine, the epoch clock, the owner-only cache of compiled components |
//! | `instance.rs` | one instance on a thread of its own: calls, time budgets, failures |
//! | `limits.rs` | what an instance may take: one memory, tables, instances, log lines |
//! | `grants.rs` | which directories and files may be granted, and single-file copies |
//! | `network/` | network grants: TCP and HTTP held to `allow_tcp` and `allow_http`, waits bounded |
//! | `config.rs` | `[sources.NAME]` and `[transforms.NAME]` of `type = "wasm"` |
//! | `source.rs`, `transform.rs` | the supervisors that run, restart and give up on plugins |
//! | `restart.rs` | the restart backoff and give-up rule |
//! | `arrow.rs` | typed columns and JSON lines to Arrow and back |
//! | `types.rs` | column types as connectors write them (`list<utf8>`) and their Arrow types |
//! | `compat.rs` | components built against `sluice:plugin@0.1.0`, adapted to 0.2 |
//! | `bench.rs`, `scaffold.rs` | `plugin bench` and `plugin new` |

mod arrow;
pub mod bench;
mod compat;
mod config;
mod grants;
mod instance;
mod limits;
pub mod network;
mod restart;
mod runtime;
pub mod scaffold;
mod source;
mod transform;
mod types;

use std::time::Duration;

use wasmtime::component::Component;

pub use arrow::schema_from_spec;
pub use config::{OnError, PluginSettings, WasmSourceConfig, WasmTransformConfig};
pub use instance::Sandbox;
pub use runtime::Runtime;
pub use source::{SourceLink, run_source};
pub use transform::{TransformStage, run_transforms};

/// Host bindings generated from the WIT packages: `sluice:plugin@0.3.0` (`wit/v0.3`) and
/// `@0.2.0` (`wit/v0.2`), whose types (the same in both) the agent works with, and `@0.1.0`
/// (`wit/`), which older components were built against (adapted by `compat.rs`). One world
/// per plugin kind, sharing `types` and `host`.
pub(crate) mod bindings {
    /// `sluice:plugin@0.3.0`: 0.2.0 and `connector.committed`. Its types are 0.2.0's.
    pub mod v3 {
        wasmtime::component::bindgen!({
            path: "../wit/v0.3",
            world: "source",
            with: {
                "sluice:plugin/types": super::v2::sluice::plugin::types,
            },
        });

        mod transform_world {
            wasmtime::component::bindgen!({
                path: "../wit/v0.3",
                world: "transform",
                with: {
                    "sluice:plugin/types": super::super::v2::sluice::plugin::types,
                    "sluice:plugin/host": super::sluice::plugin::host,
                },
            });
        }
        pub use transform_world::Transform;
    }

    /// `sluice:plugin@0.2.0`.
    pub mod v2 {
        wasmtime::component::bindgen!({
            path: "../wit/v0.2",
            world: "source",
        });

        mod transform_world {
            wasmtime::component::bindgen!({
                path: "../wit/v0.2",
                world: "transform",
                with: {
                    "sluice:plugin/types": super::sluice::plugin::types,
                    "sluice:plugin/host": super::sluice::plugin::host,
                },
            });
        }
        pub use transform_world::Transform;
    }

    /// `sluice:plugin@0.1.0`.
    pub mod v1 {
        wasmtime::component::bindgen!({
            path: "../wit",
            world: "source",
        });

        mod transform_world {
            wasmtime::component::bindgen!({
                path: "../wit",
                world: "transform",
                with: {
                    "sluice:plugin/types": super::sluice::plugin::types,
                    "sluice:plugin/host": super::sluice::plugin::host,
                },
            });
        }
        pub use transform_world::Transform;
    }

    /// The types the agent works with: 0.2's.
    pub use v2::sluice::plugin::types;
}

/// Which world a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Exports the connector interface: polled for rows (`[sources.NAME] type = "wasm"`).
    Source,
    /// Exports the transformer interface: maps each batch of a source to one batch
    /// (`[transforms.NAME]`).
    Transform,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Source => "source",
            PluginKind::Transform => "transform",
        })
    }
}

/// What a source exports, newest version first.
const CONNECTOR_EXPORTS: [&str; 3] = [
    "sluice:plugin/connector@0.3.0",
    "sluice:plugin/connector@0.2.0",
    "sluice:plugin/connector@0.1.0",
];
/// What a transform exports, newest version first.
const TRANSFORMER_EXPORTS: [&str; 3] = [
    "sluice:plugin/transformer@0.3.0",
    "sluice:plugin/transformer@0.2.0",
    "sluice:plugin/transformer@0.1.0",
];

/// The names a component exports.
fn exports(engine: &wasmtime::Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Which world a compiled component implements, or why it fits neither.
pub fn kind(runtime: &Runtime, component: &Component) -> Result<PluginKind, String> {
    let exports = exports(&runtime.engine, component);
    let has = |names: &[&str]| exports.iter().any(|e| names.contains(&e.as_str()));
    if has(&CONNECTOR_EXPORTS) {
        Ok(PluginKind::Source)
    } else if has(&TRANSFORMER_EXPORTS) {
        Ok(PluginKind::Transform)
    } else {
        Err(format!(
            "implements neither the sluice:plugin/source world nor the transform world: it \
             exports none of {} (exports: {})",
            CONNECTOR_EXPORTS
                .iter()
                .chain(&TRANSFORMER_EXPORTS)
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if exports.is_empty() {
                "none".to_string()
            } else {
                exports.join(", ")
            }
        ))
    }
}

/// What `sluice-agent plugin check` reports about a component.
pub struct CheckReport {
    /// SHA-256 of the component file, in hex: what the agent logs when it loads it.
    pub digest: String,
    /// The world the component implements.
    pub kind: PluginKind,
    /// Interfaces the component imports (`wasi:clocks/...`), as the component names them.
    pub imports: Vec<String>,
    /// The version of `sluice:plugin` it is built against (`0.2.0`).
    pub version: String,
    /// The schema a source declares, or a transform's output for the given input;
    /// none for a transform checked without an input schema.
    pub schema: Option<arrow_schema::SchemaRef>,
    /// Network uses the host refused while it ran (`tcp 10.0.0.5:5432`,
    /// `http https://x:443/y`): grants it lacks.
    pub refused: Vec<String>,
}

/// Load a component, check it implements the `source` or the `transform` world (the one
/// `want`ed, when given), open it with `config` and `grants` (a transform with the `input`
/// columns, when given; a source is then polled `polls` times) and report its schema, the
/// interfaces it imports and the network uses no grant covered.
pub fn check(
    runtime: &Runtime,
    path: &std::path::Path,
    config: &str,
    input: Option<&arrow_schema::Schema>,
    want: Option<PluginKind>,
    grants: network::Grants,
    polls: u32,
) -> anyhow::Result<CheckReport> {
    let (component, info) = runtime.load(path)?;
    let ty = component.component_type();
    let imports: Vec<String> = ty
        .imports(&runtime.engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let kind = kind(runtime, &component).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(want) = want
        && want != kind
    {
        anyhow::bail!("{} is a {kind}, not a {want}", path.display());
    }
    let sandbox = instance::Sandbox {
        grants,
        ..instance::Sandbox::bare(256 << 20, Duration::from_secs(10))
    };
    let at = |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: {e}", path.display());
    let cols = match kind {
        PluginKind::Source => {
            let mut inst = instance::Instance::<instance::Source>::new(
                runtime,
                &component,
                "check".into(),
                &sandbox,
            )
            .map_err(|e| at(&e))?;
            let cols = inst.open(config, None).map_err(|e| at(&e))?;
            for _ in 0..polls {
                if inst.poll(64).map_err(|e| at(&e))?.finished {
                    break;
                }
            }
            Some(cols)
        }
        PluginKind::Transform => {
            let mut inst = instance::Instance::<instance::Transform>::new(
                runtime,
                &component,
                "check".into(),
                &sandbox,
            )
            .map_err(|e| at(&e))?;
            match input {
                Some(input) => {
                    let input = arrow::columns(input).map_err(|e| at(&e))?;
                    Some(inst.open(config, &input).map_err(|e| at(&e))?)
                }
                None => None,
            }
        }
    };
    let schema = cols
        .map(|c| arrow::schema(&c))
        .transpose()
        .map_err(|e| at(&e))?;
    let version = exports(&runtime.engine, &component)
        .iter()
        .find_map(|e| {
            e.strip_prefix("sluice:plugin/connector@")
                .or_else(|| e.strip_prefix("sluice:plugin/transformer@"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    Ok(CheckReport {
        digest: info.digest,
        kind,
        imports,
        version,
        refused: runtime.meter(&"check".into()).refusals(),
        schema,
    })
}

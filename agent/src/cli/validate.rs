//! `sluice-agent validate`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{AgentConfig, SourceConfig, TransformConfig};
use crate::wasm::{self, PluginSettings as _};

/// Check a config file, compile its plugins and print the schema each stream lands.
pub fn validate(path: PathBuf) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&path)?;
    let mut runtime = None;
    let mut runtime = || -> anyhow::Result<Arc<wasm::Runtime>> {
        match &mut runtime {
            Some(r) => Ok(Arc::clone(r)),
            None => Ok(Arc::clone(runtime.insert(wasm::Runtime::new(
                None,
                wasm::network::Network::new(&cfg.network)?,
                None,
            )?))),
        }
    };
    // Compile every plugin, so a wrong path or a file that is no component shows now, and
    // follow each source's rows through its transforms to the schema its stream lands.
    for (name, source) in &cfg.sources {
        let mut streams: Vec<(String, Option<arrow_schema::SchemaRef>)> = match source {
            SourceConfig::Simulator(sim) => {
                match &sim.scenario {
                    Some(file) => {
                        println!("  source {name} (simulator, scenario {})", file.display())
                    }
                    None => println!("  source {name} (simulator)"),
                }
                sim.stream_names(name)
                    .into_iter()
                    .zip(sim.schemas().into_iter().map(Some))
                    .collect()
            }
            SourceConfig::Wasm(w) => {
                println!("  source {name} (wasm {})", w.plugin.display());
                print_grants(&w.sandbox());
                let runtime = runtime()?;
                let (component, _) = runtime
                    .load(&w.plugin)
                    .with_context(|| format!("sources.{name}.plugin"))?;
                match wasm::kind(&runtime, &component) {
                    Ok(wasm::PluginKind::Source) => {}
                    Ok(wasm::PluginKind::Transform) => anyhow::bail!(
                        "sources.{name}.plugin: {} is a transform, not a source",
                        w.plugin.display()
                    ),
                    Err(e) => anyhow::bail!("sources.{name}.plugin: {}: {e}", w.plugin.display()),
                }
                source
                    .streams(name)
                    .into_iter()
                    .map(|s| (s, None))
                    .collect()
            }
        };
        // Validation allows transforms on single-stream sources only.
        for t in source.transforms() {
            let TransformConfig::Wasm(tc) = &cfg.transforms[t];
            println!("    | transform {t} (wasm {})", tc.plugin.display());
            print_grants(&tc.sandbox());
            let rt = runtime()?;
            for (_, schema) in &mut streams {
                let report = wasm::check(
                    &rt,
                    &tc.plugin,
                    &tc.config_json(),
                    schema.as_deref(),
                    Some(wasm::PluginKind::Transform),
                    tc.sandbox().grants,
                    0,
                )
                .with_context(|| format!("transforms.{t}.plugin"))?;
                *schema = report.schema;
            }
        }
        for (stream, schema) in streams {
            println!("    -> stream {stream}");
            match schema {
                Some(schema) => {
                    for f in schema.fields() {
                        println!("         {}: {}", f.name(), f.data_type());
                    }
                }
                None => println!("         (schema declared by the plugin when it starts)"),
            }
        }
    }
    println!("{}: OK (agent {:?})", path.display(), cfg.agent.id);
    Ok(())
}

/// What a plugin may reach beyond its own memory: files, directories, environment, network.
fn print_grants(s: &wasm::Sandbox) {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let paths = |p: &[PathBuf]| p.iter().map(|p| p.display().to_string()).collect();
    println!(
        "      grants: tcp {}; http {}; files {}; dirs {}; env {}",
        list(s.grants.tcp.iter().map(ToString::to_string).collect()),
        list(s.grants.http.iter().map(ToString::to_string).collect()),
        list(paths(&s.allow_files)),
        list(paths(&s.allow_dirs)),
        list(s.allow_env.clone()),
    );
}

//! `sluice-agent`: the Sluice edge agent.

mod api_client;
mod batcher;
mod config;
mod kafka;
mod metrics;
mod pipeline;
mod shipper;
mod simulate;
mod simulator;
mod source;
mod tagged;
mod tap;
mod tls;
mod top;
mod wal;
mod wal_bench;
mod wasm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_ops::LogFormat;
use tokio::sync::watch;

use crate::config::{AgentConfig, SourceConfig, TransformConfig};
use crate::wasm::PluginSettings;

/// Sluice edge agent: runs sources, batches their records into Arrow and ships them to a
/// Sluice processor over QUIC.
#[derive(Debug, Parser)]
#[command(name = "sluice-agent", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until its sources are exhausted or it is stopped (Ctrl-C, SIGTERM).
    Run {
        /// Agent config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a config file and print what it would run.
    Validate {
        /// Agent config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Work with WebAssembly connector plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run a simulation scenario (or an agent's simulator source) as fast as possible into
    /// JSON lines or Parquet, without shipping anything.
    Simulate(simulate::SimulateArgs),
    /// Measure the write-ahead log's append throughput with group-committed fsyncs.
    BenchWal(wal_bench::WalBenchArgs),
    /// A live view of a running agent: per source, stream and plugin its rates, buffer and
    /// errors, refreshed every interval.
    Top(top::TopArgs),
    /// Print a sample of the records flowing through a running agent's stream, as JSON lines.
    Tap(tap::TapArgs),
    /// Make a bearer token for the agent's HTTP endpoint: prints the token once, and the
    /// `[[api.tokens]]` entry (its digest and roles) to add to the config.
    Token(sluice_ops::TokenArgs),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Check that a component implements the sluice:plugin source or transform world;
    /// print its schema and the interfaces (capabilities) it imports.
    Check {
        /// The component file.
        file: PathBuf,
        /// The plugin's config, as JSON, handed to `open`.
        #[arg(long, default_value = "{}")]
        config: String,
        /// For a transform: its input columns, as `name:type,...` (boolean, int64, float64,
        /// utf8, timestamp-micros); then its output schema is shown.
        #[arg(long)]
        input: Option<String>,
    },
    /// Create a connector project that builds and passes `plugin check` as generated.
    New {
        /// Language of the connector.
        #[arg(long, value_enum)]
        lang: wasm::scaffold::Lang,
        /// Name of the connector (and its directory).
        name: String,
        /// Where to create the directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Measure rows/s on one core: the native simulator, then a connector built like
    /// plugins/examples/counter on its typed-column and JSON-lines paths, and the cost of a
    /// call.
    Bench {
        /// The counter component (plugins/dist/counter.wasm).
        file: PathBuf,
        /// Rows per path.
        #[arg(long, default_value_t = 5_000_000)]
        rows: u64,
        /// Rows per call.
        #[arg(long, default_value_t = 8192)]
        batch: u32,
        /// Also measure a transform built like plugins/examples/redact
        /// (plugins/dist/redact.wasm).
        #[arg(long)]
        transform: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice_ops::init_logging(cli.log_format);
    // One crypto provider for the whole process (rustls needs exactly one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    sluice_ops::run(dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => run(config).await,
        Command::Validate { config } => validate(config),
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    input,
                },
        } => plugin_check(file, config, input),
        Command::Plugin {
            command:
                PluginCommand::Bench {
                    file,
                    rows,
                    batch,
                    transform,
                },
        } => plugin_bench(file, rows, batch, transform),
        Command::Plugin {
            command: PluginCommand::New { lang, name, dir },
        } => {
            let (root, build) = wasm::scaffold::create(lang, &name, &dir)?;
            println!(
                "created {}
build it with:
  cd {} && {build}",
                root.display(),
                root.display()
            );
            Ok(())
        }
        Command::Simulate(args) => simulate::run(args),
        Command::BenchWal(args) => wal_bench::run(args).await,
        Command::Top(args) => top::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Token(args) => Ok(sluice_ops::print_new_token(&args)?),
    }
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&path)?;
    let health = sluice_ops::health_for(cfg.api.as_ref());
    let metrics = metrics::Metrics::new(health.clone());
    let taps = tap::Taps::new(cfg.sources.iter().flat_map(|(n, s)| s.streams(n)));
    if let Some(api) = &cfg.api {
        let routes = sluice_ops::Routes {
            read: taps.router(),
            ..Default::default()
        };
        let addr = sluice_ops::serve_api(api, metrics.clone(), health.clone(), routes)
            .await
            .with_context(|| format!("cannot listen on api.listen {}", api.listen))?;
        tracing::info!(%addr, "agent API listening");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        sluice_ops::stop_signal().await;
        tracing::info!("stop requested; draining unacknowledged batches");
        let _ = stop_tx.send(true);
    });
    tracing::info!(agent = %cfg.agent.id, sources = cfg.sources.len(), "agent starting");
    let summary = pipeline::run(cfg, metrics.clone(), taps, stop_rx).await?;
    tracing::info!(
        rows = summary.rows_generated,
        batches_acked = summary.batches_acked,
        batches_rejected = summary.batches_rejected,
        batches_unshipped = summary.batches_unshipped,
        "agent finished"
    );
    let live = health.live();
    if !live.ok {
        anyhow::bail!("finished unhealthy:\n{}", live.problems.join("\n"));
    }
    Ok(())
}

fn validate(path: PathBuf) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&path)?;
    let mut runtime = None;
    let mut runtime = || -> anyhow::Result<Arc<wasm::Runtime>> {
        match &mut runtime {
            Some(r) => Ok(Arc::clone(r)),
            None => Ok(Arc::clone(runtime.insert(wasm::Runtime::new(None)?))),
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
            let rt = runtime()?;
            for (_, schema) in &mut streams {
                let report = wasm::check(
                    &rt,
                    &tc.plugin,
                    &tc.config_json(),
                    schema.as_deref(),
                    Some(wasm::PluginKind::Transform),
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

fn plugin_bench(
    file: PathBuf,
    rows: u64,
    batch: u32,
    transform: Option<PathBuf>,
) -> anyhow::Result<()> {
    let runtime = wasm::Runtime::new(None)?;
    let r = wasm::bench::run(&runtime, &file, rows, batch)?;
    let native = r.native.rows_per_sec();
    println!(
        "one core, {batch} rows per call, 5 columns (timestamp, int64, string, float64 with nulls, bool)"
    );
    for f in [&r.native, &r.typed, &r.json] {
        println!(
            "  {:<22} {:>12.0} rows/s  ({} rows in {:.2} s, {:.2}x native)",
            f.name,
            f.rows_per_sec(),
            f.rows,
            f.elapsed.as_secs_f64(),
            native / f.rows_per_sec()
        );
    }
    println!(
        "  per-call overhead       {:>9.2} µs (poll returning one row)",
        r.call_overhead.as_secs_f64() * 1e6
    );
    if let Some(t) = transform {
        let f = wasm::bench::transform(&runtime, &t, rows, batch)?;
        println!(
            "  {:<22} {:>12.0} rows/s in  ({} rows in {:.2} s; keep 90%, hash a string, add a column)",
            f.name,
            f.rows_per_sec(),
            f.rows,
            f.elapsed.as_secs_f64()
        );
    }
    println!(
        "  targets: typed >= 2,000,000 rows/s and within 1.5x of native; JSON lines >= 300,000 rows/s"
    );
    Ok(())
}

fn plugin_check(file: PathBuf, config: String, input: Option<String>) -> anyhow::Result<()> {
    let input = input
        .map(|spec| wasm::schema_from_spec(&spec))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--input: {e}"))?;
    let runtime = wasm::Runtime::new(None)?;
    let report = wasm::check(&runtime, &file, &config, input.as_ref(), None)?;
    println!(
        "{}: OK, implements sluice:plugin/{}@0.1.0",
        file.display(),
        report.kind
    );
    println!("  sha256: {}", report.digest);
    match &report.schema {
        Some(schema) => {
            println!(
                "  {}:",
                match report.kind {
                    wasm::PluginKind::Source => "schema",
                    wasm::PluginKind::Transform => "output schema",
                }
            );
            for f in schema.fields() {
                let null = if f.is_nullable() { "" } else { " not null" };
                println!("    {}: {}{null}", f.name(), f.data_type());
            }
        }
        None => {
            println!("  output schema: depends on the input; pass --input name:type,... to see it")
        }
    }
    println!("  imports (capabilities it may ask for; granted only by config):");
    for i in &report.imports {
        println!("    {i}");
    }
    Ok(())
}

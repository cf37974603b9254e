//! The command line: `sluice-agent COMMAND`.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the commands and their arguments |
//! | `run.rs` | `run`: the agent, with its HTTP endpoint and stop signals |
//! | `validate.rs` | `validate`: check a config and show what each source lands |
//! | `plugin.rs` | `plugin check`, `plugin new`, `plugin bench` |
//! | `simulate.rs` | `simulate`: a scenario into files, and `simulate --bench` |
//! | `bench_wal.rs` | `bench-wal`: the write-ahead log's append throughput |
//! | `top.rs`, `tap.rs` | live views of a running agent |
//! | `api_client.rs` | the small HTTP client `top` and `tap` use |

mod api_client;
mod bench_wal;
mod plugin;
mod run;
mod simulate;
mod tap;
mod top;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_ops::LogFormat;

/// Sluice edge agent: runs sources, batches their records into Arrow and ships them to a
/// Sluice processor over QUIC.
#[derive(Debug, Parser)]
#[command(name = "sluice-agent", version, propagate_version = true)]
pub struct Cli {
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
    BenchWal(bench_wal::WalBenchArgs),
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
        /// A TCP connection to grant, `host:port` (as `allow_tcp`); repeatable.
        #[arg(long = "allow-tcp")]
        allow_tcp: Vec<String>,
        /// An HTTP URL prefix to grant, as `allow_http`; repeatable.
        #[arg(long = "allow-http")]
        allow_http: Vec<String>,
        /// For a source: call `poll` this many times after `open` (connectors often reach
        /// the network only then); network uses no grant covers are listed.
        #[arg(long, default_value_t = 0)]
        poll: u32,
    },
    /// Create a connector project that builds and passes `plugin check` as generated.
    New {
        /// Language of the connector.
        #[arg(long, value_enum)]
        lang: crate::wasm::scaffold::Lang,
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

/// Run the command line: logging, the crypto provider, then the command.
pub fn start(cli: Cli) -> ExitCode {
    sluice_ops::init_logging(cli.log_format);
    // One crypto provider for the whole process (rustls needs exactly one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    sluice_ops::run(dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => run::run(config).await,
        Command::Validate { config } => validate::validate(config),
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    input,
                    allow_tcp,
                    allow_http,
                    poll,
                },
        } => plugin::check(file, config, input, &allow_tcp, &allow_http, poll),
        Command::Plugin {
            command:
                PluginCommand::Bench {
                    file,
                    rows,
                    batch,
                    transform,
                },
        } => plugin::bench(file, rows, batch, transform),
        Command::Plugin {
            command: PluginCommand::New { lang, name, dir },
        } => plugin::new(lang, &name, &dir),
        Command::Simulate(args) => simulate::run(args),
        Command::BenchWal(args) => bench_wal::run(args).await,
        Command::Top(args) => top::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Token(args) => Ok(sluice_ops::print_new_token(&args)?),
    }
}

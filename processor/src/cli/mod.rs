//! The command line: `sluice-processor COMMAND`.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the commands and their arguments; `serve`, `validate`, `certs`, `query`, `tables` |
//! | `maintain.rs` | `maintain`: compaction, expiry and orphan removal on demand |
//! | `models.rs` | `models list` and `models run` |
//! | `quarantine.rs` | `quarantine list` and `quarantine replay` |
//! | `demo.rs` | `demo`: the processor and an agent on embedded defaults |

pub mod demo;
mod maintain;
mod models;
mod quarantine;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_ops::LogFormat;

use crate::config::ProcessorConfig;
use crate::http::query;
use crate::lake;
use crate::receive::certs;
use crate::server;

/// What `maintain` does.
#[derive(Debug, Subcommand)]
enum MaintainTask {
    /// Bin-pack every small data file, whatever its size tier, into files of the target size
    /// (one `replace` snapshot per bin; history is kept). `serve`'s passes are size-tiered.
    Compact {
        /// Only this table (`namespace.table`); default: every table.
        #[arg(long)]
        table: Option<String>,
        /// Size of the files written.
        #[arg(long, default_value = "128MiB")]
        target_file_size: bytesize::ByteSize,
        /// Merge bins whose row groups average more than this by copying the encoded row
        /// groups; smaller ones are decoded and re-encoded into larger row groups.
        #[arg(long, default_value = "4MiB")]
        copy_row_groups_above: bytesize::ByteSize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Expire snapshots older than a duration or beyond a count, keeping the last few and
    /// what the progress marks are read from and models still read; then remove the files
    /// only the expired snapshots used. Limits not given come from `[maintenance]`.
    Expire {
        #[arg(long)]
        table: Option<String>,
        /// Expire snapshots older than this.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        /// Keep at most this many snapshots.
        #[arg(long)]
        max_snapshots: Option<usize>,
        /// Keep at least this many snapshots.
        #[arg(long)]
        retain_last: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Delete files no snapshot references any more, older than a safety window.
    Orphans {
        #[arg(long)]
        table: Option<String>,
        /// Leave files younger than this (a commit in flight may own them).
        #[arg(long, default_value = "3d", value_parser = humantime::parse_duration)]
        older_than: Duration,
        #[arg(long)]
        json: bool,
    },
}

/// What `models` does.
#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List the models in run order: mode, schedule, inputs, rows, and input snapshots not
    /// yet read.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run models once, in dependency order, each until it has caught up with its inputs.
    Run {
        /// Only these models (repeatable); default: all.
        #[arg(long = "model")]
        models: Vec<String>,
        /// Drop the models' target and quarantine tables first and rebuild them from the
        /// inputs (after a schema change, or when a watermark's snapshot has expired).
        #[arg(long)]
        rebuild: bool,
        #[arg(long)]
        json: bool,
    },
}

/// What `quarantine` does.
#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// List the batches kept in quarantine tables: stream, agent, sequence, rows, reason.
    List {
        /// Only this stream's quarantine table; default: every one.
        #[arg(long)]
        stream: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Land quarantined batches in their tables now that they fit (after a config change
    /// such as `schema = "evolve"` or `coerce = true`), each exactly once, in each agent's
    /// order. Exits non-zero if some still do not fit; they stay for a later replay.
    Replay {
        /// Only this stream's quarantine table; default: every one.
        #[arg(long)]
        stream: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How `query` prints its result.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum QueryFormat {
    Table,
    Json,
    Csv,
}

/// Sluice processor: receives Arrow batches from agents over QUIC and lands them exactly
/// once in bronze Apache Iceberg tables.
#[derive(Debug, Parser)]
#[command(name = "sluice-processor", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive batches and land them until stopped (Ctrl-C, SIGTERM).
    Serve {
        /// Processor config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a config file without starting anything.
    Validate {
        /// Processor config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Make a bearer token for the HTTP endpoint: prints the token once, and the
    /// `[[api.tokens]]` entry (its digest and roles) to add to the config.
    Token(sluice_ops::TokenArgs),
    /// Manage the development certificate authority.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run SQL over the lake (DataFusion) and print the result.
    Query {
        /// Processor config file (TOML) naming the catalog.
        #[arg(short, long)]
        config: PathBuf,
        /// The SQL statement; tables are `<namespace>.<table>`, e.g. `bronze.<stream>`.
        sql: String,
        /// Read every table as it was at this time (RFC 3339, or epoch milliseconds).
        #[arg(long)]
        as_of: Option<String>,
        /// Read these tables at these snapshots: `bronze.cpu=SNAPSHOT_ID,...`.
        #[arg(long)]
        snapshot: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
        format: QueryFormat,
    },
    /// Table maintenance on demand: compaction, snapshot expiry, orphan-file cleanup.
    Maintain {
        /// Processor config file (TOML) naming the catalog.
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        task: MaintainTask,
    },
    /// Run or list the SQL models (silver and gold tables) of a config.
    Models {
        /// Processor config file (TOML) with `[models.NAME]` sections.
        #[arg(short, long)]
        config: PathBuf,
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Batches that did not fit their bronze tables: list them, or replay them.
    Quarantine {
        /// Processor config file (TOML) naming the catalog.
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: QuarantineCommand,
    },
    /// List the lake's tables with rows, data files, bytes, snapshots and last commit.
    Tables {
        /// Processor config file (TOML) naming the catalog.
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the demo: a processor with SQL models and an agent (a scenario simulation and a
    /// WebAssembly connector with an edge transform) on loopback; then row counts, a query
    /// over gold and the status page, served until Ctrl-C.
    Demo {
        /// Working directory for certificates, configs and data (data is reset each run).
        #[arg(long, default_value = "sluice-demo")]
        dir: PathBuf,
        /// Where the compiled connector components are (`counter.wasm`, `redact.wasm`).
        #[arg(long, default_value = "plugins/dist")]
        plugins: PathBuf,
        /// Path of the sluice-agent binary (default: next to this binary).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Give up if the lake has not caught up by then.
        #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Stop once everything is shown, instead of serving the status page until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA, a server certificate and agent certificates.
    Init {
        /// Directory to write the PEM files to.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// DNS names and IP addresses the server certificate is valid for.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
        /// Agent ids to issue certificates for (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Days the server and agent certificates are valid (the CA: ten years).
        #[arg(long, default_value_t = certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate for one more agent from an existing CA.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Agent id (becomes the certificate's common name).
        agent: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = certs::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Revoke an agent's certificate: list it in the CA's revocation list (crl.pem), which a
    /// processor reads at start from quic.crl and kafka.crl.
    Revoke {
        /// Directory holding ca.pem, ca.key and the agent's certificate.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Agent id whose current certificate is revoked.
        agent: String,
    },
}

// The system allocator, not mimalloc: over thousands of commits mimalloc kept ~150 MiB of
// RSS for a live heap of ~8 MiB and kept growing, where glibc settles at ~40 MiB
// (docs/PERFORMANCE.md, "Running for a month").
/// Run the command line: logging, the crypto provider, then the command.
pub fn start(cli: Cli) -> ExitCode {
    sluice_ops::init_logging(cli.log_format);
    // One crypto provider for the whole process (rustls needs exactly one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    sluice_ops::run(dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve(config).await,
        Command::Validate { config } => {
            let cfg = ProcessorConfig::load(&config)?;
            println!(
                "{}: OK (catalog {}, warehouse {})",
                config.display(),
                cfg.catalog_uri_shown(),
                cfg.warehouse()
            );
            for m in cfg.model_graph()?.order {
                println!(
                    "  model {} ({}, {}) reads {}; quarantine {}",
                    m.name,
                    format!("{:?}", m.cfg.mode).to_lowercase(),
                    m.cfg.schedule,
                    m.inputs.join(", "),
                    m.quarantine
                );
            }
            Ok(())
        }
        Command::Token(args) => Ok(sluice_ops::print_new_token(&args)?),
        Command::Certs { command } => match command {
            CertsCommand::Init {
                dir,
                server_names,
                agents,
                days,
                force,
            } => {
                certs::init(&dir, &server_names, &agents, days, force)?;
                println!(
                    "wrote CA, server and {} agent certificate(s) to {}",
                    agents.len(),
                    dir.display()
                );
                Ok(())
            }
            CertsCommand::Issue { dir, agent, days } => {
                certs::issue(&dir, &agent, days)?;
                let (cert, key) = certs::agent_files(&dir, &agent);
                println!("wrote {} and {}", cert.display(), key.display());
                Ok(())
            }
            CertsCommand::Revoke { dir, agent } => {
                let (serial, count) = certs::revoke(&dir, &agent)?;
                println!(
                    "revoked {agent}'s certificate (serial {serial}); {} lists {count} \
                     certificate(s); restart processors to apply it",
                    dir.join(certs::CRL).display()
                );
                Ok(())
            }
        },
        Command::Query {
            config,
            sql,
            as_of,
            snapshot,
            format,
        } => {
            let as_of = query::AsOf::parse(as_of.as_deref(), snapshot.as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
            let cfg = ProcessorConfig::load(&config)?;
            let catalog = lake::open(&cfg.catalog_settings()).await?;
            // The same memory and time limits as the API; the threads are this process's.
            let limits = query::Limits::new(&cfg.query, false)?;
            let name = cfg.catalog_name().to_string();
            let (batches, _) = limits
                .run(|env| async move {
                    let ctx = query::session(catalog, &name, &as_of, env).await?;
                    query::run(&ctx, &sql, None).await
                })
                .await?;
            match format {
                QueryFormat::Table => println!("{}", query::pretty(&batches)?),
                QueryFormat::Json => println!("{}", query::json_rows(&batches)?),
                QueryFormat::Csv => {
                    use std::io::Write;
                    std::io::stdout().write_all(&query::csv(&batches)?)?;
                }
            }
            Ok(())
        }
        Command::Maintain { config, task } => maintain::maintain(config, task).await,
        Command::Models { config, command } => models::run_models(config, command).await,
        Command::Quarantine { config, command } => quarantine::run(config, command).await,
        Command::Tables { config, json } => {
            let cfg = ProcessorConfig::load(&config)?;
            let catalog = lake::open(&cfg.catalog_settings()).await?;
            let storage = lake::storage::ObjectStorage::new(cfg.catalog.s3.clone());
            let tables = crate::lake::tables(catalog.as_ref(), &storage).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tables)?);
                return Ok(());
            }
            println!(
                "{:<32} {:>12} {:>7} {:>14} {:>9}  last commit",
                "table", "rows", "files", "bytes", "snapshots"
            );
            for t in tables {
                println!(
                    "{:<32} {:>12} {:>7} {:>14} {:>9}  {}",
                    t.table,
                    t.rows,
                    t.data_files,
                    t.bytes,
                    t.snapshots,
                    t.last_commit.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::Demo {
            dir,
            plugins,
            agent_bin,
            timeout,
            exit,
        } => {
            demo::run(demo::DemoOptions {
                dir,
                plugins,
                agent_bin,
                timeout,
                exit,
            })
            .await
        }
    }
}

async fn serve(config: PathBuf) -> anyhow::Result<()> {
    let cfg = ProcessorConfig::load(&config)?;
    let server = server::Server::start(&cfg).await?;
    sluice_ops::stop_signal().await;
    tracing::info!("stopping: committing buffered batches");
    server.shutdown().await;
    Ok(())
}

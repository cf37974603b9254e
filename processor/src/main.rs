//! `sluice-processor`: receives batches from Sluice agents and lands them exactly once in
//! bronze Apache Iceberg tables.

mod access;
mod api;
mod certs;
mod compaction;
mod concat;
mod config;
mod demo;
mod inflight;
mod json_topic;
mod kafka;
mod lake;
mod lander;
mod locks;
mod maintenance;
mod metrics;
mod models;
mod progress;
mod query;
mod quota;
mod receiver;
mod server;
mod signed;
mod status;
mod storage;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice_ops::LogFormat;

use crate::config::ProcessorConfig;

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
struct Cli {
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
    /// List the lake's tables with rows, data files, bytes, snapshots and last commit.
    Tables {
        /// Processor config file (TOML) naming the catalog.
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run the end-to-end demo: processor + agent on loopback, then row counts and a query.
    Demo {
        /// Working directory for certificates, configs and data (data is reset each run).
        #[arg(long, default_value = "sluice-demo")]
        dir: PathBuf,
        /// Rows per simulated source (default: the example config's totals).
        #[arg(long)]
        rows: Option<u64>,
        /// Path of the sluice-agent binary (default: next to this binary).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Give up if the agent has not finished by then.
        #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
        timeout: Duration,
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
fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let catalog = lake::open(&cfg).await?;
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
        Command::Maintain { config, task } => maintain(config, task).await,
        Command::Models { config, command } => run_models(config, command).await,
        Command::Tables { config, json } => {
            let cfg = ProcessorConfig::load(&config)?;
            let catalog = lake::open(&cfg).await?;
            let storage = storage::ObjectStorage::new(cfg.catalog.s3.clone());
            let tables = query::tables(catalog.as_ref(), &storage).await?;
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
            rows,
            agent_bin,
            timeout,
        } => {
            demo::run(demo::DemoOptions {
                dir,
                rows,
                agent_bin,
                timeout,
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

async fn maintain(config: PathBuf, task: MaintainTask) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = ProcessorConfig::load(&config)?;
    let catalog = lake::open(&cfg).await?;
    let swap = lake::CatalogSwap::open(&cfg)
        .await
        .context("cannot open the catalog database")?;
    let locks = locks::CommitLocks::default();
    let tables = |table: Option<String>| {
        let catalog = catalog.clone();
        async move {
            anyhow::Ok(match table {
                Some(t) => vec![
                    iceberg::TableIdent::from_strs(t.split('.'))
                        .with_context(|| format!("--table {t:?}: write namespace.table"))?,
                ],
                None => compaction::all_tables(catalog.as_ref()).await?,
            })
        }
    };
    match task {
        MaintainTask::Expire {
            table,
            older_than,
            max_snapshots,
            retain_last,
            json,
        } => {
            let m = &cfg.maintenance;
            let policy = lake::retention::Policy {
                older_than: older_than.unwrap_or(m.expire_older_than),
                max_snapshots: max_snapshots.unwrap_or(m.max_snapshots),
                retain_last: retain_last.unwrap_or(m.retain_last),
            };
            let mut reports = Vec::new();
            let pins = maintenance::model_pins(catalog.as_ref()).await?;
            for ident in tables(table).await? {
                let pinned = pins
                    .get(&format!("{}.{}", ident.namespace().join("."), ident.name()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let r = maintenance::expire(
                    catalog.as_ref(),
                    &swap,
                    &locks,
                    &ident,
                    &policy,
                    pinned,
                    &|| false,
                )
                .await
                .with_context(|| format!("expiring snapshots of {ident}"))?;
                if !json {
                    println!(
                        "{}: {} -> {} snapshots, {} files removed",
                        r.table, r.snapshots_before, r.snapshots_after, r.files_removed
                    );
                }
                reports.push(r);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(())
        }
        MaintainTask::Orphans {
            table,
            older_than,
            json,
        } => {
            let mut reports = Vec::new();
            for ident in tables(table).await? {
                let storage = storage::ObjectStorage::new(cfg.catalog.s3.clone());
                let r = maintenance::remove_orphans(
                    catalog.as_ref(),
                    &storage,
                    &locks,
                    &ident,
                    older_than,
                    &|| false,
                )
                .await
                .with_context(|| format!("removing orphan files of {ident}"))?;
                if !json {
                    println!(
                        "{}: {} files, {} referenced, {} orphans removed ({:.1} MB), {} younger than {:?} kept",
                        r.table,
                        r.files_seen,
                        r.referenced,
                        r.deleted,
                        r.bytes_deleted as f64 / 1e6,
                        r.too_young,
                        older_than
                    );
                }
                reports.push(r);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(())
        }
        MaintainTask::Compact {
            table,
            target_file_size,
            copy_row_groups_above,
            json,
        } => {
            let tables = tables(table).await?;
            let opts = compaction::CompactionOptions {
                copy_row_group_size: copy_row_groups_above.as_u64(),
                tier_fanout: None,
                ..compaction::CompactionOptions::new(
                    target_file_size.as_u64(),
                    cfg.lander.compression,
                )
            };
            let mut reports = Vec::new();
            for ident in tables {
                let bar = indicatif::ProgressBar::new(0);
                if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                }
                if let Ok(style) =
                    indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} bins")
                {
                    bar.set_style(style);
                }
                bar.set_message(format!("{}.{}", ident.namespace().join("."), ident.name()));
                let progress = |done: usize, total: usize| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                };
                let report = compaction::compact(
                    catalog.as_ref(),
                    &swap,
                    &locks,
                    &ident,
                    &opts,
                    &progress,
                    &|| false,
                )
                .await
                .with_context(|| format!("compacting {}", bar.message()))?;
                bar.finish_and_clear();
                if !json {
                    let secs = report.elapsed_ms as f64 / 1000.0;
                    println!(
                        "{}: {} -> {} data files ({} rewritten into {}; bins copied {}, re-encoded {}; {} rows, {:.1} MB read, {:.1} MB written, {:.1} MB/s, {} conflicts retried)",
                        report.table,
                        report.files_before,
                        report.files_after,
                        report.files_rewritten,
                        report.files_written,
                        report.bins_copied,
                        report.bins_reencoded,
                        report.rows_rewritten,
                        report.bytes_read as f64 / 1e6,
                        report.bytes_written as f64 / 1e6,
                        report.bytes_read as f64 / 1e6 / secs.max(1e-9),
                        report.conflicts
                    );
                }
                reports.push(report);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(())
        }
    }
}

async fn run_models(config: PathBuf, command: ModelsCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = ProcessorConfig::load(&config)?;
    let graph = cfg.model_graph()?;
    let catalog = lake::open(&cfg).await?;
    match command {
        ModelsCommand::List { json } => {
            let rows = models::describe(catalog.as_ref(), &graph).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<28} {:<12} {:<14} {:>12} {:>8}  inputs",
                "model", "mode", "schedule", "rows", "pending"
            );
            for r in rows {
                println!(
                    "{:<28} {:<12} {:<14} {:>12} {:>8}  {}",
                    r.model,
                    r.mode,
                    r.schedule,
                    r.rows.map_or("-".to_string(), |n| n.to_string()),
                    r.pending_snapshots,
                    r.inputs.join(", ")
                );
            }
            Ok(())
        }
        ModelsCommand::Run {
            models: only,
            rebuild,
            json,
        } => {
            for name in &only {
                if graph.get(name).is_none() {
                    anyhow::bail!("--model {name}: no such model in {}", config.display());
                }
            }
            let selected: Vec<&models::Model> = graph
                .order
                .iter()
                .filter(|m| only.is_empty() || only.contains(&m.name))
                .collect();
            let swap = lake::CatalogSwap::open(&cfg)
                .await
                .context("cannot open the catalog database")?;
            let runner = models::Runner::new(
                &cfg,
                catalog.clone(),
                swap,
                locks::CommitLocks::default(),
                metrics::Metrics::new(),
            );
            if rebuild {
                for m in &selected {
                    models::drop_tables(catalog.as_ref(), m).await?;
                }
            }
            let mut reports = Vec::new();
            for m in selected {
                let bar = indicatif::ProgressBar::new_spinner();
                if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                }
                let mut total = models::RunReport {
                    model: m.name.clone(),
                    ..Default::default()
                };
                loop {
                    bar.set_message(format!(
                        "{}: {} input snapshots, {} rows in, {} out",
                        m.name, total.snapshots_read, total.input_rows, total.output_rows
                    ));
                    bar.tick();
                    let r = runner
                        .run(m)
                        .await
                        .with_context(|| format!("model {}", m.name))?;
                    total.absorb(&r);
                    if !r.more {
                        break;
                    }
                }
                bar.finish_and_clear();
                if !json {
                    println!(
                        "{}: {} ({} input snapshots, {} rows in, {} rows out, {} quarantined{}) in {:.2} s",
                        total.model,
                        total.outcome,
                        total.snapshots_read,
                        total.input_rows,
                        total.output_rows,
                        total.quarantined_rows,
                        if total.failed_rules.is_empty() {
                            String::new()
                        } else {
                            format!(": {:?}", total.failed_rules)
                        },
                        total.elapsed_ms as f64 / 1000.0
                    );
                }
                reports.push(total);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(())
        }
    }
}

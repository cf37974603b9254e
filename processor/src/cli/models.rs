//! `sluice-processor models`.

use std::path::PathBuf;

use super::ModelsCommand;
use crate::config::ProcessorConfig;
use crate::lake;
use crate::lake::locks;
use crate::models;
use crate::telemetry::metrics;

/// List the models, or run them once.
pub async fn run_models(config: PathBuf, command: ModelsCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = ProcessorConfig::load(&config)?;
    let graph = cfg.model_graph()?;
    let catalog = lake::open(&cfg.catalog_settings()).await?;
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
            let swap = lake::CatalogSwap::open(&cfg.catalog_settings())
                .await
                .context("cannot open the catalog database")?;
            let runner = models::Runner::new(
                cfg.model_settings(),
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

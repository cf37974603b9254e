//! `sluice-processor quarantine`: what is quarantined, and replaying it.

use std::path::PathBuf;

use anyhow::Context;

use super::QuarantineCommand;
use crate::config::ProcessorConfig;
use crate::lake;
use crate::land::inflight::InFlight;
use crate::land::lander::Lander;
use crate::land::{quarantine, replay};
use crate::telemetry::metrics::Metrics;

/// List the quarantined batches, or replay them.
pub async fn run(config: PathBuf, command: QuarantineCommand) -> anyhow::Result<()> {
    let cfg = ProcessorConfig::load(&config)?;
    let catalog = lake::open(&cfg.catalog_settings()).await?;
    match command {
        QuarantineCommand::List { stream, json } => {
            let streams = streams(catalog.as_ref(), stream).await?;
            let mut rows = Vec::new();
            for s in streams {
                let Some(table) = replay::QuarantineTable::open(catalog.as_ref(), &s).await? else {
                    continue;
                };
                // A file at a time; the payloads are never decoded.
                let mut kept = Vec::new();
                for file in 0..table.files() {
                    kept.extend(table.read(file).await?.into_iter().map(|q| {
                        let key = (q.agent.clone(), q.seq);
                        let row = serde_json::json!({
                            "stream": s,
                            "agent": q.agent,
                            "seq": q.seq,
                            "rows": q.rows,
                            "reason": q.reason,
                        });
                        (key, row)
                    }));
                }
                kept.sort_by(|a, b| a.0.cmp(&b.0));
                kept.dedup_by(|a, b| a.0 == b.0);
                rows.extend(kept.into_iter().map(|(_, row)| row));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:<24} {:<24} {:>10} {:>8}  reason",
                "stream", "agent", "seq", "rows"
            );
            for r in rows {
                println!(
                    "{:<24} {:<24} {:>10} {:>8}  {}",
                    r["stream"].as_str().unwrap_or_default(),
                    r["agent"].as_str().unwrap_or_default(),
                    r["seq"],
                    r["rows"],
                    r["reason"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        QuarantineCommand::Replay { stream, json } => {
            let swap = lake::CatalogSwap::open(&cfg.catalog_settings())
                .await
                .context("cannot open the catalog database")?;
            let lander = Lander::start(
                catalog.clone(),
                swap,
                cfg.lander.clone(),
                cfg.streams(),
                Metrics::new(),
                lake::locks::CommitLocks::default(),
                InFlight::default(),
            );
            let mut reports = Vec::new();
            for s in streams(catalog.as_ref(), stream).await? {
                reports.push(replay::replay(catalog.as_ref(), &lander, &s).await?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                for r in &reports {
                    println!(
                        "{}: {} batches; {} replayed ({} rows), {} replayed before, {} still do not fit, {} held back behind them",
                        r.table,
                        r.batches,
                        r.replayed,
                        r.rows,
                        r.already,
                        r.refused.len(),
                        r.held_back
                    );
                    for (agent, seq, why) in &r.refused {
                        println!("  {agent} #{seq}: {why}");
                    }
                }
            }
            let stuck: usize = reports.iter().map(|r| r.refused.len()).sum();
            if stuck > 0 {
                anyhow::bail!("{stuck} quarantined batch(es) still do not fit their tables");
            }
            Ok(())
        }
    }
}

/// The streams named, or every stream with a quarantine table.
async fn streams(
    catalog: &dyn iceberg::Catalog,
    only: Option<String>,
) -> anyhow::Result<Vec<String>> {
    if let Some(s) = only {
        return Ok(vec![s]);
    }
    let ns = iceberg::NamespaceIdent::new(quarantine::NAMESPACE.to_string());
    if !catalog.namespace_exists(&ns).await? {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = catalog
        .list_tables(&ns)
        .await?
        .into_iter()
        .filter_map(|t| t.name().strip_prefix("bronze_").map(str::to_string))
        .collect();
    out.sort();
    Ok(out)
}

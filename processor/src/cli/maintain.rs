//! `sluice-processor maintain`.

use std::path::PathBuf;

use super::MaintainTask;
use crate::config::ProcessorConfig;
use crate::lake;
use crate::lake::locks;
use crate::lake::storage;
use crate::maintenance::{self, compaction};

/// Run one maintenance task over every table now.
pub async fn maintain(config: PathBuf, task: MaintainTask) -> anyhow::Result<()> {
    use anyhow::Context;
    let cfg = ProcessorConfig::load(&config)?;
    let catalog = lake::open(&cfg.catalog_settings()).await?;
    let swap = lake::CatalogSwap::open(&cfg.catalog_settings())
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

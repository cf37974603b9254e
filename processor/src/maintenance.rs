//! Snapshot expiry and orphan-file cleanup.
//!
//! Expiry rewrites metadata only (the `iceberg` crate's `expire_snapshots` action, committed
//! through the catalog's compare-and-swap like every commit). The current snapshot is never
//! expired, and it carries every progress token and model watermark forward (see
//! `rewrite.rs`), so expiry cannot lose one. Orphan cleanup then deletes files under the
//! table's location that no remaining snapshot or metadata file references, and only those
//! older than a safety window, so files of a commit in flight are never touched.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::spec::ManifestContentType;
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};

use iceberg::io::Storage;

use crate::locks::CommitLocks;
use crate::models::Watermark;
use crate::storage::ObjectStorage;

/// What expiry did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExpireReport {
    pub table: String,
    pub snapshots_before: usize,
    pub snapshots_after: usize,
}

/// Snapshots that models still read from, per input table (`namespace.table`): the
/// watermarks recorded in every table's current snapshot.
pub async fn model_pins(
    catalog: &dyn Catalog,
) -> Result<HashMap<String, Vec<Watermark>>, iceberg::Error> {
    let mut pins: HashMap<String, Vec<Watermark>> = HashMap::new();
    for ident in crate::compaction::all_tables(catalog).await? {
        // A quarantine's watermarks lag its model's (it is written only when rows fail);
        // the model's own watermarks protect everything a rerun reads.
        if ident.namespace().join(".") == crate::models::QUARANTINE_NAMESPACE {
            continue;
        }
        let table = catalog.load_table(&ident).await?;
        for (input, mark) in crate::models::watermarks(Some(&table)) {
            pins.entry(input).or_default().push(mark);
        }
    }
    Ok(pins)
}

/// Expire snapshots older than `older_than`, keeping at least `retain_last` per branch,
/// and every snapshot after the oldest of `pinned` (model watermarks: what came after them
/// the models have yet to read).
pub async fn expire(
    catalog: &dyn Catalog,
    locks: &CommitLocks,
    ident: &TableIdent,
    older_than: Duration,
    retain_last: usize,
    pinned: &[Watermark],
) -> Result<ExpireReport, iceberg::Error> {
    let _lock = locks.lock(&name(ident)).await;
    let table = catalog.load_table(ident).await?;
    let before = table.metadata().snapshots().len();
    let mut cutoff = chrono::Utc::now().timestamp_millis()
        - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    for w in pinned {
        let first_unread = table
            .metadata()
            .snapshots()
            .filter(|s| s.sequence_number() > w.sequence)
            .map(|s| s.timestamp_ms())
            .min();
        if let Some(ts) = first_unread {
            cutoff = cutoff.min(ts);
        }
    }
    let mut report = ExpireReport {
        table: name(ident),
        snapshots_before: before,
        snapshots_after: before,
    };
    if before <= retain_last.max(1) {
        return Ok(report);
    }
    let tx = Transaction::new(&table);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(cutoff)
        .retain_last(retain_last.max(1))
        .apply(tx)?;
    let table = tx.commit(catalog).await?;
    report.snapshots_after = table.metadata().snapshots().len();
    Ok(report)
}

/// What orphan cleanup did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OrphanReport {
    pub table: String,
    pub files_seen: usize,
    pub referenced: usize,
    pub deleted: usize,
    pub bytes_deleted: u64,
    /// Unreferenced files left because they are younger than the safety window.
    pub too_young: usize,
}

/// Delete files under the table's location that nothing references and that are older than
/// `older_than`, on a local or an S3 warehouse.
pub async fn remove_orphans(
    catalog: &dyn Catalog,
    storage: &ObjectStorage,
    ident: &TableIdent,
    older_than: Duration,
) -> Result<OrphanReport, anyhow::Error> {
    let table = catalog.load_table(ident).await?;
    let root = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let referenced = referenced_files(&table).await?;
    let mut report = OrphanReport {
        table: name(ident),
        referenced: referenced.len(),
        ..Default::default()
    };
    let now = chrono::Utc::now();
    for (location, size, modified) in crate::storage::list(storage, &root).await? {
        report.files_seen += 1;
        let plain = location.strip_prefix("file://");
        if referenced.contains(&location) || plain.is_some_and(|p| referenced.contains(p)) {
            continue;
        }
        let age = (now - modified).to_std().unwrap_or_default();
        if age < older_than {
            report.too_young += 1;
            continue;
        }
        storage.delete(&location).await?;
        report.deleted += 1;
        report.bytes_deleted += size;
        tracing::debug!(table = %report.table, %location, "removed orphan file");
    }
    Ok(report)
}

/// Every file the table's metadata reaches: metadata files (current and logged), manifest
/// lists of the remaining snapshots, their manifests, and the data files alive in them.
async fn referenced_files(table: &Table) -> Result<HashSet<String>, iceberg::Error> {
    let meta = table.metadata();
    let io = table.file_io();
    let mut out = HashSet::new();
    if let Some(current) = table.metadata_location() {
        out.insert(current.to_string());
    }
    for log in meta.metadata_log() {
        out.insert(log.metadata_file.clone());
    }
    for snapshot in meta.snapshots() {
        out.insert(snapshot.manifest_list().to_string());
        let list = crate::rewrite::manifest_list(table, snapshot).await?;
        for mf in list.entries() {
            out.insert(mf.manifest_path.clone());
            if mf.content != ManifestContentType::Data {
                continue;
            }
            for e in mf.load_manifest(io).await?.entries() {
                if e.is_alive() {
                    out.insert(e.data_file().file_path().to_string());
                }
            }
        }
    }
    Ok(out)
}

fn name(ident: &TableIdent) -> String {
    format!("{}.{}", ident.namespace().join("."), ident.name())
}

/// Maintenance run by `serve`: every `interval`, each table is compacted, its old snapshots
/// expired and its orphan files removed. Commits take the table's commit lock, so they
/// queue behind the lander and the models instead of racing them.
pub struct Scheduled {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// Everything a maintenance pass needs.
#[derive(Clone)]
pub struct Upkeep {
    pub catalog: std::sync::Arc<dyn Catalog>,
    pub swap: crate::rewrite::CatalogSwap,
    pub locks: CommitLocks,
    pub cfg: crate::config::MaintenanceConfig,
    pub compression: crate::config::Compression,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub storage: ObjectStorage,
}

impl Scheduled {
    pub fn start(upkeep: Upkeep) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(upkeep.cfg.interval) => {}
                    _ = stopped.changed() => return,
                }
                if let Err(e) = upkeep.pass(&stopped).await {
                    tracing::error!("maintenance pass failed: {e:#}");
                }
            }
        });
        Self { stop, handle }
    }

    /// Stop after the task in progress.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

impl Upkeep {
    /// One pass over every table; a task that fails is logged and counted, and the others
    /// still run.
    pub async fn pass(&self, stopped: &tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let catalog = self.catalog.as_ref();
        let pins = model_pins(catalog).await?;
        let opts = crate::compaction::CompactionOptions::new(
            self.cfg.target_file_size.as_u64(),
            self.compression,
        );
        for ident in crate::compaction::all_tables(catalog).await? {
            let table = name(&ident);
            if *stopped.borrow() {
                return Ok(());
            }
            let outcome = |ok: bool| if ok { "ok" } else { "error" };
            let r = crate::compaction::compact(
                catalog,
                &self.swap,
                &self.locks,
                &ident,
                &opts,
                &|_, _| {},
            )
            .await;
            match &r {
                Ok(r) if r.files_rewritten > 0 => tracing::info!(
                    %table, before = r.files_before, after = r.files_after, rows = r.rows_rewritten,
                    "compacted"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(%table, "compaction failed: {e}"),
            }
            self.metrics
                .maintenance_run(&table, "compact", outcome(r.is_ok()));
            let pinned = pins.get(&table).map(Vec::as_slice).unwrap_or_default();
            let r = expire(
                catalog,
                &self.locks,
                &ident,
                self.cfg.expire_older_than,
                self.cfg.retain_last,
                pinned,
            )
            .await;
            match &r {
                Ok(r) if r.snapshots_after < r.snapshots_before => tracing::info!(
                    %table, before = r.snapshots_before, after = r.snapshots_after, "expired snapshots"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(%table, "snapshot expiry failed: {e}"),
            }
            self.metrics
                .maintenance_run(&table, "expire", outcome(r.is_ok()));
            let r =
                remove_orphans(catalog, &self.storage, &ident, self.cfg.orphans_older_than).await;
            match &r {
                Ok(r) if r.deleted > 0 => {
                    tracing::info!(%table, files = r.deleted, bytes = r.bytes_deleted, "removed orphan files")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(%table, "orphan cleanup failed: {e:#}"),
            }
            self.metrics
                .maintenance_run(&table, "orphans", outcome(r.is_ok()));
        }
        Ok(())
    }
}

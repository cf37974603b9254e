//! Snapshot expiry and orphan-file cleanup, and the maintenance `serve` runs on a schedule.
//!
//! Expiry is a metadata-only commit (see `lake/retention.rs`) followed by the removal of
//! the files only the expired snapshots used; it runs often (`expire_interval`), so that a
//! table committed to every second keeps a bounded history. What the lander's marks are
//! read from and what a model has yet to read are never expired. Orphan cleanup deletes
//! files under the table's location that no remaining snapshot or metadata file refers to,
//! and only those older than a safety window, so files of a commit in flight are never
//! touched. Compaction, expiry and cleanup each stop at the next table, bin or snapshot
//! once the processor is stopping, and are cut off after a grace period if they do not.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | `Upkeep` and `Scheduled`: the passes `serve` runs, on their schedule |
//! | `config.rs` | `[maintenance]`: intervals, target file size, retention, safety window |
//! | `error.rs` | `MaintenanceError`, the one error of every task |
//! | `compaction.rs` | compaction: small files bin-packed into files of the target size |
//! | `concat.rs` | merging Parquet files by copying their encoded row groups |
//! | `expiry.rs` | snapshot expiry, and the snapshots models pin |
//! | `orphans.rs` | orphan cleanup, and every file a table's metadata reaches |

pub mod compaction;
pub mod concat;
mod config;
mod error;
mod expiry;
mod orphans;

pub use config::MaintenanceConfig;
pub use error::MaintenanceError;
pub use expiry::{ExpireReport, expire, model_pins};
pub use orphans::{OrphanReport, remove_orphans};

use std::time::Duration;

use iceberg::Catalog;

use crate::lake::CatalogSwap;
use crate::lake::locks::CommitLocks;
use crate::lake::qualified;
use crate::lake::retention::Policy;
use crate::lake::storage::ObjectStorage;

/// Maintenance run by `serve`: every `expire_interval` each table's history is trimmed,
/// and every `interval` each table is compacted and its orphan files removed. Commits take
/// the table's commit lock, so they queue behind the lander and the models instead of
/// racing them.
pub struct Scheduled {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The threads the passes run on; shut down when this is dropped.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Everything a maintenance pass needs.
#[derive(Clone)]
pub struct Upkeep {
    /// The catalog whose tables are maintained, every namespace of it.
    pub catalog: std::sync::Arc<dyn Catalog>,
    /// The compare-and-swap compaction and expiry publish their commits with.
    pub swap: CatalogSwap,
    /// The locks shared with the lander and the models, so commits queue rather than race.
    pub locks: CommitLocks,
    /// `[maintenance]`: the intervals, and what compaction and expiry keep.
    pub cfg: MaintenanceConfig,
    /// Parquet compression of the files compaction writes (`[lander] compression`).
    pub compression: crate::lake::Compression,
    /// Where each pass's outcome per table, and what expiry removed, are counted.
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// The warehouse's storage, which orphan cleanup lists and deletes from.
    pub storage: ObjectStorage,
}

impl Scheduled {
    /// Start the passes on their own low-priority threads (on the caller's runtime if those
    /// cannot be started).
    pub fn start(upkeep: Upkeep) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runtime = crate::tasks::background_runtime("sluice-upkeep", 1)
            .inspect_err(|e| {
                tracing::warn!("maintenance runs beside landing: no threads of its own: {e}")
            })
            .ok();
        let handle = runtime
            .as_ref()
            .map(|r| r.handle().clone())
            .unwrap_or_else(tokio::runtime::Handle::current);
        let every = |interval: Duration, pass: fn(Upkeep, StopFlag) -> PassFuture| {
            let upkeep = upkeep.clone();
            let mut stopped = stopped.clone();
            handle.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stopped.changed() => return,
                    }
                    let flag = StopFlag(stopped.clone());
                    if let Err(e) = pass(upkeep.clone(), flag).await {
                        tracing::error!("maintenance pass failed: {e:#}");
                    }
                    crate::tasks::release_free_memory();
                }
            })
        };
        let tasks = vec![
            every(upkeep.cfg.expire_interval, |u, s| {
                Box::pin(async move { u.expire_pass(&s).await })
            }),
            every(upkeep.cfg.interval, |u, s| {
                Box::pin(async move { u.pass(&s).await })
            }),
        ];
        Self {
            stop,
            tasks,
            runtime,
        }
    }

    /// Stop: a pass in progress stops at its next step; one still running after `grace`
    /// is cut off (what it wrote and did not commit is left to orphan cleanup). The threads
    /// stay until this is dropped: connections they opened may serve the lander's last
    /// commits.
    pub async fn stop(&mut self, grace: Duration) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            crate::tasks::stop_within(task, grace, "maintenance").await;
        }
    }
}

impl Drop for Scheduled {
    fn drop(&mut self) {
        // Dropping a runtime waits for its blocking threads, which is not allowed on an
        // async thread; a cut-off pass's file I/O ends on its own.
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

type PassFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Whether the processor is stopping.
#[derive(Clone)]
pub struct StopFlag(tokio::sync::watch::Receiver<bool>);

impl StopFlag {
    fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

impl Upkeep {
    /// The retention policy of the config.
    fn policy(&self) -> Policy {
        Policy {
            older_than: self.cfg.expire_older_than,
            max_snapshots: self.cfg.max_snapshots,
            retain_last: self.cfg.retain_last,
        }
    }

    /// Expire old snapshots of every table; a table that fails is logged and counted, and
    /// the others still run.
    pub async fn expire_pass(&self, stop: &StopFlag) -> anyhow::Result<()> {
        let catalog = self.catalog.as_ref();
        let pins = model_pins(catalog).await?;
        let stopping = || stop.is_set();
        for ident in compaction::all_tables(catalog).await? {
            if stopping() {
                return Ok(());
            }
            let table = qualified(&ident);
            let pinned = pins.get(&table).map(Vec::as_slice).unwrap_or_default();
            let r = expire(
                catalog,
                &self.swap,
                &self.locks,
                &ident,
                &self.policy(),
                pinned,
                &stopping,
            )
            .await;
            match &r {
                Ok(r) if r.snapshots_after < r.snapshots_before => {
                    tracing::info!(
                        %table, before = r.snapshots_before, after = r.snapshots_after,
                        files = r.files_removed, "expired snapshots"
                    );
                    self.metrics.expired(
                        &table,
                        r.snapshots_before - r.snapshots_after,
                        r.files_removed,
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::error!(%table, "snapshot expiry failed: {e}"),
            }
            let outcome = match &r {
                Ok(_) => "ok",
                Err(e) => e.reason(),
            };
            self.metrics.maintenance_run(&table, "expire", outcome);
        }
        Ok(())
    }

    /// Compact every table and remove its orphan files; a task that fails is logged and
    /// counted, and the others still run.
    pub async fn pass(&self, stop: &StopFlag) -> anyhow::Result<()> {
        let catalog = self.catalog.as_ref();
        let opts = compaction::CompactionOptions::new(
            self.cfg.target_file_size.as_u64(),
            self.compression,
        );
        let stopping = || stop.is_set();
        for ident in compaction::all_tables(catalog).await? {
            let table = qualified(&ident);
            if stopping() {
                return Ok(());
            }
            let r = compaction::compact(
                catalog,
                &self.swap,
                &self.locks,
                &ident,
                &opts,
                &|_, _| {},
                &stopping,
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
            let outcome = r.as_ref().map_or_else(MaintenanceError::reason, |_| "ok");
            self.metrics.maintenance_run(&table, "compact", outcome);
            if stopping() {
                return Ok(());
            }
            let r = remove_orphans(
                catalog,
                &self.storage,
                &self.locks,
                &ident,
                self.cfg.orphans_older_than,
                &stopping,
            )
            .await;
            match &r {
                Ok(r) if r.deleted > 0 => {
                    tracing::info!(%table, files = r.deleted, bytes = r.bytes_deleted, "removed orphan files")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(%table, "orphan cleanup failed: {e:#}"),
            }
            let outcome = r.as_ref().map_or_else(MaintenanceError::reason, |_| "ok");
            self.metrics.maintenance_run(&table, "orphans", outcome);
        }
        Ok(())
    }
}

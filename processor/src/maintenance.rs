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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use iceberg::spec::ManifestContentType;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};

use iceberg::io::Storage;

use crate::lake::retention::{self, Policy};
use crate::lake::{CatalogSwap, CommitError};
use crate::locks::CommitLocks;
use crate::models::Watermark;
use crate::storage::ObjectStorage;

/// What expiry did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExpireReport {
    pub table: String,
    pub snapshots_before: usize,
    pub snapshots_after: usize,
    /// Files only the expired snapshots used, removed.
    pub files_removed: usize,
}

/// Why expiry failed.
#[derive(Debug, thiserror::Error)]
pub enum ExpireError {
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
}

impl ExpireError {
    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Commit(e) => e.reason(),
            Self::Iceberg(_) => "storage",
        }
    }
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

/// Expire what `policy` lets go of `ident`'s history, keeping what the marks are read from
/// and every snapshot after the oldest of `pinned` (model watermarks: what came after them
/// the models have yet to read); then remove the files only the expired snapshots used.
pub async fn expire(
    catalog: &dyn Catalog,
    swap: &CatalogSwap,
    locks: &CommitLocks,
    ident: &TableIdent,
    policy: &Policy,
    pinned: &[Watermark],
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<ExpireReport, ExpireError> {
    const MAX_CONFLICTS: u32 = 5;
    let mut report = ExpireReport {
        table: name(ident),
        ..Default::default()
    };
    // Orphan cleanup of this process must not read the files this removes.
    let _upkeep = locks.upkeep(&report.table).await;
    let mut conflicts = 0;
    let (before, plan) = loop {
        let mut locked = locks.lock(&report.table).await;
        let head = locked.head(swap, catalog, ident).await?;
        let table = head.table().clone();
        let meta = table.metadata();
        report.snapshots_before = meta.snapshots().len();
        report.snapshots_after = report.snapshots_before;
        let keep_from = pinned
            .iter()
            .map(|w| w.sequence + 1)
            .chain(crate::progress::chain_start(meta))
            .min();
        let now = chrono::Utc::now().timestamp_millis();
        let plan = retention::plan(meta, policy, now, keep_from);
        if plan.expire.is_empty() {
            return Ok(report);
        }
        tracing::info!(table = %report.table, snapshots = plan.expire.len(), "expiring snapshots");
        match retention::commit(swap, &head, &plan).await {
            Ok(head) => {
                locked.committed(&head);
                report.snapshots_after = head.table().metadata().snapshots().len();
                break (table, plan);
            }
            Err(CommitError::Conflict) if conflicts < MAX_CONFLICTS => conflicts += 1,
            Err(e) => return Err(e.into()),
        }
    };
    // The lock is not needed to remove what no snapshot refers to any more.
    report.files_removed = retention::remove_files(&before, &plan, stopping)
        .await?
        .files;
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
    locks: &CommitLocks,
    ident: &TableIdent,
    older_than: Duration,
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<OrphanReport, anyhow::Error> {
    // Expiry of this process removes files the table's metadata still names meanwhile.
    let _upkeep = locks.upkeep(&name(ident)).await;
    let table = catalog.load_table(ident).await?;
    let root = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let referenced = referenced_files(&table, stopping).await?;
    let mut report = OrphanReport {
        table: name(ident),
        referenced: referenced.len(),
        ..Default::default()
    };
    if stopping() {
        return Ok(report);
    }
    let now = chrono::Utc::now();
    for (location, size, modified) in crate::storage::list(storage, &root).await? {
        if stopping() {
            break;
        }
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
/// lists of the remaining snapshots, their manifests (each read once, however many
/// snapshots list it), the data files alive in them, and marks files.
async fn referenced_files(
    table: &Table,
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<HashSet<String>, iceberg::Error> {
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
        if stopping() {
            break;
        }
        out.insert(snapshot.manifest_list().to_string());
        out.extend(crate::progress::files_of(snapshot).map(str::to_string));
        // A file that is gone fails the pass (it is tried again next time) rather than
        // leave what it referenced looking unreferenced.
        let list = crate::lake::manifest_list(table, snapshot).await?;
        for mf in list.entries() {
            if !out.insert(mf.manifest_path.clone()) || mf.content != ManifestContentType::Data {
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

/// How much less CPU priority maintenance threads have than the rest of the processor (a
/// nice value): when the cores are busy, a pass gets about a tenth of what a receiving or
/// committing thread gets (the kernel's weights for nice 10 and 0 are 110 and 1024), so it
/// takes the CPU that landing leaves idle instead of delaying commits.
pub const BACKGROUND_NICE: i32 = 10;

/// A runtime for work that must not delay landing (maintenance, queries): `workers` threads
/// named `name` (plus blocking threads for file I/O), each at [`BACKGROUND_NICE`] below the
/// threads that start it.
pub fn background_runtime(name: &str, workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .on_thread_start(lower_priority)
        .enable_all()
        .build()
}

/// Lower the calling thread's CPU priority by [`BACKGROUND_NICE`]. On Linux the nice value
/// belongs to a thread, so the rest of the process keeps its own.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority and setpriority only read and set the calling thread's nice value.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        // -1 is also a valid nice value: errno would tell, but a failure only leaves the
        // thread at its priority, which is what it would be without this.
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if libc::setpriority(libc::PRIO_PROCESS, tid, now + BACKGROUND_NICE) != 0 {
            tracing::debug!(
                "cannot lower the maintenance thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Everything a maintenance pass needs.
#[derive(Clone)]
pub struct Upkeep {
    pub catalog: std::sync::Arc<dyn Catalog>,
    pub swap: CatalogSwap,
    pub locks: CommitLocks,
    pub cfg: crate::config::MaintenanceConfig,
    pub compression: crate::config::Compression,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub storage: ObjectStorage,
}

impl Scheduled {
    /// Start the passes on their own low-priority threads (on the caller's runtime if those
    /// cannot be started).
    pub fn start(upkeep: Upkeep) -> Self {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runtime = background_runtime("sluice-upkeep", 1)
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
                    release_free_memory();
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
            crate::server::stop_within(task, grace, "maintenance").await;
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

/// Hand the pages the allocator holds free back to the kernel. A pass frees tens of MB at
/// once (compaction's inputs, expiry's metadata), and glibc keeps freed pages of its
/// per-thread arenas mapped: with a live heap flat at ~130 MB, a soak of 1,000 agents
/// saw RSS creep from 190 to 255 MiB over 40,000 commits. Trimming after each pass takes
/// a few milliseconds.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

type PassFuture = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Whether the processor is stopping.
#[derive(Clone)]
pub struct StopFlag(tokio::sync::watch::Receiver<bool>);

impl StopFlag {
    pub fn is_set(&self) -> bool {
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
        for ident in crate::compaction::all_tables(catalog).await? {
            if stopping() {
                return Ok(());
            }
            let table = name(&ident);
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
        let opts = crate::compaction::CompactionOptions::new(
            self.cfg.target_file_size.as_u64(),
            self.compression,
        );
        let stopping = || stop.is_set();
        for ident in crate::compaction::all_tables(catalog).await? {
            let table = name(&ident);
            if stopping() {
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
            self.metrics
                .maintenance_run(&table, "compact", outcome(r.is_ok()));
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
            self.metrics
                .maintenance_run(&table, "orphans", outcome(r.is_ok()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lander::Verdict;
    use crate::lander::tests::{TestLake, land_batch};

    fn ident() -> TableIdent {
        TableIdent::from_strs(["bronze", "events"]).expect("ident")
    }

    /// The calling thread's nice value.
    fn nice() -> i32 {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn maintenance_threads_yield_the_cpu_to_the_threads_that_land() {
        let own = nice();
        let rt = background_runtime("sluice-upkeep", 1).expect("runtime");
        let (worker, blocking) = rt.block_on(async {
            let worker = tokio::spawn(async { nice() }).await.expect("worker task");
            let blocking = tokio::task::spawn_blocking(nice)
                .await
                .expect("blocking task");
            (worker, blocking)
        });
        let lowered = (own + BACKGROUND_NICE).min(19);
        assert_eq!((worker, blocking), (lowered, lowered));
        // The thread that started the runtime keeps its priority.
        assert_eq!(nice(), own);
        rt.shutdown_background();
    }

    /// Every `id` the table holds at `snapshot`, sorted.
    async fn ids_at(table: &Table, snapshot: i64) -> Vec<i64> {
        let snap = table.metadata().snapshot_by_id(snapshot).expect("snapshot");
        let list = crate::lake::manifest_list(table, snap).await.expect("list");
        let mut files = Vec::new();
        for mf in list.entries() {
            for e in mf
                .load_manifest(table.file_io())
                .await
                .expect("manifest")
                .entries()
            {
                if e.is_alive() {
                    files.push(e.data_file().clone());
                }
            }
        }
        let mut ids = crate::lander::tests::ids_in(table, &files).await;
        ids.sort_unstable();
        ids
    }

    #[tokio::test]
    async fn expiry_keeps_recent_history_and_removes_exactly_what_only_expired_snapshots_used() {
        let lake = TestLake::new().await;
        let lander = lake.lander();
        let locks = CommitLocks::default();
        let land = async |from: u64, to: u64| {
            for seq in from..=to {
                let v = land_batch(&lander, "edge", seq).await;
                lander.flush().await;
                assert_eq!(v.await, Ok(Verdict::Committed));
            }
        };
        land(1, 60).await;
        let before = lake.table("events").await;
        let small: Vec<String> = crate::lake::live_files(&before)
            .await
            .expect("files")
            .iter()
            .map(|f| f.file_path().to_string())
            .collect();
        let opts =
            crate::compaction::CompactionOptions::new(128 << 20, crate::config::Compression::Zstd);
        let r = crate::compaction::compact(
            lake.catalog.as_ref(),
            &lake.swap,
            &locks,
            &ident(),
            &opts,
            &|_, _| {},
            &|| false,
        )
        .await
        .expect("compaction");
        assert_eq!(r.files_rewritten, 60);
        land(61, 80).await;

        let policy = Policy {
            older_than: Duration::from_secs(3600),
            max_snapshots: 10,
            retain_last: 1,
        };
        let r = expire(
            lake.catalog.as_ref(),
            &lake.swap,
            &locks,
            &ident(),
            &policy,
            &[],
            &|| false,
        )
        .await
        .expect("expiry");
        assert_eq!((r.snapshots_before, r.snapshots_after), (81, 10));
        assert!(r.files_removed > 70, "{r:?}");
        // The compaction's snapshot expired: the small files it replaced are gone.
        for path in &small {
            let local = path.strip_prefix("file://").unwrap_or(path);
            assert!(
                !std::path::Path::new(local).exists(),
                "{path} is still there"
            );
        }
        // Nothing that the kept snapshots use was removed, and nothing else is left over.
        let table = lake.table("events").await;
        for s in table.metadata().snapshots() {
            let want: Vec<i64> = (1..s.sequence_number()).collect();
            assert_eq!(
                ids_at(&table, s.snapshot_id()).await,
                want,
                "time travel to {}",
                s.snapshot_id()
            );
        }
        let storage = ObjectStorage::new(Default::default());
        let orphans = remove_orphans(
            lake.catalog.as_ref(),
            &storage,
            &locks,
            &ident(),
            Duration::ZERO,
            &|| false,
        )
        .await
        .expect("orphans");
        assert_eq!(orphans.deleted, 0, "{orphans:?}");
        // The marks are still read right.
        let again = lake.lander();
        assert_eq!(
            again
                .committed_mark("edge", "events")
                .await
                .expect("mark")
                .0,
            80
        );
    }
}

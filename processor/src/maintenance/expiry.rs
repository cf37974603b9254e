//! Snapshot expiry: a metadata-only commit that lets go of old snapshots (see
//! `lake/retention.rs`), then the removal of the files only they used. Never expired: the
//! current snapshot, what the lander's marks are read from, and what a model has yet to
//! read (its watermarks pin them).

use std::collections::HashMap;

use iceberg::{Catalog, TableIdent};

use super::MaintenanceError;
use super::compaction::all_tables;
use crate::lake::locks::CommitLocks;
use crate::lake::qualified;
use crate::lake::retention::{self, Policy};
use crate::lake::{CatalogSwap, CommitError};
use crate::models::Watermark;

/// What expiry did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ExpireReport {
    /// `namespace.table`.
    pub table: String,
    /// Snapshots the table kept before the pass.
    pub snapshots_before: usize,
    /// Snapshots it keeps after; as many as before when nothing was due to expire.
    pub snapshots_after: usize,
    /// Files only the expired snapshots used, removed.
    pub files_removed: usize,
}

/// Snapshots that models still read from, per input table (`namespace.table`): the
/// watermarks recorded in every table's current snapshot.
pub async fn model_pins(
    catalog: &dyn Catalog,
) -> Result<HashMap<String, Vec<Watermark>>, iceberg::Error> {
    let mut pins: HashMap<String, Vec<Watermark>> = HashMap::new();
    for ident in all_tables(catalog).await? {
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
) -> Result<ExpireReport, MaintenanceError> {
    const MAX_CONFLICTS: u32 = 5;
    let mut report = ExpireReport {
        table: qualified(ident),
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
            .chain(crate::lake::marks::chain_start(meta))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use iceberg::table::Table;

    use super::*;
    use crate::lake::storage::ObjectStorage;
    use crate::land::lander::Verdict;
    use crate::maintenance::remove_orphans;
    use crate::testing::{TestLake, land_batch};

    fn ident() -> TableIdent {
        TableIdent::from_strs(["bronze", "events"]).expect("ident")
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
        let mut ids = crate::testing::ids_in(table, &files).await;
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
        let opts = crate::maintenance::compaction::CompactionOptions::new(
            128 << 20,
            crate::lake::Compression::Zstd,
        );
        let r = crate::maintenance::compaction::compact(
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

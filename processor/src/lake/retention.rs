//! Snapshot retention: which snapshots expire, the metadata-only commit that drops them,
//! and removing the files that only they used.
//!
//! A snapshot expires when it is older than the age limit *or* beyond the count limit,
//! unless it is one of the newest `retain_last`, the head of a branch or tag, one that
//! recovery of the lander's marks reads ([`crate::lake::marks::chain_start`]), or one a model
//! has yet to read. Because history on `main` is linear and a manifest, once dropped from
//! a snapshot's list, never comes back, the files only expired snapshots used are found
//! from the expired snapshots and the oldest one kept alone — no table-wide listing:
//! - their manifest lists;
//! - manifests in their lists that the oldest kept snapshot no longer lists;
//! - data files removed (by compaction or a model rebuild) in an expired snapshot or the
//!   oldest kept one: only snapshots before those used them;
//! - marks files only they refer to.
//!
//! When the table's history is not that simple (other branches, a tagged old snapshot),
//! only the metadata is expired and orphan cleanup removes the files later.

use std::collections::HashSet;
use std::time::Duration;

use iceberg::spec::{ManifestStatus, Operation, Snapshot, TableMetadata};
use iceberg::table::Table;

use super::manifests::manifest_list;
use super::snapshot::{CommitError, Head, commit_metadata};
use super::swap::CatalogSwap;

/// How much history a table keeps.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Snapshots older than this expire.
    pub older_than: Duration,
    /// At most this many snapshots are kept (beyond those protected).
    pub max_snapshots: usize,
    /// The newest this many are always kept.
    pub retain_last: usize,
}

/// What expiry will drop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Snapshot ids, oldest first.
    pub expire: Vec<i64>,
    /// Every snapshot is on `main`'s line and every kept one is newer than every expired
    /// one, so the files of the expired ones can be found from them alone.
    pub linear: bool,
}

/// Which snapshots of `meta` expire at `now_ms`; snapshots with a sequence number at or
/// above `keep_from` are kept whatever their age.
pub fn plan(meta: &TableMetadata, policy: &Policy, now_ms: i64, keep_from: Option<i64>) -> Plan {
    let heads = ref_heads(meta);
    let mut line: Vec<&Snapshot> = Vec::new();
    let mut next = meta.current_snapshot();
    while let Some(s) = next {
        line.push(s);
        next = s
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    let cutoff =
        now_ms.saturating_sub(i64::try_from(policy.older_than.as_millis()).unwrap_or(i64::MAX));
    let keep_last = policy.retain_last.max(1);
    let mut expire = Vec::new();
    let mut kept_after_expired = false;
    for (i, s) in line.iter().enumerate() {
        let protected = i < keep_last
            || heads.contains(&s.snapshot_id())
            || keep_from.is_some_and(|k| s.sequence_number() >= k);
        let too_old = s.timestamp_ms() < cutoff || i >= policy.max_snapshots.max(keep_last);
        if too_old && !protected {
            expire.push(s.snapshot_id());
        } else if !expire.is_empty() {
            kept_after_expired = true;
        }
    }
    expire.reverse();
    let linear = !kept_after_expired && line.len() == meta.snapshots().len();
    Plan { expire, linear }
}

/// The snapshots branches and tags point at. The crate keeps a table's refs private; its
/// serialized form has them (once per expiry, on metadata bounded by expiry itself).
fn ref_heads(meta: &TableMetadata) -> HashSet<i64> {
    let mut heads: HashSet<i64> = meta.current_snapshot_id().into_iter().collect();
    if let Ok(serde_json::Value::Object(doc)) = serde_json::to_value(meta)
        && let Some(serde_json::Value::Object(refs)) = doc.get("refs")
    {
        heads.extend(
            refs.values()
                .filter_map(|r| r.get("snapshot-id").and_then(serde_json::Value::as_i64)),
        );
    }
    heads
}

/// Drop the planned snapshots from `head`'s metadata and swap it in; metadata files that
/// fall out of the log are deleted as after any commit. Returns the new head.
pub async fn commit(swap: &CatalogSwap, head: &Head, plan: &Plan) -> Result<Head, CommitError> {
    commit_metadata(swap, head, |b| Ok(b.remove_snapshots(&plan.expire))).await
}

/// Files removed by [`remove_files`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Files deleted, data and metadata; one that could not be deleted is logged and left
    /// to orphan cleanup.
    pub files: usize,
    /// Manifest lists and manifests among them.
    pub metadata_files: usize,
}

/// Remove the files that only the expired snapshots of `plan` used. `before` is the
/// table as it was with them; `stopping` is asked between snapshots, and a pass that
/// stops early leaves the rest to orphan cleanup.
pub async fn remove_files(
    before: &Table,
    plan: &Plan,
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<Removed, iceberg::Error> {
    let mut removed = Removed::default();
    if !plan.linear || plan.expire.is_empty() {
        return Ok(removed);
    }
    let meta = before.metadata();
    let expired: HashSet<i64> = plan.expire.iter().copied().collect();
    let Some(newest_expired) = plan.expire.last().and_then(|id| meta.snapshot_by_id(*id)) else {
        return Ok(removed);
    };
    // The oldest snapshot kept: the child of the newest expired one.
    let Some(oldest_kept) = meta
        .snapshots()
        .find(|s| s.parent_snapshot_id() == Some(newest_expired.snapshot_id()))
    else {
        return Ok(removed);
    };
    let kept_list = manifest_list(before, oldest_kept).await?;
    let kept_manifests: HashSet<&str> = kept_list
        .entries()
        .iter()
        .map(|m| m.manifest_path.as_str())
        .collect();
    let kept_marks: HashSet<&str> = crate::lake::marks::files_of(oldest_kept).collect();
    let io = before.file_io();
    let mut gone: HashSet<String> = HashSet::new();
    let mut remove = async |path: &str, metadata: bool, removed: &mut Removed| {
        if !gone.insert(path.to_string()) {
            return;
        }
        match io.delete(path).await {
            Ok(()) => {
                removed.files += 1;
                removed.metadata_files += usize::from(metadata);
            }
            Err(e) => tracing::warn!(%path, "cannot remove a file of an expired snapshot: {e}"),
        }
    };
    for id in plan
        .expire
        .iter()
        .copied()
        .chain([oldest_kept.snapshot_id()])
    {
        if stopping() {
            break;
        }
        let Some(s) = meta.snapshot_by_id(id) else {
            continue;
        };
        let list = manifest_list(before, s).await?;
        // Data files this snapshot removed were used only by the snapshots before it,
        // which have all expired.
        if s.summary().operation != Operation::Append {
            for mf in list.entries() {
                if mf.added_snapshot_id != id || mf.deleted_files_count == Some(0) {
                    continue;
                }
                for e in mf.load_manifest(io).await?.entries() {
                    if e.status() == ManifestStatus::Deleted && e.snapshot_id() == Some(id) {
                        remove(e.data_file().file_path(), false, &mut removed).await;
                    }
                }
            }
        }
        if !expired.contains(&id) {
            continue;
        }
        for mf in list.entries() {
            if !kept_manifests.contains(mf.manifest_path.as_str()) {
                remove(&mf.manifest_path, true, &mut removed).await;
            }
        }
        for path in crate::lake::marks::files_of(s) {
            if !kept_marks.contains(path) {
                remove(path, true, &mut removed).await;
            }
        }
        remove(s.manifest_list(), true, &mut removed).await;
    }
    Ok(removed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use iceberg::spec::{
        MAIN_BRANCH, NestedField, PrimitiveType, Schema, SnapshotReference, SnapshotRetention,
        Summary, TableMetadataBuilder, Type,
    };

    /// Table metadata with snapshots 1..=n on main, one a second apart from `t0`.
    fn history(n: i64, t0: i64) -> TableMetadata {
        let empty: Vec<&[(&str, &str)]> = vec![&[]; n as usize];
        history_with(t0, &empty)
    }

    /// Table metadata whose snapshots 1..=n on main, one a second apart from `t0`, have
    /// these summary properties.
    pub(crate) fn history_with(t0: i64, summaries: &[&[(&str, &str)]]) -> TableMetadata {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "v", Type::Primitive(PrimitiveType::Long)).into(),
            ])
            .build()
            .expect("schema");
        let mut b = TableMetadataBuilder::new(
            schema,
            iceberg::spec::PartitionSpec::unpartition_spec().into_unbound(),
            iceberg::spec::SortOrder::unsorted_order(),
            "file:///t".to_string(),
            iceberg::spec::FormatVersion::V2,
            Default::default(),
        )
        .expect("builder");
        for (i, props) in summaries.iter().enumerate() {
            let id = i as i64 + 1;
            let s = Snapshot::builder()
                .with_snapshot_id(id)
                .with_parent_snapshot_id((id > 1).then_some(id - 1))
                .with_sequence_number(id)
                .with_timestamp_ms(t0 + id * 1000)
                .with_manifest_list(format!("file:///t/metadata/snap-{id}.avro"))
                .with_summary(Summary {
                    operation: Operation::Append,
                    additional_properties: props
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                })
                .with_schema_id(0)
                .build();
            b = b
                .add_snapshot(s)
                .expect("snapshot")
                .set_ref(
                    MAIN_BRANCH,
                    SnapshotReference::new(id, SnapshotRetention::branch(None, None, None)),
                )
                .expect("ref");
        }
        b.build().expect("metadata").metadata
    }

    #[test]
    fn snapshots_expire_by_age_and_by_count() {
        let t0 = 1_000_000;
        let meta = history(20, t0);
        let now = t0 + 21 * 1000;
        let by_age = Policy {
            older_than: Duration::from_millis(5500),
            max_snapshots: 1000,
            retain_last: 1,
        };
        // Snapshots 16..=20 are younger than 5.5 s.
        let p = plan(&meta, &by_age, now, None);
        assert_eq!(p.expire, (1..=15).collect::<Vec<_>>());
        assert!(p.linear);
        let by_count = Policy {
            older_than: Duration::from_secs(3600),
            max_snapshots: 8,
            retain_last: 1,
        };
        assert_eq!(
            plan(&meta, &by_count, now, None).expire,
            (1..=12).collect::<Vec<_>>()
        );
        // The newest retain_last are kept whatever the limits say.
        let keep = Policy {
            retain_last: 18,
            ..by_count
        };
        assert_eq!(plan(&meta, &keep, now, None).expire, vec![1, 2]);
        // What marks recovery or a model still reads is kept.
        assert_eq!(
            plan(&meta, &by_count, now, Some(5)).expire,
            (1..=4).collect::<Vec<_>>()
        );
        assert!(plan(&meta, &by_count, now, Some(1)).expire.is_empty());
    }

    #[test]
    fn a_tagged_snapshot_is_kept_and_files_are_left_to_orphan_cleanup() {
        let t0 = 1_000_000;
        let meta = history(10, t0);
        let tagged = meta
            .into_builder(Some("file:///t/metadata/00010-x.metadata.json".into()))
            .set_ref(
                "audit",
                SnapshotReference::new(
                    3,
                    SnapshotRetention::Tag {
                        max_ref_age_ms: None,
                    },
                ),
            )
            .expect("tag")
            .build()
            .expect("metadata")
            .metadata;
        let policy = Policy {
            older_than: Duration::from_secs(3600),
            max_snapshots: 5,
            retain_last: 1,
        };
        let p = plan(&tagged, &policy, t0 + 11_000, None);
        assert_eq!(p.expire, vec![1, 2, 4, 5]);
        assert!(!p.linear, "3 is kept among expired ones");
    }
}

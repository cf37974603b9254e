//! Orphan cleanup: files under a table's location that no remaining snapshot or metadata
//! file refers to are deleted, and only those older than a safety window, so the files of
//! a commit in flight are never touched.

use std::collections::HashSet;
use std::time::Duration;

use iceberg::io::Storage;
use iceberg::spec::ManifestContentType;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};

use super::MaintenanceError;
use crate::lake::locks::CommitLocks;
use crate::lake::qualified;
use crate::lake::storage::ObjectStorage;

/// What orphan cleanup did to one table.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct OrphanReport {
    /// `namespace.table`.
    pub table: String,
    /// Files listed under the table's location.
    pub files_seen: usize,
    /// Files the table's metadata reaches: metadata files, manifest lists, manifests, live
    /// data files and marks files, whether or not they still exist.
    pub referenced: usize,
    /// Unreferenced files deleted.
    pub deleted: usize,
    /// Bytes of those files.
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
) -> Result<OrphanReport, MaintenanceError> {
    // Expiry of this process removes files the table's metadata still names meanwhile.
    let _upkeep = locks.upkeep(&qualified(ident)).await;
    let table = catalog.load_table(ident).await?;
    let root = table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string();
    let referenced = referenced_files(&table, stopping).await?;
    let mut report = OrphanReport {
        table: qualified(ident),
        referenced: referenced.len(),
        ..Default::default()
    };
    if stopping() {
        return Ok(report);
    }
    let now = chrono::Utc::now();
    for (location, size, modified) in crate::lake::storage::list(storage, &root).await? {
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
        out.extend(crate::lake::marks::files_of(snapshot).map(str::to_string));
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

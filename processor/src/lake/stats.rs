//! What `/api/tables`, the status page and the table gauges say about each table: rows,
//! files, bytes, snapshots and metadata, from the current snapshot and a listing.

use iceberg::{Catalog, NamespaceIdent, TableIdent};
use serde::Serialize;

/// What `/api/tables` says about a table.
#[derive(Debug, Clone, Serialize)]
pub struct TableStats {
    /// `namespace.table`.
    pub table: String,
    /// Rows in the current snapshot (its summary's `total-records`; 0 with no snapshot).
    pub rows: u64,
    /// Live data files in the current snapshot (`total-data-files`).
    pub data_files: u64,
    /// Bytes of those data files (`total-files-size`).
    pub bytes: u64,
    /// Snapshots the table's metadata keeps, the current one included.
    pub snapshots: usize,
    /// Manifests in the current snapshot's manifest list.
    pub manifests: usize,
    /// Files and bytes under the table's `metadata/` folder.
    pub metadata_files: usize,
    /// Bytes of those metadata files.
    pub metadata_bytes: u64,
    /// `None` while nothing has been committed to the table.
    pub current_snapshot_id: Option<i64>,
    /// Time of the last commit (RFC 3339), if any.
    pub last_commit: Option<String>,
    /// [`TableStats::last_commit`] in milliseconds since the Unix epoch.
    pub last_commit_ms: Option<i64>,
}

/// Stats of every table of every namespace, from their current snapshots' summaries and
/// manifest lists, and a listing of their metadata folders in `storage`.
pub async fn tables(
    catalog: &dyn Catalog,
    storage: &super::storage::ObjectStorage,
) -> anyhow::Result<Vec<TableStats>> {
    let mut out = Vec::new();
    let mut namespaces = catalog.list_namespaces(None).await?;
    namespaces.sort_by_key(NamespaceIdent::to_url_string);
    for ns in namespaces {
        let mut idents = catalog.list_tables(&ns).await?;
        idents.sort_by(|a, b| a.name().cmp(b.name()));
        for ident in idents {
            let table = catalog.load_table(&ident).await?;
            let meta = table.metadata();
            let current = meta.current_snapshot();
            let total = |key: &str| {
                current
                    .and_then(|s| s.summary().additional_properties.get(key))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let last_ms = current.map(|s| s.timestamp_ms());
            let manifests = match current {
                Some(s) => super::manifest_list(&table, s).await?.entries().len(),
                None => 0,
            };
            let metadata = super::storage::list(
                storage,
                &format!("{}/metadata", meta.location().trim_end_matches('/')),
            )
            .await?;
            out.push(TableStats {
                table: qualified(&ident),
                rows: total("total-records"),
                data_files: total("total-data-files"),
                bytes: total("total-files-size"),
                snapshots: meta.snapshots().len(),
                manifests,
                metadata_files: metadata.len(),
                metadata_bytes: metadata.iter().map(|(_, size, _)| size).sum(),
                current_snapshot_id: meta.current_snapshot_id(),
                last_commit: last_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                last_commit_ms: last_ms,
            });
        }
    }
    Ok(out)
}

/// `namespace.table`.
pub fn qualified(ident: &TableIdent) -> String {
    format!("{}.{}", ident.namespace().join("."), ident.name())
}

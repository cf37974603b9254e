//! Commits that replace data files — compaction now, model rebuilds later — which the
//! official `iceberg` crate (0.10) cannot make: its commit builders are private.
//!
//! The commit is built from the crate's public parts: manifests rewritten with
//! `ManifestWriter` (removed files as `deleted` entries, the others as `existing`, new files
//! as `added`), a manifest list, a snapshot with operation `replace`, and table metadata from
//! `TableMetadataBuilder`. It is published with the same compare-and-swap the SQL catalog
//! itself uses for every commit — `UPDATE iceberg_tables SET metadata_location = new ...
//! WHERE metadata_location = old` — so a commit that lost a race to the lander (or anyone)
//! changes nothing, is reported as [`RewriteError::Conflict`], and is retried by the caller
//! on the new table state. Files written by a lost attempt are removed.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use iceberg::spec::{
    DataFile, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestList, ManifestListWriter,
    ManifestWriterBuilder, Operation, Snapshot, SnapshotReference, SnapshotRetention, Summary,
    TableMetadataBuilder,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableIdent};
use sqlx::AnyPool;

/// Properties of a table's current snapshot that every new snapshot must carry forward:
/// the lander's progress tokens (`sluice.seq.*`, `sluice.ckpt.*`) and model watermarks.
const CARRIED_PREFIX: &str = "sluice.";
/// Properties of model runs (watermarks, run id).
const MODEL_PREFIX: &str = "sluice.model.";

/// Why a rewrite did not commit.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("another commit changed the table first (the rewrite was not applied)")]
    Conflict,
    #[error("data file {0} is no longer in the table")]
    Missing(String),
    #[error("the table has no snapshot to rewrite")]
    Empty,
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error("catalog database: {0}")]
    Sql(#[from] sqlx::Error),
}

/// Direct access to the SQL catalog's table pointers, for the compare-and-swap.
#[derive(Clone)]
pub struct CatalogSwap {
    pool: AnyPool,
    catalog: String,
    dollar: bool,
}

impl CatalogSwap {
    /// Connect to the catalog database of a processor config.
    pub async fn open(cfg: &crate::config::ProcessorConfig) -> Result<Self, sqlx::Error> {
        Self::connect(&cfg.catalog_uri(), cfg.catalog_name()).await
    }

    /// Connect to the catalog database at `uri` (the same one the catalog uses).
    async fn connect(uri: &str, catalog: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(uri)
            .await?;
        Ok(Self {
            pool,
            catalog: catalog.to_string(),
            dollar: uri.starts_with("postgres"),
        })
    }

    /// Point `table` at `new` if it still points at `old`; false when it does not.
    pub async fn compare_and_swap(
        &self,
        table: &TableIdent,
        old: &str,
        new: &str,
    ) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                   WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
                   AND metadata_location = ?";
        let sql = if self.dollar {
            let mut n = 0;
            sql.chars()
                .map(|c| {
                    if c == '?' {
                        n += 1;
                        format!("${n}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        } else {
            sql.to_string()
        };
        let done = sqlx::query(&sql)
            .bind(new)
            .bind(old)
            .bind(&self.catalog)
            .bind(table.namespace().join("."))
            .bind(table.name())
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// One replacement: these data files (by path) out, those in, in one snapshot.
pub struct Replace {
    pub remove: HashSet<String>,
    pub add: Vec<DataFile>,
    pub operation: Operation,
    /// Extra snapshot properties (carried `sluice.*` ones are kept unless overridden).
    pub properties: HashMap<String, String>,
}

/// Commit `replace` on top of `table`'s current snapshot (or as the first snapshot of an
/// empty table, when nothing is removed). Returns the new metadata location.
pub async fn commit(
    swap: &CatalogSwap,
    table: &Table,
    replace: &Replace,
) -> Result<String, RewriteError> {
    let meta = table.metadata();
    let file_io = table.file_io();
    let current = meta.current_snapshot().map(|s| &**s);
    if current.is_none() && !replace.remove.is_empty() {
        return Err(RewriteError::Empty);
    }
    let parent_id = current.map(|c| c.snapshot_id());
    let snapshot_id = loop {
        let id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
        if id != 0 && meta.snapshot_by_id(id).is_none() {
            break id;
        }
    };
    let seq = meta.next_sequence_number();
    let schema = meta.current_schema().clone();
    let spec = meta.default_partition_spec().as_ref().clone();
    let dir = format!("{}/metadata", meta.location().trim_end_matches('/'));
    let tag = uuid::Uuid::now_v7();
    let mut written: Vec<String> = Vec::new();

    // A new data manifest of this commit, recorded for cleanup should the commit fail.
    let new_manifest = |n: usize, written: &mut Vec<String>| {
        let path = format!("{dir}/{tag}-m{n}.avro");
        written.push(path.clone());
        Ok::<_, iceberg::Error>(
            ManifestWriterBuilder::new(
                file_io.new_output(&path)?,
                Some(snapshot_id),
                schema.clone(),
                spec.clone(),
            )
            .build_v2_data(),
        )
    };
    let result = async {
        let existing = match current {
            Some(c) => manifest_list(table, c).await?.entries().to_vec(),
            None => Vec::new(),
        };
        let mut manifests: Vec<ManifestFile> = Vec::new();
        let mut removed: Vec<DataFile> = Vec::new();
        for mf in &existing {
            if mf.content != ManifestContentType::Data {
                manifests.push(mf.clone());
                continue;
            }
            let manifest = mf.load_manifest(file_io).await?;
            let touched = manifest
                .entries()
                .iter()
                .any(|e| e.is_alive() && replace.remove.contains(e.data_file().file_path()));
            if !touched {
                manifests.push(mf.clone());
                continue;
            }
            let mut w = new_manifest(manifests.len(), &mut written)?;
            for e in manifest.entries().iter().filter(|e| e.is_alive()) {
                let data_seq = e.sequence_number.unwrap_or(0);
                let file = e.data_file().clone();
                if replace.remove.contains(file.file_path()) {
                    removed.push(file.clone());
                    w.add_delete_file(file, data_seq, e.file_sequence_number)?;
                } else {
                    w.add_existing_file(
                        file,
                        e.snapshot_id().or(parent_id).unwrap_or(snapshot_id),
                        data_seq,
                        e.file_sequence_number,
                    )?;
                }
            }
            manifests.push(w.write_manifest_file().await?);
        }
        let found: HashSet<&str> = removed.iter().map(|f| f.file_path()).collect();
        if let Some(missing) = replace.remove.iter().find(|p| !found.contains(p.as_str())) {
            return Err(RewriteError::Missing(missing.clone()));
        }
        if !replace.add.is_empty() {
            let mut w = new_manifest(manifests.len(), &mut written)?;
            for file in &replace.add {
                w.add_file(file.clone(), seq)?;
            }
            manifests.push(w.write_manifest_file().await?);
        }
        let list_path = format!("{dir}/snap-{snapshot_id}-1-{tag}.avro");
        written.push(list_path.clone());
        let mut lw = ManifestListWriter::v2(
            file_io.new_output(&list_path)?.writer().await?,
            snapshot_id,
            parent_id,
            seq,
        );
        lw.add_manifests(manifests.into_iter())?;
        lw.close().await?;

        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent_id)
            .with_sequence_number(seq)
            .with_timestamp_ms(
                chrono::Utc::now()
                    .timestamp_millis()
                    .max(current.map_or(0, Snapshot::timestamp_ms)),
            )
            .with_manifest_list(list_path)
            .with_summary(summary(current, &removed, replace))
            .with_schema_id(meta.current_schema_id())
            .build();
        let old_location = table.metadata_location_result()?.to_string();
        let new_metadata =
            TableMetadataBuilder::new_from_metadata(meta.clone(), Some(old_location.clone()))
                .add_snapshot(snapshot)?
                .set_ref(
                    MAIN_BRANCH,
                    SnapshotReference::new(
                        snapshot_id,
                        SnapshotRetention::branch(None, None, None),
                    ),
                )?
                .build()?
                .metadata;
        let new_location = MetadataLocation::from_str(&old_location)?.with_next_version();
        written.push(new_location.to_string());
        new_metadata.write_to(file_io, &new_location).await?;
        if !swap
            .compare_and_swap(table.identifier(), &old_location, &new_location.to_string())
            .await?
        {
            return Err(RewriteError::Conflict);
        }
        Ok(new_location.to_string())
    }
    .await;
    if result.is_err() {
        for path in written {
            if let Err(e) = file_io.delete(&path).await {
                tracing::warn!(%path, "cannot remove a file of a failed rewrite: {e}");
            }
        }
    }
    result
}

/// The new snapshot's summary: carried properties, the change, and updated totals.
fn summary(current: Option<&Snapshot>, removed: &[DataFile], replace: &Replace) -> Summary {
    let none = HashMap::new();
    let prev = current.map_or(&none, |c| &c.summary().additional_properties);
    // A model commit states all its watermarks: inputs it no longer reads are dropped.
    let fresh_marks = replace
        .properties
        .keys()
        .any(|k| k.starts_with(MODEL_PREFIX));
    let mut props: HashMap<String, String> = prev
        .iter()
        .filter(|(k, _)| k.starts_with(CARRIED_PREFIX))
        .filter(|(k, _)| !(fresh_marks && k.starts_with(MODEL_PREFIX)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    props.extend(replace.properties.clone());
    let total = |k: &str| prev.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let sum = |files: &[DataFile], f: fn(&DataFile) -> u64| {
        files.iter().map(|x| f(x) as i64).sum::<i64>()
    };
    let (add_n, del_n) = (replace.add.len() as i64, removed.len() as i64);
    let (add_rows, del_rows) = (
        sum(&replace.add, DataFile::record_count),
        sum(removed, DataFile::record_count),
    );
    let (add_bytes, del_bytes) = (
        sum(&replace.add, DataFile::file_size_in_bytes),
        sum(removed, DataFile::file_size_in_bytes),
    );
    for (k, v) in [
        ("added-data-files", add_n),
        ("deleted-data-files", del_n),
        ("added-records", add_rows),
        ("deleted-records", del_rows),
        ("added-files-size", add_bytes),
        ("removed-files-size", del_bytes),
        (
            "total-data-files",
            total("total-data-files") + add_n - del_n,
        ),
        (
            "total-records",
            total("total-records") + add_rows - del_rows,
        ),
        (
            "total-files-size",
            total("total-files-size") + add_bytes - del_bytes,
        ),
        ("total-delete-files", total("total-delete-files")),
        ("total-position-deletes", total("total-position-deletes")),
        ("total-equality-deletes", total("total-equality-deletes")),
    ] {
        props.insert(k.to_string(), v.to_string());
    }
    Summary {
        operation: replace.operation.clone(),
        additional_properties: props,
    }
}

/// The live data files of the table's current snapshot.
pub async fn live_files(table: &Table) -> Result<Vec<DataFile>, iceberg::Error> {
    let meta = table.metadata();
    let Some(current) = meta.current_snapshot() else {
        return Ok(Vec::new());
    };
    let file_io = table.file_io();
    let list = manifest_list(table, current).await?;
    let mut out = Vec::new();
    for mf in list.entries() {
        if mf.content != ManifestContentType::Data {
            continue;
        }
        for e in mf.load_manifest(file_io).await?.entries() {
            if e.is_alive() {
                out.push(e.data_file().clone());
            }
        }
    }
    Ok(out)
}

/// The manifest list of one of the table's snapshots.
pub async fn manifest_list(
    table: &Table,
    snapshot: &Snapshot,
) -> Result<ManifestList, iceberg::Error> {
    let bytes = table
        .file_io()
        .new_input(snapshot.manifest_list())?
        .read()
        .await?;
    ManifestList::parse_with_version(&bytes, table.metadata().format_version())
}

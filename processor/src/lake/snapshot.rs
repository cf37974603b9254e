//! Every commit this processor makes to a table — the lander's appends, compaction's
//! replacements, model runs — goes through [`commit`]: one new snapshot, published with the
//! catalog's compare-and-swap ([`CatalogSwap`]).
//!
//! The official `iceberg` crate (0.10) cannot make these commits: its commit builders are
//! private, its append re-reads every manifest of the table to look for duplicates, and it
//! never merges manifests nor deletes old metadata files, so the cost of a commit grew with
//! the age of the table. The commit here is built from the crate's public parts:
//! - manifests touched by a removal are rewritten (removed files as `deleted` entries, the
//!   others as `existing`);
//! - added files go to a new manifest, into which the newest small manifests are merged
//!   once enough of them have piled up ([`MergePolicy`]);
//! - a manifest list, a snapshot, and table metadata from `TableMetadataBuilder`;
//! - after the swap, metadata files that fell out of the metadata log are deleted
//!   (`write.metadata.delete-after-commit.enabled`, `write.metadata.previous-versions-max`).
//!
//! A caller that keeps the [`Head`] a commit returns commits next without reading anything:
//! the table's metadata and current manifest list are in it. A commit that lost the race
//! changes nothing, removes what it wrote, and says [`CommitError::Conflict`]; the caller
//! loads the table again and decides afresh.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestContentType, ManifestFile, ManifestListWriter,
    ManifestWriter, ManifestWriterBuilder, Operation, Snapshot, SnapshotReference,
    SnapshotRetention, Summary, TableMetadata, TableMetadataBuildResult, TableMetadataBuilder,
    TableProperties, UNASSIGNED_SEQUENCE_NUMBER,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, Runtime};

use super::manifests::{LiveFile, ManifestCache, MergePolicy, manifest_list};
use super::swap::CatalogSwap;
use crate::lake::marks::{COMMIT_ID_KEY, MARKS_DELTA_KEY, MARKS_KEY, Marks};

/// Table property: delete metadata files that fall out of the metadata log.
pub const DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

/// Properties every table gets, when it does not set them itself: without them a table
/// keeps every metadata file it ever had.
pub const TABLE_DEFAULTS: &[(&str, &str)] = &[
    (DELETE_AFTER_COMMIT, "true"),
    (
        TableProperties::PROPERTY_METADATA_PREVIOUS_VERSIONS_MAX,
        "5",
    ),
];

/// Properties of a table's current snapshot that the next one carries forward: the
/// lander's marks, model watermarks, and whatever else is `sluice.*`.
const CARRIED_PREFIX: &str = "sluice.";
/// Properties of model runs (watermarks, run id): a model commit states all of them.
const MODEL_PREFIX: &str = "sluice.model.";
/// Properties that belong to the one commit that set them.
const NOT_CARRIED: &[&str] = &[MARKS_DELTA_KEY, COMMIT_ID_KEY, "sluice.compaction"];

/// Why a commit did not go in.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another commit changed the table first; nothing was applied. Retry on the new state.
    #[error("another commit changed the table first (this one was not applied)")]
    Conflict,
    /// A file to remove is no longer in the table (another commit removed it first).
    #[error("data file {0} is no longer in the table")]
    Missing(String),
    /// There is no snapshot to remove files from.
    #[error("the table has no snapshot to rewrite")]
    Empty,
    /// The table's partition spec changed since the files to add were written: nothing
    /// was applied. Write them again under the table's spec.
    #[error(
        "the table's partition spec changed since its files were written (spec {written}, now {now})"
    )]
    SpecChanged {
        /// The spec the files were written under.
        written: i32,
        /// The table's default spec now.
        now: i32,
    },
    /// The table is of a kind this writer does not write.
    #[error("{0}")]
    Unsupported(String),
    /// Storage or metadata trouble before the swap: nothing was applied.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// The swap itself failed: the commit may or may not be in. Its files are kept; load
    /// the table to find out.
    #[error("catalog database: {0}")]
    Unknown(#[from] sqlx::Error),
    /// The catalog database could not be read before committing: nothing was applied.
    #[error("catalog database: {0}")]
    Read(#[source] sqlx::Error),
    /// The progress marks could not be read or written.
    #[error(transparent)]
    Marks(Box<crate::lake::marks::ProgressError>),
}

impl From<crate::lake::marks::ProgressError> for CommitError {
    fn from(e: crate::lake::marks::ProgressError) -> Self {
        Self::Marks(Box::new(e))
    }
}

impl CommitError {
    /// Whether trying again (on the table as the catalog has it now) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Empty | Self::Unsupported(_) => false,
            Self::Marks(e) => e.retryable(),
            _ => true,
        }
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Conflict | Self::Missing(_) | Self::SpecChanged { .. } => "conflict",
            Self::Empty | Self::Unsupported(_) => "unsupported",
            Self::Iceberg(_) => "storage",
            Self::Unknown(_) | Self::Read(_) => "catalog",
            Self::Marks(e) => e.reason(),
        }
    }
}

/// A table as this process last committed or loaded it, with its current snapshot's
/// manifest list once known, and the live files of the manifests its commits rewrite.
#[derive(Debug, Clone)]
pub struct Head {
    table: Table,
    manifests: Option<Arc<Vec<ManifestFile>>>,
    cache: ManifestCache,
}

impl Head {
    /// A table as loaded from the catalog.
    pub fn new(table: Table) -> Self {
        Self {
            table,
            manifests: None,
            cache: ManifestCache::default(),
        }
    }

    /// The same table as loaded again (after another writer's commit): the manifests this
    /// head knows are still good for any version of the table, and its manifest list too
    /// if the current snapshot is the same (a commit that changed only metadata).
    pub fn reloaded(&self, table: Table) -> Self {
        let same =
            table.metadata().current_snapshot_id() == self.table.metadata().current_snapshot_id();
        Self {
            table,
            manifests: self.manifests.clone().filter(|_| same),
            cache: self.cache.clone(),
        }
    }

    /// The table as of this head.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The metadata file this head is at.
    pub fn location(&self) -> Option<&str> {
        self.table.metadata_location()
    }

    /// The current snapshot's manifest list.
    async fn manifests(&self) -> Result<Arc<Vec<ManifestFile>>, iceberg::Error> {
        if let Some(m) = &self.manifests {
            return Ok(m.clone());
        }
        Ok(Arc::new(match self.table.metadata().current_snapshot() {
            Some(s) => manifest_list(&self.table, s).await?.entries().to_vec(),
            None => Vec::new(),
        }))
    }
}

/// One change to a table: these data files (by path) out, those in, in one snapshot.
#[derive(Debug, Clone)]
pub struct Change {
    /// What the snapshot says it did: `append` (lander, incremental models), `replace`
    /// (compaction: the same rows in other files) or `overwrite` (recomputed models).
    pub operation: Operation,
    /// Data files the snapshot adds.
    pub add: Vec<DataFile>,
    /// The partition spec they were written under: the table's default when they were
    /// written. If the default moved since, the commit fails and they are written again.
    pub spec_id: i32,
    /// Paths of live data files the snapshot removes; each must still be live, or the
    /// commit fails (another rewrite got there first).
    pub remove: HashSet<String>,
    /// Snapshot properties (carried `sluice.*` ones are kept unless set here).
    pub properties: HashMap<String, String>,
}

impl Change {
    /// Append `files`, written under partition spec `spec_id`.
    pub fn append(files: Vec<DataFile>, spec_id: i32, properties: HashMap<String, String>) -> Self {
        Self {
            operation: Operation::Append,
            add: files,
            spec_id,
            remove: HashSet::new(),
            properties,
        }
    }
}

/// What a commit did.
#[derive(Debug)]
pub struct Committed {
    /// The table as of this commit.
    pub head: Head,
    /// Manifests merged into its new one.
    pub merged: usize,
}

/// Commit `change` on top of `head`'s current snapshot (or as the first snapshot of an
/// empty table, when nothing is removed).
pub async fn commit(
    swap: &CatalogSwap,
    head: &Head,
    change: &Change,
) -> Result<Committed, CommitError> {
    let meta = head.table.metadata();
    if meta.format_version() != FormatVersion::V2 {
        return Err(CommitError::Unsupported(format!(
            "table {} is of Iceberg format {}; this processor writes format 2 tables",
            head.table.identifier(),
            meta.format_version()
        )));
    }
    let current = meta.current_snapshot().map(|s| &**s);
    if current.is_none() && !change.remove.is_empty() {
        return Err(CommitError::Empty);
    }
    let mut written = Written::new(&head.table);
    let result = build_and_swap(swap, head, change, &mut written).await;
    written.settle(&result).await;
    result
}

/// Files a commit wrote, to remove if it does not go in.
pub(super) struct Written<'a> {
    table: &'a Table,
    paths: Vec<String>,
}

impl<'a> Written<'a> {
    pub(super) fn new(table: &'a Table) -> Self {
        Self {
            table,
            paths: Vec::new(),
        }
    }

    fn push(&mut self, path: String) -> String {
        self.paths.push(path.clone());
        path
    }

    /// Remove the files unless the commit went in, or may have (a swap of unknown
    /// outcome: its files may be the table's now).
    pub(super) async fn settle<T>(self, result: &Result<T, CommitError>) {
        if matches!(result, Ok(_) | Err(CommitError::Unknown(_))) {
            return;
        }
        for path in self.paths {
            if let Err(e) = self.table.file_io().delete(&path).await {
                tracing::warn!(%path, "cannot remove a file of a failed commit: {e}");
            }
        }
    }
}

/// A metadata-only commit: `change` applied to the table's metadata as `head` has it,
/// published with no new snapshot. A conflict means another writer moved the table first.
pub(super) async fn commit_metadata(
    swap: &CatalogSwap,
    head: &Head,
    change: impl FnOnce(TableMetadataBuilder) -> Result<TableMetadataBuilder, iceberg::Error>,
) -> Result<Head, CommitError> {
    let table = head.table();
    let built = change(TableMetadataBuilder::new_from_metadata(
        table.metadata().clone(),
        Some(table.metadata_location_result()?.to_string()),
    ))?
    .build()?;
    let mut written = Written::new(table);
    let result = publish(swap, table, built, &mut written).await;
    written.settle(&result).await;
    Ok(head.reloaded(result?))
}

/// Write `built` as the table's next metadata file and swap it in; then delete the
/// metadata files that fell out of the log. Returns the table as committed.
pub(super) async fn publish(
    swap: &CatalogSwap,
    table: &Table,
    built: TableMetadataBuildResult,
    written: &mut Written<'_>,
) -> Result<Table, CommitError> {
    let old_location = table.metadata_location_result()?;
    let new_location = MetadataLocation::from_str(old_location)?.with_next_version();
    let new_location_str = written.push(new_location.to_string());
    let t0 = std::time::Instant::now();
    built
        .metadata
        .write_to(table.file_io(), &new_location)
        .await?;
    let t1 = std::time::Instant::now();
    if !swap
        .compare_and_swap(table.identifier(), old_location, &new_location_str)
        .await?
    {
        return Err(CommitError::Conflict);
    }
    let t2 = std::time::Instant::now();
    if delete_after_commit(&built.metadata) {
        for old in &built.expired_metadata_logs {
            if let Err(e) = table.file_io().delete(&old.metadata_file).await {
                tracing::warn!(path = %old.metadata_file, "cannot remove an old metadata file: {e}");
            }
        }
    }
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
    tracing::debug!(
        write_ms = ms(t0, t1),
        swap_ms = ms(t1, t2),
        delete_ms = ms(t2, std::time::Instant::now()),
        "metadata published"
    );
    Ok(head_table(table, built.metadata, new_location_str)?)
}

async fn build_and_swap(
    swap: &CatalogSwap,
    head: &Head,
    change: &Change,
    written: &mut Written<'_>,
) -> Result<Committed, CommitError> {
    let table = &head.table;
    let meta = table.metadata();
    let file_io = table.file_io();
    let current = meta.current_snapshot().map(|s| &**s);
    let parent_id = current.map(Snapshot::snapshot_id);
    let snapshot_id = loop {
        let id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
        if id != 0 && meta.snapshot_by_id(id).is_none() {
            break id;
        }
    };
    let seq = meta.next_sequence_number();
    let spec = meta.default_partition_spec().as_ref().clone();
    if !change.add.is_empty() && change.spec_id != spec.spec_id() {
        return Err(CommitError::SpecChanged {
            written: change.spec_id,
            now: spec.spec_id(),
        });
    }
    let dir = format!("{}/metadata", meta.location().trim_end_matches('/'));
    let tag = uuid::Uuid::now_v7();
    let mut count = 0usize;
    // A manifest holds files of one spec: the default for added files, its own for one
    // rewritten (it may predate a change of the spec).
    let mut new_manifest = |written: &mut Written<'_>,
                            spec: &iceberg::spec::PartitionSpec|
     -> Result<ManifestWriter, iceberg::Error> {
        count += 1;
        let path = written.push(format!("{dir}/{tag}-m{count}.avro"));
        Ok(ManifestWriterBuilder::new(
            file_io.new_output(&path)?,
            Some(snapshot_id),
            meta.current_schema().clone(),
            spec.clone(),
        )
        .build_v2_data())
    };

    let t0 = std::time::Instant::now();
    let existing = head.manifests().await?;
    // Manifests that hold files to remove are rewritten; the others are kept as they are.
    let mut kept: Vec<ManifestFile> = Vec::with_capacity(existing.len() + 1);
    let mut rewritten: Vec<ManifestFile> = Vec::new();
    // The live files of each manifest written, for the head's cache once committed.
    let mut known: Vec<Vec<LiveFile>> = Vec::new();
    let mut removed: Vec<DataFile> = Vec::new();
    for mf in existing.iter() {
        if change.remove.is_empty() || mf.content != ManifestContentType::Data {
            kept.push(mf.clone());
            continue;
        }
        let live = head.cache.live(mf, file_io).await?;
        if !live
            .iter()
            .any(|f| change.remove.contains(f.file.file_path()))
        {
            kept.push(mf.clone());
            continue;
        }
        let own = meta
            .partition_spec_by_id(mf.partition_spec_id)
            .ok_or_else(|| {
                iceberg::Error::new(
                    iceberg::ErrorKind::DataInvalid,
                    format!(
                        "manifest {} names partition spec {}, which the table lacks",
                        mf.manifest_path, mf.partition_spec_id
                    ),
                )
            })?
            .as_ref()
            .clone();
        let mut w = new_manifest(written, &own)?;
        let mut left = Vec::with_capacity(live.len());
        for f in live.iter() {
            if change.remove.contains(f.file.file_path()) {
                removed.push(f.file.clone());
                w.add_delete_file(f.file.clone(), f.sequence_number, f.file_sequence_number)?;
            } else {
                add_existing(&mut w, f)?;
                left.push(f.clone());
            }
        }
        rewritten.push(w.write_manifest_file().await?);
        known.push(left);
    }
    let found: HashSet<&str> = removed.iter().map(|f| f.file_path()).collect();
    if let Some(missing) = change.remove.iter().find(|p| !found.contains(p.as_str())) {
        return Err(CommitError::Missing(missing.clone()));
    }

    // Added files, with the newest small manifests merged in once there are enough.
    let mut merged = 0;
    if !change.add.is_empty() {
        let picked: Vec<ManifestFile> = MergePolicy::of(meta.properties())
            .pick(&kept, spec.spec_id())
            .into_iter()
            .cloned()
            .collect();
        let mut w = new_manifest(written, &spec)?;
        let mut live = Vec::with_capacity(change.add.len());
        for file in &change.add {
            w.add_file(file.clone(), seq)?;
            live.push(LiveFile::added(file.clone(), snapshot_id, seq));
        }
        // Entries deleted by earlier snapshots are history: a merge drops them.
        for mf in &picked {
            for f in head.cache.live(mf, file_io).await?.iter() {
                add_existing(&mut w, f)?;
                live.push(f.clone());
            }
        }
        merged = picked.len();
        let gone: HashSet<&str> = picked.iter().map(|m| m.manifest_path.as_str()).collect();
        kept.retain(|m| !gone.contains(m.manifest_path.as_str()));
        rewritten.insert(0, w.write_manifest_file().await?);
        known.insert(0, live);
    }
    // The new manifests first, as Iceberg lists them; their sequence numbers are this
    // commit's (the list writer assigns the same).
    let mut manifests = rewritten;
    for m in &mut manifests {
        if m.sequence_number == UNASSIGNED_SEQUENCE_NUMBER {
            m.sequence_number = seq;
        }
        if m.min_sequence_number == UNASSIGNED_SEQUENCE_NUMBER {
            m.min_sequence_number = seq;
        }
    }
    manifests.extend(kept);

    let t1 = std::time::Instant::now();
    let list_path = written.push(format!("{dir}/snap-{snapshot_id}-1-{tag}.avro"));
    let mut lw = ManifestListWriter::v2(
        file_io.new_output(&list_path)?.writer().await?,
        snapshot_id,
        parent_id,
        seq,
    );
    lw.add_manifests(manifests.iter().cloned())?;
    lw.close().await?;
    let t2 = std::time::Instant::now();

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
        .with_summary(summary(current, &removed, change))
        .with_schema_id(meta.current_schema_id())
        .build();
    let old_location = table.metadata_location_result()?.to_string();
    let mut builder =
        TableMetadataBuilder::new_from_metadata(meta.clone(), Some(old_location.clone()));
    let missing = missing_defaults(meta);
    if !missing.is_empty() {
        builder = builder.set_properties(missing)?;
    }
    let built = builder
        .add_snapshot(snapshot)?
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        )?
        .build()?;
    let t3 = std::time::Instant::now();
    let table = publish(swap, table, built, written).await?;
    // The manifests written come first in the list, in the order of `known`.
    for (mf, live) in manifests.iter().zip(known) {
        head.cache.insert(&mf.manifest_path, live);
    }
    head.cache.keep_only(&manifests);
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1e3;
    tracing::debug!(
        manifests = manifests.len(),
        merged,
        manifests_ms = ms(t0, t1),
        list_ms = ms(t1, t2),
        build_ms = ms(t2, t3),
        publish_ms = ms(t3, std::time::Instant::now()),
        "snapshot committed"
    );
    Ok(Committed {
        head: Head {
            table,
            manifests: Some(Arc::new(manifests)),
            cache: head.cache.clone(),
        },
        merged,
    })
}

/// Carry a live file into a rewritten manifest as it was added.
fn add_existing(w: &mut ManifestWriter, f: &LiveFile) -> Result<(), iceberg::Error> {
    w.add_existing_file(
        f.file.clone(),
        f.snapshot_id,
        f.sequence_number,
        f.file_sequence_number,
    )
}

/// Defaults of [`TABLE_DEFAULTS`] the table does not set.
fn missing_defaults(meta: &TableMetadata) -> HashMap<String, String> {
    TABLE_DEFAULTS
        .iter()
        .filter(|(k, _)| !meta.properties().contains_key(*k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether old metadata files are deleted once out of the log.
pub fn delete_after_commit(meta: &TableMetadata) -> bool {
    meta.properties()
        .get(DELETE_AFTER_COMMIT)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The table object for newly committed metadata.
pub fn head_table(
    old: &Table,
    metadata: TableMetadata,
    location: String,
) -> Result<Table, iceberg::Error> {
    Table::builder()
        .file_io(old.file_io().clone())
        .metadata(Arc::new(metadata))
        .metadata_location(location)
        .identifier(old.identifier().clone())
        .runtime(Runtime::try_current()?)
        // A head is for committing: no scans read through it.
        .disable_cache()
        .build()
}

/// The new snapshot's summary: carried properties, the change's, and updated totals.
fn summary(current: Option<&Snapshot>, removed: &[DataFile], change: &Change) -> Summary {
    let none = HashMap::new();
    let prev = current.map_or(&none, |c| &c.summary().additional_properties);
    let mut props = carried(prev, &change.properties);
    props.extend(change.properties.clone());
    let total = |k: &str| prev.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let sum = |files: &[DataFile], f: fn(&DataFile) -> u64| {
        files.iter().map(|x| f(x) as i64).sum::<i64>()
    };
    let (add_n, del_n) = (change.add.len() as i64, removed.len() as i64);
    let (add_rows, del_rows) = (
        sum(&change.add, DataFile::record_count),
        sum(removed, DataFile::record_count),
    );
    let (add_bytes, del_bytes) = (
        sum(&change.add, DataFile::file_size_in_bytes),
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
        operation: change.operation.clone(),
        additional_properties: props,
    }
}

/// The `sluice.*` properties of the previous snapshot that a snapshot setting `new`
/// carries forward.
fn carried(
    prev: &HashMap<String, String>,
    new: &HashMap<String, String>,
) -> HashMap<String, String> {
    // A model commit states all its watermarks: inputs it no longer reads are dropped.
    let fresh_model = new.keys().any(|k| k.starts_with(MODEL_PREFIX));
    // Marks in the current layout replace those of the earlier one.
    let marks_now = new.contains_key(MARKS_KEY) || prev.contains_key(MARKS_KEY);
    prev.iter()
        .filter(|(k, _)| k.starts_with(CARRIED_PREFIX))
        .filter(|(k, _)| !NOT_CARRIED.contains(&k.as_str()))
        .filter(|(k, _)| !(fresh_model && k.starts_with(MODEL_PREFIX)))
        .filter(|(k, _)| !(marks_now && Marks::is_legacy_key(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests;

//! Compaction: bin-pack a table's small data files (per partition) into files of about the
//! target size, and commit the swap as one `replace` snapshot (see `lake/snapshot.rs`). History is
//! kept: older snapshots still read the old files until they are expired.
//!
//! Safety: the rows read back from each bin are counted against the manifests' record
//! counts before anything is written, and the written files against the rows read, before
//! the commit. A commit that loses a race is retried on the new table state (the bins are
//! planned again); it is never reported as done.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use iceberg::spec::{DataFile, Operation};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};

use crate::concat;
use crate::config::Compression;
use crate::lake::{CatalogSwap, Change, CommitError, Head};
use crate::locks::CommitLocks;

/// How compaction packs files.
#[derive(Debug, Clone, Copy)]
pub struct CompactionOptions {
    /// Size of the files written, and the most a bin holds.
    pub target_file_size: u64,
    /// Files at least this big are left alone (default: three quarters of the target).
    pub small_file_size: u64,
    /// Bins whose row groups average at least this size are merged by copying the row
    /// groups' encoded bytes; smaller row groups are decoded and re-encoded into large ones.
    pub copy_row_group_size: u64,
    pub compression: Compression,
}

impl CompactionOptions {
    pub fn new(target_file_size: u64, compression: Compression) -> Self {
        Self {
            target_file_size,
            small_file_size: target_file_size / 4 * 3,
            copy_row_group_size: 4 << 20,
            compression,
        }
    }
}

/// What one compaction of one table did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CompactionReport {
    pub table: String,
    pub files_before: usize,
    pub files_after: usize,
    pub files_rewritten: usize,
    pub files_written: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub rows_rewritten: u64,
    /// Bins merged by copying encoded row groups (the others were re-encoded).
    pub bins_copied: usize,
    pub bins_reencoded: usize,
    /// Commits that lost a race and were retried.
    pub conflicts: u32,
    pub elapsed_ms: u64,
}

/// Why compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactionError {
    #[error("not compacting: {0}")]
    Read(#[from] crate::lake::ReadError),
    #[error("wrote {written} rows for {read} read; not committing")]
    WriteMismatch { written: u64, read: u64 },
    #[error("gave up after {0} conflicting commits")]
    TooManyConflicts(u32),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Bins of small files (paths and sizes), each worth rewriting into fewer files.
pub fn plan(files: &[DataFile], opts: &CompactionOptions) -> Vec<Vec<DataFile>> {
    // Files of different partitions never share a bin (the tables have one partition spec).
    let mut by_partition: BTreeMap<String, Vec<&DataFile>> = BTreeMap::new();
    for f in files {
        if f.file_size_in_bytes() < opts.small_file_size {
            by_partition
                .entry(format!("{:?}", f.partition()))
                .or_default()
                .push(f);
        }
    }
    let mut bins = Vec::new();
    for (_, mut small) in by_partition {
        // First fit decreasing: big files first, each into the first bin it fits.
        small.sort_by_key(|f| std::cmp::Reverse(f.file_size_in_bytes()));
        let mut open: Vec<(u64, Vec<DataFile>)> = Vec::new();
        for f in small {
            let size = f.file_size_in_bytes();
            match open
                .iter_mut()
                .find(|(used, _)| used + size <= opts.target_file_size)
            {
                Some((used, bin)) => {
                    *used += size;
                    bin.push(f.clone());
                }
                None => open.push((size, vec![f.clone()])),
            }
        }
        bins.extend(open.into_iter().map(|(_, b)| b).filter(|b| b.len() >= 2));
    }
    bins
}

/// Compact the small files `ident` has now (files landing meanwhile wait for the next run);
/// `progress` hears (bins done, bins planned). Once `stopping` says so, no further bin is
/// started (the bins done are committed, each in its own snapshot).
pub async fn compact(
    catalog: &dyn Catalog,
    swap: &CatalogSwap,
    locks: &CommitLocks,
    ident: &TableIdent,
    opts: &CompactionOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
    stopping: &(dyn Fn() -> bool + Sync),
) -> Result<CompactionReport, CompactionError> {
    const MAX_CONFLICTS: u32 = 20;
    let started = Instant::now();
    let mut report = CompactionReport {
        table: format!("{}.{}", ident.namespace().join("."), ident.name()),
        ..Default::default()
    };
    let mut table = catalog.load_table(ident).await?;
    let initial: HashSet<String> = crate::lake::live_files(&table)
        .await?
        .iter()
        .map(|f| f.file_path().to_string())
        .collect();
    report.files_before = initial.len();
    loop {
        let files = crate::lake::live_files(&table).await?;
        let candidates: Vec<DataFile> = files
            .iter()
            .filter(|f| initial.contains(f.file_path()))
            .cloned()
            .collect();
        let bins = plan(&candidates, opts);
        if bins.is_empty() || stopping() {
            report.files_after = files.len();
            break;
        }
        let total = bins.len();
        tracing::info!(
            table = %report.table,
            bins = total,
            files = bins.iter().map(Vec::len).sum::<usize>(),
            "compacting"
        );
        let mut lost = false;
        for (i, bin) in bins.into_iter().enumerate() {
            if stopping() {
                break;
            }
            progress(i, total);
            match compact_bin(catalog, &table, swap, locks, &bin, opts, &mut report).await {
                Ok(()) => {}
                Err(CompactionError::Commit(CommitError::Conflict | CommitError::Missing(_))) => {
                    report.conflicts += 1;
                    tracing::info!(table = %report.table, "compaction commit lost a race; planning again");
                    if report.conflicts >= MAX_CONFLICTS {
                        return Err(CompactionError::TooManyConflicts(report.conflicts));
                    }
                    lost = true;
                }
                Err(e) => return Err(e),
            }
            table = catalog.load_table(ident).await?;
            if lost {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(report.conflicts))).await;
                break;
            }
            progress(i + 1, total);
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Rewrite one bin into new files and commit the swap.
async fn compact_bin(
    catalog: &dyn Catalog,
    table: &Table,
    swap: &CatalogSwap,
    locks: &CommitLocks,
    bin: &[DataFile],
    opts: &CompactionOptions,
    report: &mut CompactionReport,
) -> Result<(), CompactionError> {
    let mut inputs: Vec<Bytes> = Vec::with_capacity(bin.len());
    for f in bin {
        inputs.push(table.file_io().new_input(f.file_path())?.read().await?);
    }
    let bytes_read: u64 = inputs.iter().map(|b| b.len() as u64).sum();
    let prefix = format!("compact-{}", uuid::Uuid::now_v7());
    let copied = concat::row_groups(bin, &inputs, opts.copy_row_group_size)?;
    let (written, rows) = match copied {
        Some(merged) => {
            report.bins_copied += 1;
            let rows = merged.rows;
            (vec![concat::write(table, merged, &prefix).await?], rows)
        }
        None => {
            report.bins_reencoded += 1;
            reencode(table, bin, inputs, opts, &prefix).await?
        }
    };
    let written_rows: u64 = written.iter().map(DataFile::record_count).sum();
    let cleanup = |files: Vec<DataFile>| async move {
        for f in files {
            if let Err(e) = table.file_io().delete(f.file_path()).await {
                tracing::warn!(
                    path = f.file_path(),
                    "cannot remove an uncommitted compacted file: {e}"
                );
            }
        }
    };
    if written_rows != rows {
        cleanup(written).await;
        return Err(CompactionError::WriteMismatch {
            written: written_rows,
            read: rows,
        });
    }
    let bytes_written: u64 = written.iter().map(DataFile::file_size_in_bytes).sum();
    let n_written = written.len();
    let change = Change {
        remove: bin
            .iter()
            .map(|f| f.file_path().to_string())
            .collect::<HashSet<_>>(),
        add: written.clone(),
        operation: Operation::Replace,
        properties: [("sluice.compaction".to_string(), prefix)]
            .into_iter()
            .collect(),
    };
    // Under the table's lock, on its latest state: the lander may have appended since the
    // bin was read, which the replacement keeps (it removes only the bin's files).
    let committed = {
        let _lock = locks.lock(&report.table).await;
        match catalog.load_table(table.identifier()).await {
            Ok(latest) => crate::lake::snapshot::commit(swap, &Head::new(latest), &change)
                .await
                .map_err(CompactionError::from),
            Err(e) => Err(e.into()),
        }
    };
    if let Err(e) = committed {
        // After a swap of unknown outcome the files may be the table's: orphan cleanup
        // removes them if not.
        if !matches!(e, CompactionError::Commit(CommitError::Unknown(_))) {
            cleanup(written).await;
        }
        return Err(e);
    }
    report.files_rewritten += bin.len();
    report.files_written += n_written;
    report.bytes_read += bytes_read;
    report.bytes_written += bytes_written;
    report.rows_rewritten += rows;
    Ok(())
}

/// Decode the bin's rows (counted against the manifests) and write them as new files, one
/// input at a time: each file's bytes and decoders (a zstd context per column, ~40 KB each)
/// are released once its rows are written, so memory holds one input rather than the bin.
/// (Holding every input's decoder until the bin was done cost ~300 MB for a bin of 600
/// small files, and that peak, repeated every pass, left the allocator holding more RSS.)
async fn reencode(
    table: &Table,
    bin: &[DataFile],
    mut inputs: Vec<Bytes>,
    opts: &CompactionOptions,
    prefix: &str,
) -> Result<(Vec<DataFile>, u64), CompactionError> {
    let schema = crate::lake::table_arrow_schema(table)?;
    let open = |i: usize, data: Bytes| crate::lake::FileBatches::new(&schema, &bin[i], data);
    // The first batch of up to 8 files spread over the bin: the writer's sample of what is
    // to come. Those files stay open, their first batch waiting to be written.
    const SAMPLED_FILES: usize = 8;
    let step = bin.len().div_ceil(SAMPLED_FILES).max(1);
    let mut started: Vec<Option<(crate::lake::FileBatches, Option<RecordBatch>)>> =
        (0..bin.len()).map(|_| None).collect();
    for i in (0..bin.len()).step_by(step) {
        let mut file = open(i, std::mem::take(&mut inputs[i]))?;
        let head = file.next().transpose()?;
        started[i] = Some((file, head));
    }
    let sample: Vec<RecordBatch> = started
        .iter()
        .flatten()
        .filter_map(|(_, head)| head.clone())
        .collect();
    let mut writer = crate::lake::DataFilesWriter::new(
        table,
        &sample,
        prefix,
        opts.compression,
        Some(usize::try_from(opts.target_file_size).unwrap_or(usize::MAX)),
    )
    .await?;
    drop(sample);
    let mut rows = 0u64;
    for (i, slot) in started.into_iter().enumerate() {
        let (file, head) = match slot {
            Some(opened) => opened,
            None => match open(i, std::mem::take(&mut inputs[i])) {
                Ok(file) => (file, None),
                Err(e) => {
                    writer.abandon().await;
                    return Err(e.into());
                }
            },
        };
        for batch in head.into_iter().map(Ok).chain(file) {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    writer.abandon().await;
                    return Err(e.into());
                }
            };
            rows += batch.num_rows() as u64;
            writer.write(batch).await?;
        }
    }
    Ok((writer.close().await?, rows))
}

/// Every table of every namespace.
pub async fn all_tables(catalog: &dyn Catalog) -> Result<Vec<TableIdent>, iceberg::Error> {
    let mut out = Vec::new();
    for ns in catalog.list_namespaces(None).await? {
        out.extend(catalog.list_tables(&ns).await?);
    }
    out.sort_by_key(|t| (t.namespace().join("."), t.name().to_string()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Struct};

    fn file(path: &str, size: u64) -> DataFile {
        DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(path.to_string())
            .file_format(DataFileFormat::Parquet)
            .file_size_in_bytes(size)
            .record_count(size / 10)
            .partition(Struct::empty())
            .partition_spec_id(0)
            .build()
            .expect("data file")
    }

    #[test]
    fn bins_pack_small_files_up_to_the_target() {
        let opts = CompactionOptions::new(100, Compression::Zstd);
        let files: Vec<DataFile> = [10, 20, 30, 40, 50, 60, 80, 95, 5]
            .iter()
            .enumerate()
            .map(|(i, s)| file(&format!("f{i}"), *s))
            .collect();
        let bins = plan(&files, &opts);
        // 80 and 95 are not small (>= 75); the rest packs first-fit decreasing.
        let sizes: Vec<Vec<u64>> = bins
            .iter()
            .map(|b| b.iter().map(DataFile::file_size_in_bytes).collect())
            .collect();
        assert_eq!(sizes, vec![vec![60, 40], vec![50, 30, 20], vec![10, 5]]);
        for b in &bins {
            assert!(b.iter().map(DataFile::file_size_in_bytes).sum::<u64>() <= 100);
        }
        // One small file alone is not worth a rewrite.
        assert!(plan(&[file("a", 10), file("b", 90)], &opts).is_empty());
    }
}

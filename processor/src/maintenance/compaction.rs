//! Compaction: bin-pack a table's small data files (per partition) into files of about the
//! target size, and commit the swap as one `replace` snapshot (see `lake/snapshot.rs`). History is
//! kept: older snapshots still read the old files until they are expired.
//!
//! Passes run by `serve` are size-tiered: files are merged only with files of about their
//! size (tiers `tier_fanout` times apart), once a tier holds enough of them. A row is then
//! rewritten about log(target / commit size) times in its life, and a pass reads what the
//! last passes added rather than the table's growing compacted file each time (which made
//! a pass's reads, and the processor's memory, grow with the table's age).
//!
//! Safety: the rows read back from each bin are counted against the manifests' record
//! counts before anything is written, and the written files against the rows read, before
//! the commit. A commit that loses a race is retried on the new table state (the bins are
//! planned again); it is never reported as done.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use iceberg::spec::{DataFile, Operation};
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};

use crate::lake::Compression;
use crate::lake::locks::CommitLocks;
use crate::lake::{CatalogSwap, Change, CommitError};
use crate::maintenance::{MaintenanceError, concat};

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
    /// Parquet compression of the re-encoded files (`[lander] compression`); copied row
    /// groups keep their own.
    pub compression: Compression,
    /// Size ratio between tiers; `None` packs every small file regardless of size (a
    /// one-off `maintain compact` does, to leave as few files as it can).
    pub tier_fanout: Option<u64>,
}

impl CompactionOptions {
    /// Size-tiered compaction, as `serve` runs it.
    pub fn new(target_file_size: u64, compression: Compression) -> Self {
        Self {
            target_file_size,
            small_file_size: target_file_size / 4 * 3,
            copy_row_group_size: 4 << 20,
            compression,
            tier_fanout: Some(4),
        }
    }

    /// The tier of a small file of `size` bytes: 0 below the smallest bound (the small-file
    /// size divided by the fanout three times: 1.5 MiB for a 128 MiB target), one more for
    /// each `fanout` times above it. A row is rewritten while its file grows through tier 0,
    /// then once per tier: a bounded number of times, whatever the table's age.
    fn tier(&self, size: u64) -> u32 {
        let Some(fanout) = self.tier_fanout.filter(|f| *f >= 2) else {
            return 0;
        };
        let base = (self.small_file_size / fanout.saturating_pow(3)).max(1);
        (size / base)
            .checked_ilog(fanout)
            .map_or(0, |above| above + 1)
    }

    /// Files a tier must hold before it is merged: any two of the smallest (commit-sized
    /// files are never worth keeping apart), `fanout` of the others (so a compacted file
    /// waits until files of its size have built up, instead of being rewritten each pass).
    fn tier_min_files(&self, tier: u32) -> usize {
        match (tier, self.tier_fanout) {
            (0, _) | (_, None) => 2,
            (_, Some(fanout)) => usize::try_from(fanout).unwrap_or(usize::MAX).max(2),
        }
    }
}

/// What one compaction of one table did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CompactionReport {
    /// `namespace.table`.
    pub table: String,
    /// Live data files when the run started.
    pub files_before: usize,
    /// Live data files when it ended, those landed meanwhile included.
    pub files_after: usize,
    /// Small files replaced by the bins committed.
    pub files_rewritten: usize,
    /// Files written in their place.
    pub files_written: usize,
    /// Bytes of the files replaced.
    pub bytes_read: u64,
    /// Bytes of the files written in their place.
    pub bytes_written: u64,
    /// Rows moved to new files; the table holds as many rows as before.
    pub rows_rewritten: u64,
    /// Bins merged by copying encoded row groups (the others were re-encoded).
    pub bins_copied: usize,
    /// Bins decoded and encoded anew, as their row groups were too small to copy; counted,
    /// like `bins_copied`, even when their commit then failed.
    pub bins_reencoded: usize,
    /// Commits that lost a race and were retried.
    pub conflicts: u32,
    /// Wall-clock time of the run, in milliseconds.
    pub elapsed_ms: u64,
}

/// Bins of small files (paths and sizes), each worth rewriting into fewer files.
pub fn plan(files: &[DataFile], opts: &CompactionOptions) -> Vec<Vec<DataFile>> {
    // Files of different partitions never share a bin (the caller bins each partition spec
    // apart), nor do files of different tiers.
    let mut groups: BTreeMap<(String, u32), Vec<&DataFile>> = BTreeMap::new();
    for f in files {
        let size = f.file_size_in_bytes();
        if size < opts.small_file_size {
            groups
                .entry((format!("{:?}", f.partition()), opts.tier(size)))
                .or_default()
                .push(f);
        }
    }
    let mut bins = Vec::new();
    for ((_, tier), mut small) in groups {
        if small.len() < opts.tier_min_files(tier) {
            continue;
        }
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
) -> Result<CompactionReport, MaintenanceError> {
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
        let files = crate::lake::live_files_by_spec(&table).await?;
        // Files of each partition spec are binned apart. Those of an earlier spec are
        // decoded and written again (under the table's spec now): their row groups cannot
        // be copied into a file of another partitioning.
        let default_spec = table.metadata().default_partition_spec_id();
        let mut by_spec: BTreeMap<i32, Vec<DataFile>> = BTreeMap::new();
        for (spec, f) in files
            .iter()
            .filter(|(_, f)| initial.contains(f.file_path()))
        {
            by_spec.entry(*spec).or_default().push(f.clone());
        }
        let bins: Vec<(bool, Vec<DataFile>)> = by_spec
            .iter()
            .flat_map(|(spec, candidates)| {
                plan(candidates, opts)
                    .into_iter()
                    .map(move |bin| (*spec == default_spec, bin))
            })
            .collect();
        if bins.is_empty() || stopping() {
            report.files_after = files.len();
            break;
        }
        let total = bins.len();
        tracing::info!(
            table = %report.table,
            bins = total,
            files = bins.iter().map(|(_, b)| b.len()).sum::<usize>(),
            "compacting"
        );
        let mut lost = false;
        for (i, (copyable, bin)) in bins.into_iter().enumerate() {
            if stopping() {
                break;
            }
            progress(i, total);
            let bin = Bin {
                files: &bin,
                copyable,
            };
            match compact_bin(catalog, &table, swap, locks, bin, opts, &mut report).await {
                Ok(()) => {}
                Err(MaintenanceError::Commit(CommitError::Conflict | CommitError::Missing(_))) => {
                    report.conflicts += 1;
                    tracing::info!(table = %report.table, "compaction commit lost a race; planning again");
                    if report.conflicts >= MAX_CONFLICTS {
                        return Err(MaintenanceError::TooManyConflicts(report.conflicts));
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

/// Small files of one partition to rewrite into fewer.
#[derive(Clone, Copy)]
struct Bin<'a> {
    files: &'a [DataFile],
    /// Of the table's partition spec now, so their row groups may be copied as they are.
    copyable: bool,
}

/// Rewrite one bin into new files and commit the swap.
async fn compact_bin(
    catalog: &dyn Catalog,
    table: &Table,
    swap: &CatalogSwap,
    locks: &CommitLocks,
    Bin {
        files: bin,
        copyable,
    }: Bin<'_>,
    opts: &CompactionOptions,
    report: &mut CompactionReport,
) -> Result<(), MaintenanceError> {
    // Files averaging less than a copyable row group cannot be copied: they are re-encoded
    // without a look at their footers (one read per file, not two). For the others, the
    // footers decide, and their row counts are checked against the manifests before anything
    // is written. The data is read later, a file or a row group at a time.
    let bytes_read: u64 = bin.iter().map(DataFile::file_size_in_bytes).sum();
    let mut metas = Vec::new();
    if copyable && bytes_read / (bin.len() as u64).max(1) > opts.copy_row_group_size {
        for f in bin {
            metas.push(concat::footer(table, f).await?);
        }
    }
    let prefix = format!("compact-{}", uuid::Uuid::now_v7());
    let (written, rows) = if concat::copyable(&metas, opts.copy_row_group_size) {
        report.bins_copied += 1;
        let merged = concat::copy(table, bin, &metas, &prefix).await?;
        (vec![merged], bin.iter().map(DataFile::record_count).sum())
    } else {
        report.bins_reencoded += 1;
        drop(metas);
        reencode(table, bin, opts, &prefix).await?
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
        return Err(MaintenanceError::WriteMismatch {
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
        spec_id: table.metadata().default_partition_spec_id(),
        operation: Operation::Replace,
        properties: [("sluice.compaction".to_string(), prefix)]
            .into_iter()
            .collect(),
    };
    // Under the table's lock, on its latest state: the lander may have appended since the
    // bin was read, which the replacement keeps (it removes only the bin's files).
    let committed = async {
        let mut locked = locks.lock(&report.table).await;
        let latest = locked.head(swap, catalog, table.identifier()).await?;
        let done = crate::lake::snapshot::commit(swap, &latest, &change).await?;
        locked.committed(&done.head);
        Ok::<_, MaintenanceError>(())
    }
    .await;
    if let Err(e) = committed {
        // After a swap of unknown outcome the files may be the table's: orphan cleanup
        // removes them if not.
        if !matches!(e, MaintenanceError::Commit(CommitError::Unknown(_))) {
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
/// input at a time: each file is read when its turn comes, and its bytes and decoders (a
/// zstd context per column, ~40 KB each) are released once its rows are written, so memory
/// holds one input rather than the bin. (Holding every input's decoder until the bin was
/// done cost ~300 MB for a bin of 600 small files, and that peak, repeated every pass, left
/// the allocator holding more RSS.)
async fn reencode(
    table: &Table,
    bin: &[DataFile],
    opts: &CompactionOptions,
    prefix: &str,
) -> Result<(Vec<DataFile>, u64), MaintenanceError> {
    let schema = crate::lake::table_arrow_schema(table)?;
    let open = async |i: usize| -> Result<crate::lake::FileBatches, MaintenanceError> {
        let data = table
            .file_io()
            .new_input(bin[i].file_path())?
            .read()
            .await?;
        Ok(crate::lake::FileBatches::new(&schema, &bin[i], data)?)
    };
    // The first batch of up to 8 files spread over the bin: the writer's sample of what is
    // to come. Those files stay open, their first batch waiting to be written, so they are
    // sampled only while they hold less than 16 MiB together (a bin of a few large files is
    // sampled from its first).
    const SAMPLED_FILES: usize = 8;
    const SAMPLED_BYTES: u64 = 16 << 20;
    let step = bin.len().div_ceil(SAMPLED_FILES).max(1);
    let mut started: Vec<Option<(crate::lake::FileBatches, Option<RecordBatch>)>> =
        (0..bin.len()).map(|_| None).collect();
    let mut sampled_bytes = 0u64;
    for i in (0..bin.len()).step_by(step) {
        sampled_bytes += bin[i].file_size_in_bytes();
        if i > 0 && sampled_bytes > SAMPLED_BYTES {
            break;
        }
        let mut file = open(i).await?;
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
            None => match open(i).await {
                Ok(file) => (file, None),
                Err(e) => {
                    writer.abandon().await;
                    return Err(e);
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

    fn data_file(path: &str, size: u64, rows: u64) -> DataFile {
        DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(path.to_string())
            .file_format(DataFileFormat::Parquet)
            .file_size_in_bytes(size)
            .record_count(rows)
            .partition(Struct::empty())
            .partition_spec_id(0)
            .build()
            .expect("data file")
    }

    fn file(path: &str, size: u64) -> DataFile {
        data_file(path, size, size / 10)
    }

    #[test]
    fn bins_pack_small_files_up_to_the_target() {
        let opts = CompactionOptions {
            tier_fanout: None,
            ..CompactionOptions::new(100, Compression::Zstd)
        };
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

    /// Write `ids` to a Parquet file of the `events` table, `per_group` rows per row group.
    async fn write_ids(
        table: &Table,
        name: &str,
        ids: std::ops::Range<i64>,
        per_group: usize,
    ) -> DataFile {
        let schema = crate::lake::table_arrow_schema(table).expect("schema");
        // `id` and the lander's columns (agent, seq, time), each cast from the ids.
        let ids_array = arrow_array::Int64Array::from_iter_values(ids.clone());
        let columns = schema
            .fields()
            .iter()
            .map(|f| arrow_cast::cast(&ids_array, f.data_type()).expect("cast"))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(per_group))
            .build();
        let mut out = Vec::new();
        let mut w =
            parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props)).expect("writer");
        // A slice per row group: the writer recurses once per row group a batch spans.
        for at in (0..batch.num_rows()).step_by(per_group) {
            let len = per_group.min(batch.num_rows() - at);
            w.write(&batch.slice(at, len)).expect("write");
        }
        w.close().expect("close");
        let path = format!("{}/data/{name}.parquet", table.metadata().location());
        let size = out.len() as u64;
        table
            .file_io()
            .new_output(&path)
            .expect("output")
            .write(out.into())
            .await
            .expect("upload");
        data_file(&path, size, ids.count() as u64)
    }

    #[tokio::test]
    async fn a_bin_is_copied_a_row_group_at_a_time_from_footers_past_the_first_read() {
        use crate::testing::{TestLake, ids_in, land_batch};
        let lake = TestLake::new().await;
        let lander = lake.lander();
        let landed = land_batch(&lander, "edge", 1).await;
        lander.flush().await;
        assert_eq!(landed.await, Ok(crate::land::lander::Verdict::Committed));
        let table = lake.table("events").await;
        // 4,000 one-row row groups: a footer of ~300 KB, past the 64 KiB first read.
        let a = write_ids(&table, "a", 0..4_000, 1).await;
        let b = write_ids(&table, "b", 4_000..10_000, 1_000).await;
        let metas = vec![
            concat::footer(&table, &a).await.expect("footer a"),
            concat::footer(&table, &b).await.expect("footer b"),
        ];
        assert_eq!(metas[0].num_row_groups(), 4_000);
        assert_eq!(metas[1].num_row_groups(), 6);
        assert!(concat::copyable(&metas, 0));
        assert!(
            !concat::copyable(&metas, 1 << 20),
            "tiny row groups are re-encoded"
        );
        let merged = concat::copy(&table, &[a.clone(), b], &metas, "compact-test")
            .await
            .expect("copy");
        assert_eq!(merged.record_count(), 10_000);
        assert_eq!(merged.split_offsets().map(<[i64]>::len), Some(4_006));
        assert_eq!(
            ids_in(&table, &[merged]).await,
            (0..10_000).collect::<Vec<i64>>()
        );
        // A footer that disagrees with its manifest entry stops the bin before any write.
        let wrong = data_file(a.file_path(), a.file_size_in_bytes(), 3_999);
        assert!(matches!(
            concat::footer(&table, &wrong).await,
            Err(MaintenanceError::Read(
                crate::lake::ReadError::CountMismatch { .. }
            ))
        ));
    }

    fn sizes(bins: &[Vec<DataFile>]) -> Vec<Vec<u64>> {
        bins.iter()
            .map(|b| b.iter().map(DataFile::file_size_in_bytes).collect())
            .collect()
    }

    #[test]
    fn a_compacted_file_waits_for_files_of_its_size_instead_of_being_rewritten_each_pass() {
        const MIB: u64 = 1 << 20;
        let opts = CompactionOptions::new(128 * MIB, Compression::Zstd);
        // Tiers for a 128 MiB target: < 1.5 MiB, < 6 MiB, < 24 MiB, < 96 MiB (small).
        assert_eq!(opts.tier(MIB), 0);
        assert_eq!(opts.tier(2 * MIB), 1);
        assert_eq!(opts.tier(20 * MIB), 2);
        assert_eq!(opts.tier(90 * MIB), 3);
        // A table's 14 MiB compacted file and a pass's worth of commit-sized files: only the
        // commit-sized files are merged (untiered, the big file was read again every pass).
        let mut files: Vec<DataFile> = (0..600).map(|i| file(&format!("c{i}"), 3 * 1024)).collect();
        files.push(file("compacted", 14 * MIB));
        let bins = plan(&files, &opts);
        assert_eq!(bins.len(), 1);
        assert_eq!(bins[0].len(), 600);
        assert!(bins[0].iter().all(|f| f.file_path() != "compacted"));
        let untiered = CompactionOptions {
            tier_fanout: None,
            ..opts
        };
        assert_eq!(plan(&files, &untiered)[0].len(), 601);
        // Three files of a tier wait; the fourth sets them off, and only them.
        let mut files = vec![
            file("a", 10 * MIB),
            file("b", 12 * MIB),
            file("c", 9 * MIB),
            file("small", 2 * MIB),
        ];
        assert!(plan(&files, &opts).is_empty());
        files.push(file("d", 11 * MIB));
        assert_eq!(
            sizes(&plan(&files, &opts)),
            vec![vec![12 * MIB, 11 * MIB, 10 * MIB, 9 * MIB]]
        );
        // Commit-sized files merge as soon as there are two of them.
        let bins = plan(
            &[file("x", 4096), file("y", 8192), file("z", 20 * MIB)],
            &opts,
        );
        assert_eq!(sizes(&bins), vec![vec![8192, 4096]]);
    }

    #[test]
    fn tiered_merging_rewrites_a_row_a_bounded_number_of_times() {
        // A table fed 600 commit-sized files per pass for 500 passes: each pass reads at most
        // the tiers that filled up, never the table's whole history.
        const MIB: u64 = 1 << 20;
        let opts = CompactionOptions::new(128 * MIB, Compression::Zstd);
        let mut files: Vec<DataFile> = Vec::new();
        let (mut read, mut landed, mut max_pass) = (0u64, 0u64, 0u64);
        for pass in 0..500 {
            files.extend((0..600).map(|i| file(&format!("p{pass}-{i}"), 2 * 1024)));
            landed += 600 * 2 * 1024;
            let mut pass_read = 0;
            for bin in plan(&files, &opts) {
                let size: u64 = bin.iter().map(DataFile::file_size_in_bytes).sum();
                pass_read += size;
                let gone: HashSet<&str> = bin.iter().map(DataFile::file_path).collect();
                files.retain(|f| !gone.contains(f.file_path()));
                files.push(file(&format!("m{pass}-{}", files.len()), size));
            }
            read += pass_read;
            max_pass = max_pass.max(pass_read);
        }
        // 586 MiB landed; the untiered planner read the growing file every pass (~150 GiB).
        let rewrites = read as f64 / landed as f64;
        println!(
            "read {rewrites:.2}x what landed; at most {max_pass} bytes a pass; {} files",
            files.len()
        );
        assert!(rewrites < 8.0, "each byte read {rewrites:.1} times");
        assert!(max_pass <= 128 * MIB, "one pass read {max_pass} bytes");
        assert!(files.len() < 20, "{} files left", files.len());
    }
}

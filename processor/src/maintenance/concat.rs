//! Merging Parquet data files by copying their row groups' encoded bytes (as parquet's own
//! `parquet-concat` does): no decoding, no re-encoding, so a bin of files that already have
//! large row groups is compacted at the speed of I/O. The merged file's Iceberg metrics are
//! those of its inputs combined (counts summed, bounds widened), which is exact because it
//! holds exactly their rows.
//!
//! Memory holds one row group, not the bin: the inputs' footers are read first (a range read
//! of each file's tail), then each row group is fetched by range, appended, and the written
//! bytes handed to storage before the next one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use iceberg::spec::{DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, LocationGenerator,
};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;

use crate::maintenance::MaintenanceError;

/// Read `file`'s Parquet footer (its tail only) and check its row count against the manifest.
pub async fn footer(table: &Table, file: &DataFile) -> Result<ParquetMetaData, MaintenanceError> {
    // Most footers fit in the first read; a larger one says how much it needs.
    const FIRST_READ: u64 = 64 << 10;
    let size = file.file_size_in_bytes();
    let reader = table
        .file_io()
        .new_input(file.file_path())?
        .reader()
        .await?;
    let mut tail = reader.read(size.saturating_sub(FIRST_READ)..size).await?;
    let mut parser = ParquetMetaDataReader::new();
    match parser.try_parse_sized(&tail, size) {
        Ok(()) => {}
        Err(ParquetError::NeedMoreData(needed)) => {
            let needed = u64::try_from(needed).unwrap_or(u64::MAX).min(size);
            tail = reader.read(size - needed..size).await?;
            parser.try_parse_sized(&tail, size)?;
        }
        Err(e) => return Err(e.into()),
    }
    let meta = parser.finish()?;
    let rows = u64::try_from(meta.file_metadata().num_rows()).unwrap_or(u64::MAX);
    if rows != file.record_count() {
        return Err(crate::lake::ReadError::CountMismatch {
            file: file.file_path().to_string(),
            read: rows,
            expected: file.record_count(),
        }
        .into());
    }
    Ok(meta)
}

/// Whether a bin with these footers is merged by copying: its row groups average more than
/// `min_row_group` bytes (smaller ones are worth re-encoding into large ones) and every file
/// has the same Parquet schema.
pub fn copyable(metas: &[ParquetMetaData], min_row_group: u64) -> bool {
    let groups: usize = metas.iter().map(ParquetMetaData::num_row_groups).sum();
    let bytes: u64 = metas
        .iter()
        .flat_map(|m| m.row_groups())
        .map(|rg| u64::try_from(rg.compressed_size()).unwrap_or(0))
        .sum();
    let Some(first) = metas.first() else {
        return false;
    };
    let schema = first.file_metadata().schema_descr().root_schema();
    groups > 0
        && bytes / groups as u64 > min_row_group
        && metas
            .iter()
            .all(|m| m.file_metadata().schema_descr().root_schema() == schema)
}

/// The bytes of one row group, at their offsets in the file they came from.
struct RowGroupBytes {
    start: u64,
    data: Bytes,
}

impl Length for RowGroupBytes {
    fn len(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

impl RowGroupBytes {
    fn range(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        let from = start
            .checked_sub(self.start)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| o.saturating_add(length) <= self.data.len())
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "column chunk at {start}+{length} is outside its row group"
                ))
            })?;
        Ok(self.data.slice(from..from + length))
    }
}

impl ChunkReader for RowGroupBytes {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> Result<Self::T, ParquetError> {
        let rest = (self.start + self.data.len() as u64).saturating_sub(start);
        Ok(self
            .range(start, usize::try_from(rest).unwrap_or(usize::MAX))?
            .reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.range(start, length)
    }
}

/// Merge the files of `bin` (whose footers are `metas`) into one file named after `prefix`
/// by copying their row groups, and describe it for the manifest. The caller removes the file
/// if it is not committed.
pub async fn copy(
    table: &Table,
    bin: &[DataFile],
    metas: &[ParquetMetaData],
    prefix: &str,
) -> Result<DataFile, MaintenanceError> {
    let Some(first) = metas.first() else {
        return Err(ParquetError::General("nothing to merge".into()).into());
    };
    let location = DefaultLocationGenerator::new(table.metadata())?;
    let path = location.generate_location(None, &format!("{prefix}-00000.parquet"));
    let kv: Option<Vec<KeyValue>> = first.file_metadata().key_value_metadata().cloned();
    let props = Arc::new(
        WriterProperties::builder()
            .set_key_value_metadata(kv)
            .build(),
    );
    let schema = first.file_metadata().schema_descr().root_schema_ptr();
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, props)?;
    let mut out = table.file_io().new_output(&path)?.writer().await?;
    let mut size = 0u64;
    let mut rows = 0u64;
    let written = async {
        for (file, meta) in bin.iter().zip(metas) {
            let input = table
                .file_io()
                .new_input(file.file_path())?
                .reader()
                .await?;
            for rg in meta.row_groups() {
                let mut start = u64::MAX;
                let mut end = 0u64;
                for column in rg.columns() {
                    let from = column
                        .dictionary_page_offset()
                        .unwrap_or(column.data_page_offset());
                    let from = u64::try_from(from).unwrap_or(u64::MAX);
                    let len = u64::try_from(column.compressed_size()).unwrap_or(u64::MAX);
                    start = start.min(from);
                    end = end.max(from.saturating_add(len));
                }
                if start >= end || end > file.file_size_in_bytes() {
                    return Err(ParquetError::General(format!(
                        "{}: a row group's columns lie outside the file",
                        file.file_path()
                    ))
                    .into());
                }
                let data = RowGroupBytes {
                    start,
                    data: input.read(start..end).await?,
                };
                let mut group = writer.next_row_group()?;
                for column in rg.columns() {
                    group.append_column(
                        &data,
                        ColumnCloseResult {
                            bytes_written: u64::try_from(column.compressed_size()).unwrap_or(0),
                            rows_written: u64::try_from(rg.num_rows()).unwrap_or(0),
                            metadata: column.clone(),
                            bloom_filter: None,
                            column_index: None,
                            offset_index: None,
                        },
                    )?;
                }
                group.close()?;
                rows += u64::try_from(rg.num_rows()).unwrap_or(0);
                writer.flush().map_err(ParquetError::from)?;
                let chunk = std::mem::take(writer.inner_mut());
                size += chunk.len() as u64;
                out.write(Bytes::from(chunk)).await?;
            }
        }
        let merged = writer.finish()?;
        let chunk = std::mem::take(writer.inner_mut());
        size += chunk.len() as u64;
        out.write(Bytes::from(chunk)).await?;
        out.close().await?;
        Ok::<_, MaintenanceError>(merged)
    }
    .await;
    let merged = match written {
        Ok(m) => m,
        Err(e) => {
            // A partial upload may have left an object behind: orphan cleanup would find it,
            // but it is ours to remove now.
            let _ = table.file_io().delete(&path).await;
            return Err(e);
        }
    };
    let row_groups = merged
        .row_groups()
        .iter()
        .filter_map(|rg| rg.file_offset())
        .collect();
    describe(table, bin, path, size, rows, row_groups)
}

/// The manifest entry of a file holding exactly the rows of `inputs`.
fn describe(
    table: &Table,
    inputs: &[DataFile],
    path: String,
    size: u64,
    rows: u64,
    row_groups: Vec<i64>,
) -> Result<DataFile, MaintenanceError> {
    let Some(first) = inputs.first() else {
        return Err(ParquetError::General("nothing merged".into()).into());
    };
    let mut column_sizes: HashMap<i32, u64> = HashMap::new();
    let mut value_counts: HashMap<i32, u64> = HashMap::new();
    let mut null_counts: HashMap<i32, u64> = HashMap::new();
    let mut nan_counts: HashMap<i32, u64> = HashMap::new();
    let mut lower: HashMap<i32, Datum> = HashMap::new();
    let mut upper: HashMap<i32, Datum> = HashMap::new();
    // A count or bound is only kept when every input has it.
    let n = inputs.len();
    let mut seen: HashMap<(u8, i32), usize> = HashMap::new();
    for f in inputs {
        for (kind, map, into) in [
            (0u8, f.column_sizes(), &mut column_sizes),
            (1, f.value_counts(), &mut value_counts),
            (2, f.null_value_counts(), &mut null_counts),
            (3, f.nan_value_counts(), &mut nan_counts),
        ] {
            for (id, v) in map {
                *into.entry(*id).or_default() += v;
                *seen.entry((kind, *id)).or_default() += 1;
            }
        }
        for (id, v) in f.lower_bounds() {
            *seen.entry((4, *id)).or_default() += 1;
            match lower.get(id) {
                Some(cur) if cur <= v => {}
                _ => {
                    lower.insert(*id, v.clone());
                }
            }
        }
        for (id, v) in f.upper_bounds() {
            *seen.entry((5, *id)).or_default() += 1;
            match upper.get(id) {
                Some(cur) if cur >= v => {}
                _ => {
                    upper.insert(*id, v.clone());
                }
            }
        }
    }
    let complete = |kind: u8, id: &i32| seen.get(&(kind, *id)) == Some(&n);
    column_sizes.retain(|id, _| complete(0, id));
    value_counts.retain(|id, _| complete(1, id));
    null_counts.retain(|id, _| complete(2, id));
    nan_counts.retain(|id, _| complete(3, id));
    lower.retain(|id, _| complete(4, id));
    upper.retain(|id, _| complete(5, id));
    Ok(DataFileBuilder::default()
        .content(DataContentType::Data)
        .file_path(path)
        .file_format(DataFileFormat::Parquet)
        .partition(first.partition().clone())
        .partition_spec_id(table.metadata().default_partition_spec_id())
        .record_count(rows)
        .file_size_in_bytes(size)
        .column_sizes(column_sizes)
        .value_counts(value_counts)
        .null_value_counts(null_counts)
        .nan_value_counts(nan_counts)
        .lower_bounds(lower)
        .upper_bounds(upper)
        .split_offsets(Some(row_groups))
        .build()
        .map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("merged data file: {e}"),
            )
        })?)
}

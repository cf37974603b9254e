//! Merging Parquet data files by copying their row groups' encoded bytes (as parquet's own
//! `parquet-concat` does): no decoding, no re-encoding, so a bin of files that already have
//! large row groups is compacted at the speed of I/O. The merged file's Iceberg metrics are
//! those of its inputs combined (counts summed, bounds widened), which is exact because it
//! holds exactly their rows.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use iceberg::spec::{DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::{
    DefaultLocationGenerator, LocationGenerator,
};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;

use crate::compaction::CompactionError;

/// A merged file, written to memory, with the inputs it came from.
pub struct Merged<'a> {
    pub bytes: Vec<u8>,
    pub rows: u64,
    row_groups: Vec<i64>,
    inputs: &'a [DataFile],
}

/// Merge `inputs` (the files of `bin`, in order) by copying row groups — or `None` when
/// that is not worth it (row groups smaller than `min_row_group` on average) or not
/// possible (the files' Parquet schemas differ). Row counts are checked against the
/// manifests first.
pub fn row_groups<'a>(
    bin: &'a [DataFile],
    inputs: &[Bytes],
    min_row_group: u64,
) -> Result<Option<Merged<'a>>, CompactionError> {
    let readers = inputs
        .iter()
        .map(|b| SerializedFileReader::new(b.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let metas: Vec<&ParquetMetaData> = readers.iter().map(|r| r.metadata()).collect();
    for (f, m) in bin.iter().zip(&metas) {
        let rows = m.file_metadata().num_rows() as u64;
        if rows != f.record_count() {
            return Err(crate::lake::ReadError::CountMismatch {
                file: f.file_path().to_string(),
                read: rows,
                expected: f.record_count(),
            }
            .into());
        }
    }
    let groups: usize = metas.iter().map(|m| m.num_row_groups()).sum();
    let bytes: u64 = metas
        .iter()
        .flat_map(|m| m.row_groups())
        .map(|rg| rg.compressed_size() as u64)
        .sum();
    let Some(first) = metas.first() else {
        return Ok(None);
    };
    let schema = first.file_metadata().schema_descr();
    if groups == 0
        || bytes / groups as u64 <= min_row_group
        || metas
            .iter()
            .any(|m| m.file_metadata().schema_descr().root_schema() != schema.root_schema())
    {
        return Ok(None);
    }
    let kv: Option<Vec<KeyValue>> = first.file_metadata().key_value_metadata().cloned();
    let props = Arc::new(
        WriterProperties::builder()
            .set_key_value_metadata(kv)
            .build(),
    );
    let mut out = Vec::with_capacity(bytes as usize + (1 << 16));
    let mut writer = SerializedFileWriter::new(&mut out, schema.root_schema_ptr(), props)?;
    let mut rows = 0u64;
    for (input, meta) in inputs.iter().zip(&metas) {
        for rg in meta.row_groups() {
            let mut group = writer.next_row_group()?;
            for column in rg.columns() {
                group.append_column(
                    input,
                    ColumnCloseResult {
                        bytes_written: column.compressed_size() as u64,
                        rows_written: rg.num_rows() as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: None,
                        offset_index: None,
                    },
                )?;
            }
            group.close()?;
            rows += rg.num_rows() as u64;
        }
    }
    let written = writer.close()?;
    let row_groups = written
        .row_groups()
        .iter()
        .filter_map(|rg| rg.file_offset())
        .collect();
    Ok(Some(Merged {
        bytes: out,
        rows,
        row_groups,
        inputs: bin,
    }))
}

/// Write a merged file next to the table's data and describe it for the manifest.
pub async fn write(
    table: &Table,
    merged: Merged<'_>,
    prefix: &str,
) -> Result<DataFile, CompactionError> {
    let location = DefaultLocationGenerator::new(table.metadata())?;
    let path = location.generate_location(None, &format!("{prefix}-00000.parquet"));
    let size = merged.bytes.len() as u64;
    table
        .file_io()
        .new_output(&path)?
        .write(Bytes::from(merged.bytes))
        .await?;
    let first = &merged.inputs[0];
    let mut column_sizes: HashMap<i32, u64> = HashMap::new();
    let mut value_counts: HashMap<i32, u64> = HashMap::new();
    let mut null_counts: HashMap<i32, u64> = HashMap::new();
    let mut nan_counts: HashMap<i32, u64> = HashMap::new();
    let mut lower: HashMap<i32, Datum> = HashMap::new();
    let mut upper: HashMap<i32, Datum> = HashMap::new();
    // A count or bound is only kept when every input has it.
    let n = merged.inputs.len();
    let mut seen: HashMap<(u8, i32), usize> = HashMap::new();
    for f in merged.inputs {
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
        .record_count(merged.rows)
        .file_size_in_bytes(size)
        .column_sizes(column_sizes)
        .value_counts(value_counts)
        .null_value_counts(null_counts)
        .nan_value_counts(nan_counts)
        .lower_bounds(lower)
        .upper_bounds(upper)
        .split_offsets(Some(merged.row_groups))
        .build()
        .map_err(|e| {
            iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("merged data file: {e}"),
            )
        })?)
}

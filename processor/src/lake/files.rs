//! Data files: writing batches as Parquet files of a table, and reading them back.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use iceberg::ErrorKind;
use iceberg::spec::PartitionKey;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::partition::Splitter;
use super::table_arrow_schema;
use crate::lake::Compression;

/// Write `batches` (in the table's schema) as Parquet data files of `table`, named
/// `<prefix>-…` so that writers never collide; files of at most `target_size` bytes
/// (default: the Iceberg default, 512 MiB). A failed write removes what it wrote.
pub async fn write_data_files(
    table: &Table,
    batches: &[RecordBatch],
    prefix: &str,
    compression: Compression,
    target_size: Option<usize>,
) -> Result<Vec<DataFile>, iceberg::Error> {
    let mut writer = DataFilesWriter::new(table, batches, prefix, compression, target_size).await?;
    for b in batches {
        writer.write(b.clone()).await?;
    }
    writer.close().await
}

/// Writes batches of one table into Parquet data files as they come, so a caller can stream
/// rows through without holding them all; a partitioned table's rows go to one file (or
/// more, rolling) per partition of its default spec. A failed write or close removes what
/// it wrote; a caller that gives up for its own reasons calls [`DataFilesWriter::abandon`].
pub struct DataFilesWriter<'a> {
    table: &'a Table,
    inner: Option<Inner>,
    issued: Arc<std::sync::Mutex<Vec<String>>>,
}

type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, RecordingLocations, DefaultFileNameGenerator>;

/// The writer stack of an unpartitioned or a partitioned table.
enum Inner {
    Plain(Box<DataFileWriter<ParquetWriterBuilder, RecordingLocations, DefaultFileNameGenerator>>),
    Partitioned {
        fanout: Box<FanoutWriter<FileWriterBuilder>>,
        splitter: Box<Splitter>,
    },
}

impl<'a> DataFilesWriter<'a> {
    /// A writer for `table`; `sample` (some of the rows to come) decides which columns are
    /// written without a dictionary. Files are named `<prefix>-…` and hold at most
    /// `target_size` bytes (default: the Iceberg default, 512 MiB).
    pub async fn new(
        table: &'a Table,
        sample: &[RecordBatch],
        prefix: &str,
        compression: Compression,
        target_size: Option<usize>,
    ) -> Result<Self, iceberg::Error> {
        let mut props = WriterProperties::builder().set_compression(match compression {
            Compression::Zstd => {
                ParquetCompression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default())
            }
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::Lz4 => ParquetCompression::LZ4_RAW,
            Compression::None => ParquetCompression::UNCOMPRESSED,
        });
        for column in rarely_repeating_columns(sample) {
            props = props.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
        let location = RecordingLocations {
            inner: DefaultLocationGenerator::new(table.metadata())?,
            issued: Arc::default(),
        };
        let issued = location.issued.clone();
        let names =
            DefaultFileNameGenerator::new(prefix.to_string(), None, DataFileFormat::Parquet);
        let schema = table.metadata().current_schema().clone();
        let parquet = ParquetWriterBuilder::new(props.build(), schema.clone());
        let rolling = match target_size {
            Some(size) => RollingFileWriterBuilder::new(
                parquet,
                size,
                table.file_io().clone(),
                location,
                names,
            ),
            None => RollingFileWriterBuilder::new_with_default_file_size(
                parquet,
                table.file_io().clone(),
                location,
                names,
            ),
        };
        let builder = DataFileWriterBuilder::new(rolling);
        let spec = table.metadata().default_partition_spec();
        let inner = if spec.is_unpartitioned() {
            Inner::Plain(Box::new(builder.build(None).await?))
        } else {
            Inner::Partitioned {
                fanout: Box::new(FanoutWriter::new(builder)),
                splitter: Box::new(Splitter::new(schema, spec.as_ref().clone())?),
            }
        };
        Ok(Self {
            table,
            inner: Some(inner),
            issued,
        })
    }

    /// Write one batch (in the table's schema).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), iceberg::Error> {
        let written = match self.inner.as_mut() {
            None => Err(iceberg::Error::new(
                ErrorKind::Unexpected,
                "data file writer used after it failed",
            )),
            Some(Inner::Plain(w)) => w.write(batch).await,
            Some(Inner::Partitioned { fanout, splitter }) => {
                let mut result = Ok(());
                for (key, part) in splitter.split(&batch)? {
                    result = fanout.write(key, part).await;
                    if result.is_err() {
                        break;
                    }
                }
                result
            }
        };
        if written.is_err() {
            self.abandon().await;
        }
        written
    }

    /// Finish the files and return them.
    pub async fn close(mut self) -> Result<Vec<DataFile>, iceberg::Error> {
        let closed = match self.inner.take() {
            None => Err(iceberg::Error::new(
                ErrorKind::Unexpected,
                "data file writer closed after it failed",
            )),
            Some(Inner::Plain(mut w)) => w.close().await,
            Some(Inner::Partitioned { fanout, .. }) => fanout.close().await,
        };
        match closed {
            Ok(files) => {
                self.issued.lock().map(|mut v| v.clear()).ok();
                Ok(files)
            }
            Err(e) => {
                self.abandon().await;
                Err(e)
            }
        }
    }

    /// Remove every file this writer started.
    pub async fn abandon(&mut self) {
        self.inner = None;
        let files: Vec<String> = self
            .issued
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for path in files {
            if let Err(e) = self.table.file_io().delete(&path).await {
                tracing::warn!(table = %self.table.identifier(), %path, "cannot remove a partly written file: {e}");
            }
        }
    }
}

/// Sampled rows per column when judging whether its values repeat.
const CARDINALITY_SAMPLE: usize = 16 * 1024;

/// Top-level columns whose values barely repeat (more than half of a sample distinct):
/// timestamps to the microsecond, measurements, ids. Dictionary-encoding them costs a hash
/// lookup and insert per value until the dictionary overflows its page and the writer falls
/// back to plain encoding, and saves nothing, so they are written plain from the start.
/// Nested columns keep the writer's default.
fn rarely_repeating_columns(batches: &[RecordBatch]) -> Vec<String> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    // A few evenly spaced runs of rows rather than the head alone, so a column that is
    // constant within one commit but varies across the bin is judged on the whole.
    const RUNS: usize = 8;
    let run = (CARDINALITY_SAMPLE / RUNS).max(1);
    let starts: Vec<usize> = if total <= CARDINALITY_SAMPLE {
        vec![0]
    } else {
        (0..RUNS).map(|k| k * (total / RUNS)).collect()
    };
    let mut out = Vec::new();
    for (i, field) in first.schema().fields().iter().enumerate() {
        if field.data_type().is_nested() {
            continue;
        }
        let Ok(converter) = RowConverter::new(vec![SortField::new(field.data_type().clone())])
        else {
            continue;
        };
        let mut rows = converter.empty_rows(CARDINALITY_SAMPLE, 0);
        let mut sampled = 0usize;
        for &start in &starts {
            let len = if total <= CARDINALITY_SAMPLE {
                total
            } else {
                run
            };
            let (mut offset, mut left) = (start, len);
            for b in batches {
                if left == 0 {
                    break;
                }
                if offset >= b.num_rows() {
                    offset -= b.num_rows();
                    continue;
                }
                let take = left.min(b.num_rows() - offset);
                let slice = b.column(i).slice(offset, take);
                if converter.append(&mut rows, &[slice]).is_err() {
                    break;
                }
                sampled += take;
                left -= take;
                offset = 0;
            }
        }
        let distinct: HashSet<&[u8]> = rows.iter().map(|r| r.data()).collect();
        if sampled > 0 && distinct.len() * 2 > sampled {
            out.push(field.name().clone());
        }
    }
    out
}

/// Why a data file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file holds another number of rows than its manifest entry says: it is damaged,
    /// or not the file the entry was written for.
    #[error("{file}: {read} rows read back but the manifest says {expected}")]
    CountMismatch {
        /// The data file's path.
        file: String,
        /// Rows the file holds.
        read: u64,
        /// Rows its manifest entry says it holds (`record_count`).
        expected: u64,
    },
    /// The file could not be fetched from storage, or the table's schema not converted.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// A batch could not be rebuilt with the table's schema.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// The bytes are not Parquet the reader can decode.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Decode one data file's bytes into batches of `schema` (the table's, with field ids),
/// checking the rows against the manifest's record count.
pub fn decode_data_file(
    schema: &SchemaRef,
    file: &DataFile,
    data: bytes::Bytes,
) -> Result<Vec<RecordBatch>, ReadError> {
    FileBatches::new(schema, file, data)?.collect()
}

/// The batches of one data file, decoded as they are asked for; the last item is an error
/// if the file's row count differs from its manifest's.
pub struct FileBatches {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    schema: SchemaRef,
    path: String,
    expected: u64,
    read: u64,
    done: bool,
}

impl FileBatches {
    /// Start decoding `data`, the bytes of `file`, into batches of `schema`.
    pub fn new(schema: &SchemaRef, file: &DataFile, data: bytes::Bytes) -> Result<Self, ReadError> {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)?
            .with_batch_size(64 * 1024)
            .build()?;
        Ok(Self {
            reader,
            schema: schema.clone(),
            path: file.file_path().to_string(),
            expected: file.record_count(),
            read: 0,
            done: false,
        })
    }
}

impl Iterator for FileBatches {
    type Item = Result<RecordBatch, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.reader.next() {
            Some(Ok(b)) => {
                self.read += b.num_rows() as u64;
                // A file written under an earlier schema: its columns by field id, the ones
                // it lacks as nulls, widened ones cast up.
                Some(super::conform::conform_batch(&b, &self.schema).map_err(ReadError::from))
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e.into()))
            }
            None => {
                self.done = true;
                (self.read != self.expected).then(|| {
                    Err(ReadError::CountMismatch {
                        file: self.path.clone(),
                        read: self.read,
                        expected: self.expected,
                    })
                })
            }
        }
    }
}

/// Read data files of `table` into batches of its schema (counts checked).
pub async fn read_data_files(
    table: &Table,
    files: &[DataFile],
) -> Result<Vec<RecordBatch>, ReadError> {
    let schema = table_arrow_schema(table)?;
    let mut out = Vec::new();
    for f in files {
        let data = table.file_io().new_input(f.file_path())?.read().await?;
        out.extend(decode_data_file(&schema, f, data)?);
    }
    Ok(out)
}

/// File locations of one write (partition directories included), remembering each.
#[derive(Clone)]
struct RecordingLocations {
    inner: DefaultLocationGenerator,
    issued: Arc<std::sync::Mutex<Vec<String>>>,
}

impl LocationGenerator for RecordingLocations {
    fn generate_location(&self, partition: Option<&PartitionKey>, file_name: &str) -> String {
        let path = self.inner.generate_location(partition, file_name);
        if let Ok(mut v) = self.issued.lock() {
            v.push(path.clone());
        }
        path
    }
}

//! The Iceberg side: opening the catalog, and loading or creating tables.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use crate::config::Compression;
use crate::storage::{ObjectStoreFactory, S3Config};
use iceberg::spec::TableProperties;
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};

/// Columns the lake adds to every bronze row.
pub const AGENT_COLUMN: &str = "_agent";
pub const SEQ_COLUMN: &str = "_seq";
pub const INGESTED_AT_COLUMN: &str = "_ingested_at";

/// Open the catalog a processor config names.
pub async fn open(
    cfg: &crate::config::ProcessorConfig,
) -> Result<Arc<dyn Catalog>, iceberg::Error> {
    open_catalog(
        cfg.catalog_name(),
        &cfg.catalog_uri(),
        &cfg.warehouse(),
        &cfg.catalog.s3,
    )
    .await
}

/// Open the SQL catalog (SQLite or PostgreSQL URI) over a warehouse: a local directory, or
/// an `s3://bucket/prefix` on an S3-compatible store.
async fn open_catalog(
    name: &str,
    uri: &str,
    warehouse: &str,
    s3: &S3Config,
) -> Result<Arc<dyn Catalog>, iceberg::Error> {
    let location = if warehouse.contains("://") {
        warehouse.trim_end_matches('/').to_string()
    } else {
        std::fs::create_dir_all(warehouse).map_err(|e| {
            iceberg::Error::new(
                ErrorKind::Unexpected,
                format!("cannot create warehouse {warehouse}: {e}"),
            )
        })?;
        let abs = std::path::absolute(warehouse).map_err(|e| {
            iceberg::Error::new(ErrorKind::Unexpected, format!("bad warehouse path: {e}"))
        })?;
        format!("file://{}", abs.display())
    };
    if let Some(path) = uri
        .strip_prefix("sqlite:")
        .map(|p| p.split('?').next().unwrap_or(p))
        .map(|p| p.trim_start_matches("//"))
        && let Some(dir) = Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| {
            iceberg::Error::new(
                ErrorKind::Unexpected,
                format!("cannot create catalog directory {}: {e}", dir.display()),
            )
        })?;
    }
    let bind = if uri.starts_with("postgres") {
        SqlBindStyle::DollarNumeric
    } else {
        SqlBindStyle::QMark
    };
    let catalog = SqlCatalogBuilder::default()
        .uri(uri)
        .warehouse_location(location)
        .sql_bind_style(bind)
        .with_storage_factory(Arc::new(ObjectStoreFactory { s3: s3.clone() }))
        .load(name, HashMap::new())
        .await?;
    Ok(Arc::new(catalog))
}

/// Create the namespace if it does not exist.
pub async fn ensure_namespace(catalog: &dyn Catalog, ns: &str) -> Result<(), iceberg::Error> {
    let ident = NamespaceIdent::new(ns.to_string());
    if catalog.namespace_exists(&ident).await? {
        return Ok(());
    }
    match catalog.create_namespace(&ident, HashMap::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NamespaceAlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The Arrow schema of a bronze table for rows shaped like `user`: the user's columns
/// (all nullable, so later batches may omit values) plus the lake's own columns.
pub fn bronze_arrow_schema(user: &ArrowSchema) -> ArrowSchema {
    let mut fields: Vec<Field> = user
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), normalize_type(f.data_type()), true))
        .collect();
    fields.push(Field::new(AGENT_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(SEQ_COLUMN, DataType::Int64, false));
    fields.push(Field::new(
        INGESTED_AT_COLUMN,
        DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into())),
        false,
    ));
    ArrowSchema::new(fields)
}

/// Iceberg stores timestamps with a zone as UTC microseconds (`+00:00` in Arrow).
pub fn normalize_type(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(_, Some(_)) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into()))
        }
        DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
        other => other.clone(),
    }
}

/// Load `ns.name`, or create it with the bronze schema derived from `user`.
pub async fn load_or_create(
    catalog: &dyn Catalog,
    ns: &str,
    name: &str,
    user: &ArrowSchema,
) -> Result<Table, iceberg::Error> {
    create_if_missing(
        catalog,
        ns,
        name,
        &bronze_arrow_schema(user),
        &[("sluice.layer", "bronze")],
    )
    .await
}

/// Load `ns.name`, or create it (unpartitioned, Parquet) with the columns of `arrow` and
/// these extra table properties.
pub async fn create_if_missing(
    catalog: &dyn Catalog,
    ns: &str,
    name: &str,
    arrow: &ArrowSchema,
    properties: &[(&str, &str)],
) -> Result<Table, iceberg::Error> {
    let ident = TableIdent::new(NamespaceIdent::new(ns.to_string()), name.to_string());
    if catalog.table_exists(&ident).await? {
        return catalog.load_table(&ident).await;
    }
    ensure_namespace(catalog, ns).await?;
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(arrow)?;
    let mut props: HashMap<String, String> = [
        // Writers retry commits themselves, re-reading progress tokens each time.
        (
            TableProperties::PROPERTY_COMMIT_NUM_RETRIES.to_string(),
            "0".to_string(),
        ),
        ("write.format.default".to_string(), "parquet".to_string()),
    ]
    .into_iter()
    .collect();
    props.extend(
        properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let creation = TableCreation::builder()
        .name(name.to_string())
        .schema(schema)
        .properties(props)
        .build();
    match catalog.create_table(&ident.namespace, creation).await {
        Ok(t) => {
            tracing::info!(table = %ident, "created table");
            Ok(t)
        }
        Err(e) if e.kind() == ErrorKind::TableAlreadyExists => catalog.load_table(&ident).await,
        Err(e) => Err(e),
    }
}

/// Load a table if it exists.
pub async fn load_if_exists(
    catalog: &dyn Catalog,
    ns: &str,
    name: &str,
) -> Result<Option<Table>, iceberg::Error> {
    let ident = TableIdent::new(NamespaceIdent::new(ns.to_string()), name.to_string());
    if catalog.table_exists(&ident).await? {
        catalog.load_table(&ident).await.map(Some)
    } else {
        Ok(None)
    }
}

/// The Arrow schema (with Iceberg field ids) that data files of `table` are written with.
pub fn table_arrow_schema(table: &Table) -> Result<SchemaRef, iceberg::Error> {
    Ok(Arc::new(iceberg::arrow::schema_to_arrow_schema(
        table.metadata().current_schema(),
    )?))
}

/// A bronze table's own columns: its schema without the lake's columns.
pub fn table_user_schema(table: &Table) -> Result<SchemaRef, iceberg::Error> {
    let all = table_arrow_schema(table)?;
    let lake = [AGENT_COLUMN, SEQ_COLUMN, INGESTED_AT_COLUMN];
    Ok(Arc::new(ArrowSchema::new(
        all.fields()
            .iter()
            .filter(|f| !lake.contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    )))
}

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
/// rows through without holding them all. A failed write or close removes what it wrote; a
/// caller that gives up for its own reasons calls [`DataFilesWriter::abandon`].
pub struct DataFilesWriter<'a> {
    table: &'a Table,
    inner: Option<DataFileWriter<ParquetWriterBuilder, DefaultLocationGenerator, RecordingNames>>,
    location: DefaultLocationGenerator,
    issued: Arc<std::sync::Mutex<Vec<String>>>,
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
        let location = DefaultLocationGenerator::new(table.metadata())?;
        let names = RecordingNames {
            inner: DefaultFileNameGenerator::new(prefix.to_string(), None, DataFileFormat::Parquet),
            issued: Arc::default(),
        };
        let issued = names.issued.clone();
        let parquet =
            ParquetWriterBuilder::new(props.build(), table.metadata().current_schema().clone());
        let rolling = match target_size {
            Some(size) => RollingFileWriterBuilder::new(
                parquet,
                size,
                table.file_io().clone(),
                location.clone(),
                names,
            ),
            None => RollingFileWriterBuilder::new_with_default_file_size(
                parquet,
                table.file_io().clone(),
                location.clone(),
                names,
            ),
        };
        let inner = DataFileWriterBuilder::new(rolling).build(None).await?;
        Ok(Self {
            table,
            inner: Some(inner),
            location,
            issued,
        })
    }

    /// Write one batch (in the table's schema).
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), iceberg::Error> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(iceberg::Error::new(
                ErrorKind::Unexpected,
                "data file writer used after it failed",
            ));
        };
        if let Err(e) = inner.write(batch).await {
            self.abandon().await;
            return Err(e);
        }
        Ok(())
    }

    /// Finish the files and return them.
    pub async fn close(mut self) -> Result<Vec<DataFile>, iceberg::Error> {
        let Some(mut inner) = self.inner.take() else {
            return Err(iceberg::Error::new(
                ErrorKind::Unexpected,
                "data file writer closed after it failed",
            ));
        };
        match inner.close().await {
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
        for name in files {
            let path = self.location.generate_location(None, &name);
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
    #[error("{file}: {read} rows read back but the manifest says {expected}")]
    CountMismatch {
        file: String,
        read: u64,
        expected: u64,
    },
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
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
                // Our tables do not evolve their schema: the file's columns are the table's.
                Some(
                    RecordBatch::try_new(self.schema.clone(), b.columns().to_vec())
                        .map_err(ReadError::from),
                )
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

/// File names of one write, remembering every name handed out.
#[derive(Clone)]
struct RecordingNames {
    inner: DefaultFileNameGenerator,
    issued: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FileNameGenerator for RecordingNames {
    fn generate_file_name(&self) -> String {
        let name = self.inner.generate_file_name();
        if let Ok(mut v) = self.issued.lock() {
            v.push(name.clone());
        }
        name
    }
}

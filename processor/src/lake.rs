//! The Iceberg side: opening the catalog, and loading or creating tables.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator, FileNameGenerator, LocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression as ParquetCompression, ZstdLevel};
use parquet::file::properties::WriterProperties;

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
    let props = WriterProperties::builder()
        .set_compression(match compression {
            Compression::Zstd => {
                ParquetCompression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default())
            }
            Compression::Snappy => ParquetCompression::SNAPPY,
            Compression::Lz4 => ParquetCompression::LZ4_RAW,
            Compression::None => ParquetCompression::UNCOMPRESSED,
        })
        .build();
    let location = DefaultLocationGenerator::new(table.metadata())?;
    let names = RecordingNames {
        inner: DefaultFileNameGenerator::new(prefix.to_string(), None, DataFileFormat::Parquet),
        issued: Arc::default(),
    };
    let issued = names.issued.clone();
    let parquet = ParquetWriterBuilder::new(props, table.metadata().current_schema().clone());
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
    let result = async {
        let mut writer = DataFileWriterBuilder::new(rolling).build(None).await?;
        for b in batches {
            writer.write(b.clone()).await?;
        }
        writer.close().await
    }
    .await;
    if result.is_err() {
        let files: Vec<String> = issued.lock().map(|v| v.clone()).unwrap_or_default();
        for name in files {
            let path = location.generate_location(None, &name);
            if let Err(e) = table.file_io().delete(&path).await {
                tracing::warn!(table = %table.identifier(), %path, "cannot remove a partly written file: {e}");
            }
        }
    }
    result
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
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)?
        .with_batch_size(64 * 1024)
        .build()?;
    let mut batches = Vec::new();
    let mut read = 0u64;
    for b in reader {
        let b = b?;
        read += b.num_rows() as u64;
        // Our tables do not evolve their schema: the file's columns are the table's.
        batches.push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
    }
    if read != file.record_count() {
        return Err(ReadError::CountMismatch {
            file: file.file_path().to_string(),
            read,
            expected: file.record_count(),
        });
    }
    Ok(batches)
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

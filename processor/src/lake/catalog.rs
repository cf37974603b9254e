//! Opening the catalog, and loading or creating tables and their schemas.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit};
use iceberg::spec::TableProperties;
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};

use crate::lake::CatalogSettings;
use crate::lake::storage::{ObjectStoreFactory, S3Config};

/// Lake column of every bronze row: the agent that sent it (for a plain JSON topic's row,
/// its topic partition).
pub const AGENT_COLUMN: &str = "_agent";
/// Lake column of every bronze row: its batch's sequence number, by which redeliveries are
/// dropped (for a plain JSON topic's row, its own offset + 1).
pub const SEQ_COLUMN: &str = "_seq";
/// Lake column of every bronze row: when the processor received its batch (µs, UTC).
pub const INGESTED_AT_COLUMN: &str = "_ingested_at";

/// Open the catalog a processor config names.
pub async fn open(settings: &CatalogSettings) -> Result<Arc<dyn Catalog>, iceberg::Error> {
    open_catalog(
        &settings.name,
        &settings.uri,
        &settings.warehouse,
        &settings.s3,
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

/// The columns Sluice adds to every bronze table; no batch or topic may bring its own.
pub const LAKE_COLUMNS: [&str; 3] = [AGENT_COLUMN, SEQ_COLUMN, INGESTED_AT_COLUMN];

/// Why a batch's columns cannot make a bronze table, if they cannot: a lake column among
/// them, a name given twice, or a type Iceberg has no match for. Such a batch is refused,
/// not retried: it would fail the same way forever.
pub fn uncreatable(user: &ArrowSchema) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    for f in user.fields() {
        if LAKE_COLUMNS.contains(&f.name().as_str()) {
            return Some(format!("column {:?} is reserved for the lake", f.name()));
        }
        if !seen.insert(f.name()) {
            return Some(format!("column {:?} is given twice", f.name()));
        }
    }
    iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&bronze_arrow_schema(user))
        .err()
        .map(|e| format!("the columns cannot make an Iceberg table: {e}"))
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

/// Load `ns.name`, or create it (Parquet, partitioned by `partition`, unpartitioned if
/// empty) with the columns of `arrow` and these extra table properties. A partition field
/// that does not fit the columns is an error of kind `DataInvalid`.
pub async fn create_if_missing(
    catalog: &dyn Catalog,
    ns: &str,
    name: &str,
    arrow: &ArrowSchema,
    partition: &[super::partition::PartitionField],
    properties: &[(&str, &str)],
) -> Result<Table, iceberg::Error> {
    let ident = TableIdent::new(NamespaceIdent::new(ns.to_string()), name.to_string());
    if catalog.table_exists(&ident).await? {
        return catalog.load_table(&ident).await;
    }
    ensure_namespace(catalog, ns).await?;
    let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(arrow)?;
    let spec = super::partition::unbound(&schema, partition)
        .map_err(|e| iceberg::Error::new(ErrorKind::DataInvalid, e))?;
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
        super::snapshot::TABLE_DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    props.extend(
        properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let creation = TableCreation::builder()
        .name(name.to_string())
        .schema(schema)
        .partition_spec(spec)
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

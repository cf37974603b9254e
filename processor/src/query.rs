//! SQL over the lake with DataFusion (`sluice-processor query`, the demo's sample query).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use iceberg::Catalog;
use iceberg_datafusion::IcebergCatalogProvider;

/// A session where the lake's tables are `<catalog>.<namespace>.<table>`, with the catalog
/// also the default so `bronze.cpu` works.
pub async fn session(catalog: Arc<dyn Catalog>, name: &str) -> anyhow::Result<SessionContext> {
    let config = datafusion::prelude::SessionConfig::new()
        .with_default_catalog_and_schema(name, "bronze")
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    let provider = IcebergCatalogProvider::try_new(catalog).await?;
    ctx.register_catalog(name, Arc::new(provider));
    Ok(ctx)
}

/// Run one statement and collect the result.
pub async fn run(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<RecordBatch>> {
    let df = ctx.sql(sql).await?;
    Ok(df.collect().await?)
}

/// Render batches as a text table.
pub fn pretty(batches: &[RecordBatch]) -> anyhow::Result<String> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}

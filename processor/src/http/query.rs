//! SQL over the lake with DataFusion: `sluice-processor query`, `/api/query`, table stats for
//! `/api/tables`, and time travel (every table as of a time, or a table at a snapshot).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionContext;
use iceberg::Catalog;
use iceberg::table::Table;
use iceberg_datafusion::{IcebergCatalogProvider, IcebergStaticTableProvider};
use serde::Deserialize;

/// `[query]`: what SQL from the query API (and `sluice-processor query`) may use, so that
/// a query cannot take the memory or the CPU that landing needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Memory all running queries may hold together (≥ 1 MiB). A query needing more fails
    /// (`422`, outcome `memory`); nothing spills to disk.
    pub memory_limit: ByteSize,
    /// Queries the API runs at once (≥ 1); one more is refused at once (`429`, outcome
    /// `busy`).
    pub max_concurrent: usize,
    /// A query running longer is cancelled (`504`, outcome `timeout`; > 0); so is one whose
    /// caller hangs up.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            memory_limit: ByteSize::gib(1),
            max_concurrent: 4,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Which version of the tables a query reads.
#[derive(Debug, Clone, Default)]
pub struct AsOf {
    /// Every table as of this time (ms since the epoch): its last snapshot at or before it.
    pub time_ms: Option<i64>,
    /// These tables (`namespace.table`) at these snapshot ids.
    pub snapshots: HashMap<String, i64>,
}

impl AsOf {
    pub(super) fn is_current(&self) -> bool {
        self.time_ms.is_none() && self.snapshots.is_empty()
    }

    /// Parse `--as-of` (RFC 3339, or milliseconds since the epoch) and `--snapshot
    /// ns.table=ID` pairs (comma-separated).
    pub fn parse(time: Option<&str>, snapshots: Option<&str>) -> Result<Self, String> {
        let time_ms = time
            .map(|t| {
                t.parse::<i64>().or_else(|_| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map(|d| d.timestamp_millis())
                        .map_err(|e| {
                            format!("as_of {t:?}: not RFC 3339 or epoch milliseconds ({e})")
                        })
                })
            })
            .transpose()?;
        let mut pins = HashMap::new();
        for pair in snapshots
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (table, id) = pair
                .split_once('=')
                .ok_or_else(|| format!("snapshot {pair:?}: write namespace.table=SNAPSHOT_ID"))?;
            let id = id
                .trim()
                .parse::<i64>()
                .map_err(|_| format!("snapshot {pair:?}: {id:?} is not a snapshot id"))?;
            pins.insert(table.trim().to_string(), id);
        }
        Ok(Self {
            time_ms,
            snapshots: pins,
        })
    }
}

/// What queries may use (`[query]`): one memory pool shared by every running query, with
/// nothing spilled to disk; a number of queries at once; a time limit; and threads of their
/// own below landing's priority, so a heavy query slows itself, not the commits.
pub struct Limits {
    env: Arc<RuntimeEnv>,
    slots: Arc<tokio::sync::Semaphore>,
    config: QueryConfig,
    /// `None` when the threads could not be made: queries then run beside landing.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Why a query was not run to the end, beyond the caller's SQL.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// As many queries as `query.max_concurrent` (given here) run already; refused at once.
    #[error("{0} queries are running (query.max_concurrent); retry when one ends")]
    Busy(usize),
    /// The query needed more of the shared pool than was left (`query.memory_limit`, given
    /// here); nothing spills to disk.
    #[error("the query needs more memory than query.memory_limit ({0}) leaves it")]
    Memory(bytesize::ByteSize),
    /// The query ran past `query.timeout` (given here) and was cancelled.
    #[error("the query took longer than query.timeout ({0:?})")]
    Timeout(std::time::Duration),
}

impl LimitError {
    /// The metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            LimitError::Busy(_) => "busy",
            LimitError::Memory(_) => "memory",
            LimitError::Timeout(_) => "timeout",
        }
    }
}

impl Limits {
    /// Limits from `config`; `threads` gives queries threads of their own.
    pub fn new(config: &QueryConfig, threads: bool) -> anyhow::Result<Self> {
        let memory = usize::try_from(config.memory_limit.as_u64()).unwrap_or(usize::MAX);
        let env = RuntimeEnvBuilder::new()
            .with_memory_limit(memory, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()?;
        let runtime = threads
            .then(|| {
                let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
                crate::tasks::background_runtime("sluice-query", workers)
                    .inspect_err(|e| {
                        tracing::warn!("queries run beside landing: no threads of their own: {e}")
                    })
                    .ok()
            })
            .flatten();
        Ok(Self {
            env,
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent)),
            config: config.clone(),
            runtime,
        })
    }

    /// The memory pool, for a session run outside [`Limits::run`] (the demo's own queries).
    pub fn env(&self) -> Arc<RuntimeEnv> {
        self.env.clone()
    }

    /// Run `query` within the limits: refused at once when `max_concurrent` queries run,
    /// cancelled at `timeout` (or when the caller gives up), failed when it needs more
    /// memory than the pool has.
    pub async fn run<T, F>(&self, query: impl FnOnce(Arc<RuntimeEnv>) -> F) -> anyhow::Result<T>
    where
        F: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| LimitError::Busy(self.config.max_concurrent))?;
        let timeout = self.config.timeout;
        let work = query(self.env.clone());
        let task = async move {
            let _permit = permit;
            tokio::time::timeout(timeout, work).await
        };
        let handle = match &self.runtime {
            Some(rt) => rt.spawn(task),
            None => tokio::spawn(task),
        };
        // Dropping this (the caller went away) cancels the query.
        let mut task = AbortOnDrop(handle);
        let result = match (&mut task.0).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(LimitError::Timeout(timeout).into()),
            Err(e) => anyhow::bail!("the query stopped: {e}"),
        };
        result.map_err(|e| {
            if is_out_of_memory(&e) {
                anyhow::Error::new(LimitError::Memory(self.config.memory_limit))
                    .context(format!("{e:#}"))
            } else {
                e
            }
        })
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        // Dropping a runtime waits for its blocking threads, which an async thread may not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_out_of_memory(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<datafusion::error::DataFusionError>()
            .is_some_and(|d| {
                matches!(
                    d.find_root(),
                    datafusion::error::DataFusionError::ResourcesExhausted(_)
                )
            })
    })
}

/// A session where the lake's tables are `<catalog>.<namespace>.<table>`, with the catalog
/// also the default so `bronze.cpu` works. Tables are read as of `as_of`; memory comes from
/// `env` (see [`Limits`]).
pub async fn session(
    catalog: Arc<dyn Catalog>,
    name: &str,
    as_of: &AsOf,
    env: Arc<RuntimeEnv>,
) -> anyhow::Result<SessionContext> {
    let config = datafusion::prelude::SessionConfig::new()
        .with_default_catalog_and_schema(name, "bronze")
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config_rt(config, env);
    if as_of.is_current() {
        let provider = IcebergCatalogProvider::try_new(catalog).await?;
        ctx.register_catalog(name, Arc::new(provider));
        return Ok(ctx);
    }
    // Time travel: a fixed catalog of every table pinned to its snapshot.
    let pinned = MemoryCatalogProvider::new();
    let mut unknown: Vec<&String> = as_of.snapshots.keys().collect();
    for ns in catalog.list_namespaces(None).await? {
        let schema = Arc::new(MemorySchemaProvider::new());
        for ident in catalog.list_tables(&ns).await? {
            let table = catalog.load_table(&ident).await?;
            let full = crate::lake::qualified(&ident);
            unknown.retain(|u| **u != full);
            let snapshot = match as_of.snapshots.get(&full) {
                Some(id) => {
                    if table.metadata().snapshot_by_id(*id).is_none() {
                        anyhow::bail!("table {full} has no snapshot {id}");
                    }
                    Some(*id)
                }
                None => as_of.time_ms.map_or_else(
                    || table.metadata().current_snapshot_id(),
                    |t| snapshot_at(&table, t),
                ),
            };
            let provider: Arc<dyn datafusion::catalog::TableProvider> = match snapshot {
                Some(id) => Arc::new(
                    IcebergStaticTableProvider::try_new_from_table_snapshot(table, id).await?,
                ),
                // The table had no rows yet then.
                None => {
                    let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(
                        table.metadata().current_schema(),
                    )?);
                    Arc::new(MemTable::try_new(arrow, vec![vec![]])?)
                }
            };
            schema.register_table(ident.name().to_string(), provider)?;
        }
        pinned.register_schema(&ns.to_url_string(), schema)?;
    }
    if let Some(t) = unknown.first() {
        anyhow::bail!("no table named {t}");
    }
    ctx.register_catalog(name, Arc::new(pinned));
    Ok(ctx)
}

/// The table's snapshot current at `time_ms`: the last entry of its history at or before it.
pub fn snapshot_at(table: &Table, time_ms: i64) -> Option<i64> {
    table
        .metadata()
        .history()
        .iter()
        .filter(|h| h.timestamp_ms <= time_ms)
        .max_by_key(|h| h.timestamp_ms)
        .map(|h| h.snapshot_id)
}

/// A statement refused before it runs: the query API and `sluice-processor query` only
/// read. Writes through SQL (`INSERT`, `COPY ... TO`, `DROP`, `CREATE EXTERNAL TABLE`, ...)
/// would forge rows, drop tables, or write files as the processor's user.
#[derive(Debug, thiserror::Error)]
#[error("only reads are allowed (SELECT, WITH, EXPLAIN, SHOW, DESCRIBE): refused {0}")]
pub struct Refused(pub String);

/// The statement's leading words, to name what was refused.
fn kind(statement: &impl std::fmt::Display) -> String {
    let text = statement.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ok if `statement` only reads; `EXPLAIN` is judged by what it explains, since
/// `EXPLAIN ANALYZE` runs it.
fn reads(statement: &datafusion::sql::parser::Statement) -> Result<(), Refused> {
    use datafusion::sql::parser::Statement as Df;
    match statement {
        Df::Statement(s) => sql_reads(s),
        Df::Explain(e) => reads(&e.statement),
        other => Err(Refused(kind(other))),
    }
}

fn sql_reads(statement: &datafusion::sql::sqlparser::ast::Statement) -> Result<(), Refused> {
    use datafusion::sql::sqlparser::ast::Statement as S;
    match statement {
        S::Query(_)
        | S::ExplainTable { .. }
        | S::ShowTables { .. }
        | S::ShowColumns { .. }
        | S::ShowVariable { .. }
        | S::ShowVariables { .. }
        | S::ShowFunctions { .. }
        | S::ShowCreate { .. }
        | S::ShowSchemas { .. }
        | S::ShowDatabases { .. }
        | S::ShowViews { .. } => Ok(()),
        S::Explain { statement, .. } => sql_reads(statement),
        other => Err(Refused(kind(other))),
    }
}

/// Check that `sql` is one statement that only reads.
pub fn read_only(sql: &str) -> anyhow::Result<()> {
    let statements = datafusion::sql::parser::DFParser::parse_sql(sql)?;
    if statements.len() != 1 {
        anyhow::bail!(
            "one statement at a time, please ({} given)",
            statements.len()
        );
    }
    statements.iter().try_for_each(reads)?;
    Ok(())
}

/// Run one statement that only reads (see [`read_only`]) and collect at most `limit` rows;
/// true when rows were left out.
pub async fn run(
    ctx: &SessionContext,
    sql: &str,
    limit: Option<usize>,
) -> anyhow::Result<(Vec<RecordBatch>, bool)> {
    read_only(sql)?;
    // DataFusion's own check of the plan as well: no DDL, DML (COPY included) or
    // statements (SET, transactions), whatever the parser above let through.
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await?;
    let Some(limit) = limit else {
        return Ok((df.collect().await?, false));
    };
    // One more row than allowed tells whether the result was cut.
    let batches = df.limit(0, Some(limit + 1))?.collect().await?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if total <= limit {
        return Ok((batches, false));
    }
    let mut left = limit;
    let cut = batches
        .into_iter()
        .filter_map(|b| {
            let n = b.num_rows().min(left);
            left -= n;
            (n > 0).then(|| b.slice(0, n))
        })
        .collect();
    Ok((cut, true))
}

/// Render batches as a text table.
pub fn pretty(batches: &[RecordBatch]) -> anyhow::Result<String> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}

/// Render batches as CSV with a header line.
pub fn csv(batches: &[RecordBatch]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        for b in batches {
            w.write(b)?;
        }
    }
    Ok(out)
}

/// Rows as JSON objects (one per row, keys = column names).
pub fn json_rows(batches: &[RecordBatch]) -> anyhow::Result<serde_json::Value> {
    let mut buf = Vec::new();
    {
        let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    Ok(serde_json::from_slice(&buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::land::lander::Verdict;
    use crate::testing::{TestLake, land_batch};

    #[tokio::test]
    async fn queries_that_write_are_refused_and_change_nothing() {
        let lake = TestLake::new().await;
        let lander = lake.lander();
        let v = land_batch(&lander, "edge", 1).await;
        lander.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed));
        let limits = Limits::new(&QueryConfig::default(), false).expect("limits");
        let ctx = session(lake.catalog.clone(), "lake", &AsOf::default(), limits.env())
            .await
            .expect("session");
        let count = async || {
            let (batches, _) = run(&ctx, "SELECT count(*) FROM bronze.events", None)
                .await
                .expect("count");
            let b = &batches[0];
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .expect("int64")
                .value(0)
        };
        let rows = count().await;
        assert!(rows > 0);
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("x.csv");
        let attacks = [
            format!(
                "COPY (SELECT 'pwned' AS x) TO '{}' STORED AS CSV",
                out.display()
            ),
            "INSERT INTO bronze.events (id) VALUES (666)".into(),
            "DELETE FROM bronze.events".into(),
            "DROP TABLE bronze.events".into(),
            format!(
                "CREATE EXTERNAL TABLE f STORED AS CSV LOCATION '{}'",
                dir.path().display()
            ),
            "CREATE TABLE t AS SELECT 1".into(),
            "EXPLAIN ANALYZE INSERT INTO bronze.events (id) VALUES (666)".into(),
            format!(
                "EXPLAIN ANALYZE COPY (SELECT 1) TO '{}' STORED AS CSV",
                out.display()
            ),
            "SET datafusion.execution.batch_size = 1".into(),
            "SELECT 1; DROP TABLE bronze.events".into(),
        ];
        for sql in &attacks {
            let e = run(&ctx, sql, None).await.expect_err(sql);
            assert!(
                e.downcast_ref::<Refused>().is_some() || e.to_string().contains("one statement"),
                "{sql}: {e:#}"
            );
        }
        assert!(!out.exists(), "a refused COPY wrote its file");
        // Paths are not tables: nothing outside the lake can be read.
        for sql in [
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM 'file:///etc/hostname'",
        ] {
            run(&ctx, sql, None).await.expect_err(sql);
        }
        assert_eq!(count().await, rows, "the table is unchanged");
        for sql in [
            "SELECT id FROM bronze.events",
            "WITH t AS (SELECT 1 AS one) SELECT one FROM t",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            "DESCRIBE bronze.events",
        ] {
            run(&ctx, sql, None).await.expect(sql);
        }
    }

    fn limits(memory: u64, max_concurrent: usize, timeout: std::time::Duration) -> Limits {
        let config = QueryConfig {
            memory_limit: bytesize::ByteSize::b(memory),
            max_concurrent,
            timeout,
        };
        Limits::new(&config, true).expect("limits")
    }

    async fn in_limits(limits: &Limits, sql: &'static str) -> anyhow::Result<usize> {
        let lake = TestLake::new().await;
        let catalog = lake.catalog.clone();
        limits
            .run(|env| async move {
                let ctx = session(catalog, "lake", &AsOf::default(), env).await?;
                let (batches, _) = run(&ctx, sql, None).await?;
                Ok(batches.iter().map(|b| b.num_rows()).sum())
            })
            .await
    }

    #[tokio::test]
    async fn a_query_that_needs_more_than_the_memory_limit_fails_and_the_next_runs() {
        let limits = limits(8 << 20, 2, std::time::Duration::from_secs(60));
        let started = std::time::Instant::now();
        let e = in_limits(&limits, "SELECT array_agg(value) FROM range(10000000000)")
            .await
            .expect_err("ten billion values in one array");
        assert!(
            matches!(e.downcast_ref::<LimitError>(), Some(LimitError::Memory(_))),
            "{e:#}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert_eq!(
            in_limits(&limits, "SELECT 1").await.expect("small query"),
            1
        );
    }

    #[tokio::test]
    async fn queries_beyond_max_concurrent_are_refused_and_a_slow_one_is_cancelled_at_the_timeout()
    {
        let limits = Arc::new(limits(64 << 20, 1, std::time::Duration::from_secs(2)));
        let slow = tokio::spawn({
            let limits = limits.clone();
            async move { in_limits(&limits, "SELECT count(*) FROM range(10000000000)").await }
        });
        // Wait until the slow query holds the only slot.
        let started = std::time::Instant::now();
        while limits.slots.available_permits() > 0 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let busy = in_limits(&limits, "SELECT 1").await.expect_err("no slot");
        assert!(
            matches!(busy.downcast_ref::<LimitError>(), Some(LimitError::Busy(1))),
            "{busy:#}"
        );
        let slow = slow.await.expect("task").expect_err("cancelled");
        assert!(
            matches!(
                slow.downcast_ref::<LimitError>(),
                Some(LimitError::Timeout(_))
            ),
            "{slow:#}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        // The slot came back with the cancelled query.
        assert_eq!(in_limits(&limits, "SELECT 1").await.expect("slot free"), 1);
    }
}

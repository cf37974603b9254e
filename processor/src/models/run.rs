//! One run of one model: read what is new in its inputs, run its SQL, check the
//! expectations, and commit the result with the inputs' watermarks in the same snapshot.
//!
//! Exactly once: the target's snapshot summary records, per input, the last input snapshot
//! its rows came from (`sluice.model.input.<table>`), in the very snapshot that adds those
//! rows. A run that dies before its commit leaves the watermark where it was (its files
//! are orphans, removed by orphan cleanup) and the next run reads the same snapshots again.
//! Quarantined rows are committed first, to their own table with the same watermarks; when
//! a run dies between the two commits, the next run reads exactly the range the quarantine
//! already holds and does not quarantine it twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use iceberg::spec::Operation;
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use iceberg_datafusion::IcebergStaticTableProvider;
use serde::Serialize;

use super::delta::{self, Delta};
use super::expect;
use super::graph::Model;
use super::{Mode, ModelError, split};
use crate::lake::Compression;
use crate::lake::locks::CommitLocks;
use crate::lake::{CatalogSwap, Change, CommitError};
use crate::telemetry::metrics::Metrics;

/// Snapshot property holding a model's watermark for one input: the last snapshot read.
pub const WATERMARK_PREFIX: &str = "sluice.model.input.";
/// ...and that snapshot's sequence number, so expiry can keep every later snapshot once the
/// watermark's own snapshot is gone.
pub const SEQUENCE_PREFIX: &str = "sluice.model.sequence.";

/// How far a model has read one input: the last snapshot read, and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// Id of the last input snapshot read.
    pub snapshot: i64,
    /// Its sequence number: later snapshots have higher ones, even once it has expired.
    pub sequence: i64,
}

impl Watermark {
    /// The watermark of having read up to `snapshot`.
    pub fn of(snapshot: &iceberg::spec::Snapshot) -> Self {
        Self {
            snapshot: snapshot.snapshot_id(),
            sequence: snapshot.sequence_number(),
        }
    }
}
/// Snapshot property naming the run that wrote a snapshot (for ambiguous commits).
const RUN_KEY: &str = "sluice.model.run";

/// What a model runner needs; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    /// The catalog models read from and write to.
    pub catalog: Arc<dyn Catalog>,
    /// The DataFusion catalog name SQL may use (`sluice.bronze.cpu`).
    pub catalog_name: String,
    /// Namespace of bare table names in SQL: the lander's.
    pub bronze: String,
    /// The catalog's compare-and-swap that publishes each commit.
    pub swap: CatalogSwap,
    /// Per-table commit locks shared with the lander and maintenance.
    pub locks: CommitLocks,
    /// Parquet compression of the files models write.
    pub compression: Compression,
    /// Where runs, rows and failed rules are counted.
    pub metrics: Arc<Metrics>,
}

/// What a runner takes from the rest of the config.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    /// The DataFusion catalog name SQL may use.
    pub catalog_name: String,
    /// The lander's namespace: bare table names in SQL refer to it.
    pub bronze: String,
    /// Parquet compression of the files models write.
    pub compression: Compression,
}

/// What one run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// The model (its target table).
    pub model: String,
    /// `ran`, `up_to_date`, or `waiting` (an input table does not exist yet).
    pub outcome: &'static str,
    /// Input tables that do not exist yet (`waiting`).
    pub waiting_for: Vec<String>,
    /// Input snapshots read.
    pub snapshots_read: usize,
    /// Rows the model's SQL read from its inputs.
    pub input_rows: u64,
    /// Rows written to the target table.
    pub output_rows: u64,
    /// Rows written to the quarantine table instead.
    pub quarantined_rows: u64,
    /// Per `expect` rule (and `unique`), the rows that failed it.
    pub failed_rules: BTreeMap<String, u64>,
    /// More input is waiting (an incremental run stopped at `max_files_per_run`).
    pub more: bool,
    /// The quarantined rows were already committed by an interrupted earlier run.
    pub quarantine_repeated: bool,
    /// Commits that lost a race and were retried.
    pub conflicts: u32,
    /// Wall time of the run, in milliseconds.
    pub elapsed_ms: u64,
}

impl RunReport {
    /// Add a later run of the same model (for `models run`, which runs until caught up).
    pub fn absorb(&mut self, r: &RunReport) {
        if self.outcome != "ran" {
            self.outcome = r.outcome;
        }
        self.waiting_for.clone_from(&r.waiting_for);
        self.snapshots_read += r.snapshots_read;
        self.input_rows += r.input_rows;
        self.output_rows += r.output_rows;
        self.quarantined_rows += r.quarantined_rows;
        for (k, v) in &r.failed_rules {
            *self.failed_rules.entry(k.clone()).or_default() += v;
        }
        self.more = r.more;
        self.quarantine_repeated |= r.quarantine_repeated;
        self.conflicts += r.conflicts;
        self.elapsed_ms += r.elapsed_ms;
    }
}

/// The watermarks a table's current snapshot records, per input.
pub fn watermarks(table: Option<&Table>) -> BTreeMap<String, Watermark> {
    let Some(s) = table.and_then(|t| t.metadata().current_snapshot()) else {
        return BTreeMap::new();
    };
    let props = &s.summary().additional_properties;
    let number = |key: String| props.get(&key).and_then(|v| v.parse().ok());
    props
        .keys()
        .filter_map(|k| {
            let input = k.strip_prefix(WATERMARK_PREFIX)?;
            let mark = Watermark {
                snapshot: number(k.clone())?,
                sequence: number(format!("{SEQUENCE_PREFIX}{input}"))?,
            };
            Some((input.to_string(), mark))
        })
        .collect()
}

fn ident(name: &str) -> TableIdent {
    let (ns, t) = split(name);
    TableIdent::new(NamespaceIdent::new(ns.to_string()), t.to_string())
}

/// What the inputs give one run.
struct Read {
    /// Providers to register, by input name.
    providers: Vec<(String, Arc<dyn TableProvider>)>,
    /// Watermarks once this run commits.
    ends: BTreeMap<String, Watermark>,
    snapshots: usize,
    rows: u64,
    more: bool,
    /// The quarantine already holds this exact range (a run died after committing it).
    quarantine_done: bool,
}

impl Runner {
    /// A runner for the models of a config (its `settings`), committing through `swap`
    /// under `locks`.
    pub fn new(
        settings: ModelSettings,
        catalog: Arc<dyn Catalog>,
        swap: CatalogSwap,
        locks: CommitLocks,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            catalog,
            catalog_name: settings.catalog_name,
            bronze: settings.bronze,
            swap,
            locks,
            compression: settings.compression,
            metrics,
        }
    }

    /// Run `model` once. Nothing to do is not an error (`up_to_date`, `waiting`).
    pub async fn run(&self, model: &Model) -> Result<RunReport, ModelError> {
        let started = Instant::now();
        let mut report = RunReport {
            model: model.name.clone(),
            outcome: "up_to_date",
            ..Default::default()
        };
        let result = self.run_inner(model, &mut report).await;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        let seconds = started.elapsed().as_secs_f64();
        let none = BTreeMap::new();
        match &result {
            Ok(()) => self.metrics.model_run(
                &model.name,
                report.outcome,
                seconds,
                report.output_rows,
                // A rerun after a crash repeats quarantined rows it does not write again.
                if report.quarantine_repeated {
                    &none
                } else {
                    &report.failed_rules
                },
            ),
            Err(_) => self
                .metrics
                .model_run(&model.name, "error", seconds, 0, &none),
        }
        result.map(|()| report)
    }

    async fn run_inner(&self, model: &Model, report: &mut RunReport) -> Result<(), ModelError> {
        let mut inputs: HashMap<String, Table> = HashMap::new();
        for name in &model.inputs {
            let (ns, t) = split(name);
            match crate::lake::load_if_exists(self.catalog.as_ref(), ns, t).await? {
                Some(t) => {
                    inputs.insert(name.clone(), t);
                }
                None => report.waiting_for.push(name.clone()),
            }
        }
        if !report.waiting_for.is_empty() {
            report.outcome = "waiting";
            return Ok(());
        }
        let target =
            crate::lake::load_if_exists(self.catalog.as_ref(), &model.namespace, &model.table)
                .await?;
        let (q_ns, q_table) = split(&model.quarantine);
        let quarantine = crate::lake::load_if_exists(self.catalog.as_ref(), q_ns, q_table).await?;
        let before = watermarks(target.as_ref());
        let read = match model.cfg.mode {
            Mode::Incremental => {
                self.read_incremental(model, &inputs, &before, &watermarks(quarantine.as_ref()))
                    .await?
            }
            Mode::Recompute => {
                self.read_full(
                    model,
                    &inputs,
                    target.as_ref(),
                    &watermarks(quarantine.as_ref()),
                )
                .await?
            }
        };
        let Some(read) = read else {
            return Ok(());
        };
        report.outcome = "ran";
        report.quarantine_repeated = read.quarantine_done;
        report.snapshots_read = read.snapshots;
        report.input_rows = read.rows;
        report.more = read.more;

        let ctx = self.session(&read.providers)?;
        let df = ctx
            .sql(&model.cfg.sql)
            .await
            .map_err(|e| ModelError::Sql(e.to_string()))?;
        let raw_schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let raw = df
            .collect()
            .await
            .map_err(|e| ModelError::Sql(e.to_string()))?;
        let schema = lake_schema(&raw_schema)?;
        let batches = raw
            .iter()
            .map(|b| to_schema(b, &schema))
            .collect::<Result<Vec<_>, _>>()?;

        // The rows already in the target, for the unique key (unless this run replaces it).
        let existing = match (&target, model.cfg.mode) {
            (Some(t), Mode::Incremental) if !model.cfg.unique.is_empty() => {
                match t.metadata().current_snapshot_id() {
                    Some(id) => {
                        let p =
                            IcebergStaticTableProvider::try_new_from_table_snapshot(t.clone(), id)
                                .await?;
                        ctx.register_table("__sluice_target", Arc::new(p))?;
                        Some("__sluice_target")
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let checked = expect::check(
            &ctx,
            &schema,
            batches,
            &model.cfg.expect,
            &model.cfg.unique,
            existing,
        )
        .await?;
        report.output_rows = checked.pass.iter().map(|b| b.num_rows() as u64).sum();
        report.quarantined_rows = checked.fail.iter().map(|b| b.num_rows() as u64).sum();
        report.failed_rules = checked.per_rule.clone();

        let run_id = uuid::Uuid::now_v7().to_string();
        let mut props: HashMap<String, String> = HashMap::new();
        for (input, mark) in &read.ends {
            props.insert(
                format!("{WATERMARK_PREFIX}{input}"),
                mark.snapshot.to_string(),
            );
            props.insert(
                format!("{SEQUENCE_PREFIX}{input}"),
                mark.sequence.to_string(),
            );
        }
        props.insert(RUN_KEY.to_string(), run_id.clone());
        let replace_all = model.cfg.mode == Mode::Recompute;
        let layer = model.namespace.as_str();
        // Quarantine first: see the module comment for why this order is safe.
        let must_quarantine = if replace_all {
            // A rebuild's quarantine replaces the last one's, even when it is now empty.
            quarantine.is_some() || !checked.fail.is_empty()
        } else {
            !checked.fail.is_empty()
        };
        // The target first exists with the right columns, so a run that cannot commit its
        // rows does not quarantine any either.
        let t = match target {
            Some(t) => t,
            None => {
                crate::lake::create_if_missing(
                    self.catalog.as_ref(),
                    &model.namespace,
                    &model.table,
                    &schema,
                    &model.cfg.partition,
                    &[("sluice.layer", layer), ("sluice.model", &model.name)],
                )
                .await?
            }
        };
        check_schema(&model.name, &t, &schema)?;
        if must_quarantine && !read.quarantine_done {
            let qschema = expect::quarantine_schema(&schema);
            let q = match quarantine {
                Some(q) => q,
                None => {
                    crate::lake::create_if_missing(
                        self.catalog.as_ref(),
                        q_ns,
                        q_table,
                        &qschema,
                        &[],
                        &[
                            ("sluice.layer", "quarantine"),
                            ("sluice.model", &model.name),
                        ],
                    )
                    .await?
                }
            };
            check_schema(&model.quarantine, &q, &qschema)?;
            report.conflicts += self
                .commit(
                    &model.quarantine,
                    &q,
                    &checked.fail,
                    &props,
                    &before,
                    replace_all,
                )
                .await?;
        }
        report.conflicts += self
            .commit(&model.name, &t, &checked.pass, &props, &before, replace_all)
            .await?;
        tracing::info!(
            model = %model.name,
            input_rows = report.input_rows,
            output_rows = report.output_rows,
            quarantined = report.quarantined_rows,
            more = report.more,
            "model run committed"
        );
        Ok(())
    }

    /// The rows appended to each input since the target's watermarks.
    async fn read_incremental(
        &self,
        model: &Model,
        inputs: &HashMap<String, Table>,
        target_marks: &BTreeMap<String, Watermark>,
        quarantine_marks: &BTreeMap<String, Watermark>,
    ) -> Result<Option<Read>, ModelError> {
        // Is the quarantine ahead of the target (a run died between its two commits)? Then
        // this run repeats that run's range exactly.
        let mut pinned = false;
        for (name, table) in inputs {
            if let Some(q) = quarantine_marks.get(name)
                && target_marks.get(name) != Some(q)
            {
                let after = delta::snapshots_after(table, name, target_marks.get(name).copied())?;
                if after.iter().any(|s| s.snapshot_id() == q.snapshot) {
                    pinned = true;
                }
            }
        }
        let mut read = Read {
            providers: Vec::new(),
            ends: BTreeMap::new(),
            snapshots: 0,
            rows: 0,
            more: false,
            quarantine_done: pinned,
        };
        let mut any_new = false;
        for name in &model.inputs {
            let table = &inputs[name];
            let after = target_marks.get(name).copied();
            let stop_at = if pinned {
                quarantine_marks.get(name).copied()
            } else {
                None
            };
            let d = if pinned && stop_at.is_some() && stop_at == after {
                Delta {
                    end: after,
                    complete: true,
                    ..Default::default()
                }
            } else {
                match delta::added_since(
                    table,
                    name,
                    after,
                    stop_at.map(|w| w.snapshot),
                    model.cfg.max_files_per_run,
                )
                .await
                {
                    Ok(d) => d,
                    // First run over a table whose early history is expired: its live files.
                    Err(ModelError::HistoryIncomplete { .. }) if after.is_none() => Delta {
                        end: table
                            .metadata()
                            .current_snapshot()
                            .map(|s| Watermark::of(s)),
                        files: crate::lake::live_files(table).await?,
                        snapshots: 1,
                        complete: true,
                    },
                    Err(e) => return Err(e),
                }
            };
            any_new |= d.snapshots > 0;
            read.more |= !d.complete;
            read.snapshots += d.snapshots;
            if let Some(end) = d.end {
                read.ends.insert(name.clone(), end);
            }
            let batches = crate::lake::read_data_files(table, &d.files).await?;
            read.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            let schema = crate::lake::table_arrow_schema(table)?;
            read.providers.push((
                name.clone(),
                Arc::new(MemTable::try_new(schema, vec![batches])?),
            ));
        }
        Ok(any_new.then_some(read))
    }

    /// Every input at its current snapshot, unless the target already reflects them all.
    async fn read_full(
        &self,
        model: &Model,
        inputs: &HashMap<String, Table>,
        target: Option<&Table>,
        quarantine_marks: &BTreeMap<String, Watermark>,
    ) -> Result<Option<Read>, ModelError> {
        let ends: BTreeMap<String, Watermark> = model
            .inputs
            .iter()
            .filter_map(|n| {
                let current = inputs[n].metadata().current_snapshot()?;
                Some((n.clone(), Watermark::of(current)))
            })
            .collect();
        if target.is_some() && watermarks(target) == ends {
            return Ok(None);
        }
        let mut read = Read {
            providers: Vec::new(),
            quarantine_done: !quarantine_marks.is_empty() && *quarantine_marks == ends,
            ends,
            snapshots: 0,
            rows: 0,
            more: false,
        };
        for name in &model.inputs {
            let table = inputs[name].clone();
            let provider: Arc<dyn TableProvider> = match read.ends.get(name).map(|w| &w.snapshot) {
                Some(id) => {
                    read.snapshots += 1;
                    read.rows += table
                        .metadata()
                        .snapshot_by_id(*id)
                        .and_then(|s| s.summary().additional_properties.get("total-records"))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    Arc::new(
                        IcebergStaticTableProvider::try_new_from_table_snapshot(table, *id).await?,
                    )
                }
                None => Arc::new(MemTable::try_new(
                    crate::lake::table_arrow_schema(&table)?,
                    vec![vec![]],
                )?),
            };
            read.providers.push((name.clone(), provider));
        }
        Ok(Some(read))
    }

    /// A session where each input resolves to its provider, as `namespace.table`,
    /// `catalog.namespace.table`, or a bare name for the lander's namespace.
    fn session(
        &self,
        providers: &[(String, Arc<dyn TableProvider>)],
    ) -> Result<SessionContext, ModelError> {
        let config =
            SessionConfig::new().with_default_catalog_and_schema(&self.catalog_name, &self.bronze);
        let ctx = SessionContext::new_with_config(config);
        let catalog = MemoryCatalogProvider::new();
        let mut schemas: BTreeMap<&str, Arc<MemorySchemaProvider>> = BTreeMap::new();
        schemas.insert(&self.bronze, Arc::new(MemorySchemaProvider::new()));
        for (name, provider) in providers {
            schemas
                .entry(split(name).0)
                .or_insert_with(|| Arc::new(MemorySchemaProvider::new()))
                .register_table(split(name).1.to_string(), provider.clone())?;
        }
        for (ns, schema) in schemas {
            catalog.register_schema(ns, schema)?;
        }
        ctx.register_catalog(&self.catalog_name, Arc::new(catalog));
        Ok(ctx)
    }

    /// Append `batches` to `table` (or replace its rows), with `props`, retrying lost races;
    /// refuses when another run moved the watermarks first. Returns the conflicts retried.
    async fn commit(
        &self,
        name: &str,
        table: &Table,
        batches: &[RecordBatch],
        props: &HashMap<String, String>,
        before: &BTreeMap<String, Watermark>,
        replace_all: bool,
    ) -> Result<u32, ModelError> {
        const MAX_CONFLICTS: u32 = 20;
        let run_id = props.get(RUN_KEY).cloned().unwrap_or_default();
        // The writer wants the table's own schema (with its field ids).
        let table_schema = crate::lake::table_arrow_schema(table)?;
        let batches = batches
            .iter()
            .map(|b| RecordBatch::try_new(table_schema.clone(), b.columns().to_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        let files = crate::lake::write_data_files(
            table,
            &batches,
            &format!("model-{run_id}"),
            self.compression,
            None,
        )
        .await?;
        let result = async {
            let mut conflicts = 0u32;
            loop {
                let mut locked = self.locks.lock(name).await;
                let head = locked
                    .head(&self.swap, self.catalog.as_ref(), &ident(name))
                    .await?;
                let table = head.table();
                let current = table.metadata().current_snapshot();
                if current.is_some_and(|s| {
                    s.summary().additional_properties.get(RUN_KEY) == Some(&run_id)
                }) {
                    // An attempt that reported failure had in fact committed.
                    return Ok(conflicts);
                }
                let marks = watermarks(Some(table));
                let is_quarantine = name.starts_with(&format!("{}.", super::QUARANTINE_NAMESPACE));
                if !is_quarantine && marks != *before && !marks.is_empty() {
                    return Err(ModelError::ConcurrentRun(name.to_string()));
                }
                let remove: HashSet<String> = if replace_all {
                    crate::lake::live_files(table)
                        .await?
                        .iter()
                        .map(|f| f.file_path().to_string())
                        .collect()
                } else {
                    HashSet::new()
                };
                let change = Change {
                    remove,
                    add: files.clone(),
                    spec_id: table.metadata().default_partition_spec_id(),
                    operation: if replace_all && current.is_some() {
                        Operation::Overwrite
                    } else {
                        Operation::Append
                    },
                    properties: props.clone(),
                };
                match crate::lake::snapshot::commit(&self.swap, &head, &change).await {
                    Ok(done) => {
                        locked.committed(&done.head);
                        return Ok(conflicts);
                    }
                    Err(CommitError::Conflict) if conflicts < MAX_CONFLICTS => {
                        conflicts += 1;
                        tracing::info!(table = name, "model commit lost a race; retrying");
                    }
                    Err(CommitError::Conflict) => {
                        return Err(ModelError::TooManyConflicts(conflicts));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        .await;
        // After a swap of unknown outcome the files may be the table's: orphan cleanup
        // removes them if not.
        if result
            .as_ref()
            .is_err_and(|e| !matches!(e, ModelError::Commit(CommitError::Unknown(_))))
        {
            for f in &files {
                if let Err(e) = table.file_io().delete(f.file_path()).await {
                    tracing::warn!(
                        path = f.file_path(),
                        "cannot remove an uncommitted file: {e}"
                    );
                }
            }
        }
        result
    }
}

/// The types a model's output is stored as: what Iceberg has, nullable.
fn lake_schema(schema: &Schema) -> Result<SchemaRef, ModelError> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let ty = lake_type(f.data_type()).ok_or_else(|| ModelError::UnsupportedType {
                column: f.name().clone(),
                data_type: f.data_type().to_string(),
            })?;
            Ok(Field::new(f.name(), ty, true))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

fn lake_type(t: &DataType) -> Option<DataType> {
    Some(match t {
        DataType::Boolean
        | DataType::Int32
        | DataType::Int64
        | DataType::Float32
        | DataType::Float64
        | DataType::Utf8
        | DataType::Binary
        | DataType::Date32
        | DataType::Decimal128(_, _) => t.clone(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Date64 => DataType::Date32,
        DataType::Time32(_) | DataType::Time64(_) => DataType::Time64(TimeUnit::Microsecond),
        DataType::Timestamp(_, _) => crate::lake::normalize_type(t),
        DataType::Dictionary(_, v) => lake_type(v)?,
        _ => return None,
    })
}

/// `batch` cast to `schema` (same columns, lake types).
fn to_schema(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ModelError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                // Values that do not fit are an error, not a silent NULL.
                arrow_cast::cast_with_options(
                    c,
                    f.data_type(),
                    &arrow_cast::CastOptions {
                        safe: false,
                        ..Default::default()
                    },
                )
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// The table must have the model's output columns (names and types, in order).
fn check_schema(name: &str, table: &Table, want: &Schema) -> Result<(), ModelError> {
    let have = crate::lake::table_arrow_schema(table)?;
    let shape = |s: &Schema| -> Vec<(String, DataType)> {
        s.fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect()
    };
    if shape(&have) != shape(want) {
        let show = |s: &Schema| {
            s.fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ModelError::SchemaChanged {
            table: name.to_string(),
            have: show(&have),
            want: show(want),
        });
    }
    Ok(())
}

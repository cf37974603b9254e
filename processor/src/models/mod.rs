//! SQL models: silver and gold Iceberg tables defined by a query over other tables, run in
//! dependency order, incrementally (only new input rows) or by recomputing the target, with
//! expectations whose failing rows are quarantined.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | why a model run fails (`ModelError`) |
//! | `config.rs` | `[models.NAME]`: SQL, mode, schedule, expectations |
//! | `graph.rs` | names and inputs checked, the run order, cycles refused |
//! | `delta.rs` | what an input appended after a watermark |
//! | `expect.rs` | expectations and the unique key; failing rows to quarantine |
//! | `run.rs` | one run of one model, committed with its watermarks |
//! | `scheduler.rs` | the models `serve` runs, each on its schedule |
//! | `status.rs` | `models list`, and dropping a model's tables for a rebuild |
//! | `tests.rs` | the runner end to end, on a lake in a temporary directory |

mod config;
mod delta;
mod expect;
mod graph;
mod run;
mod scheduler;
mod status;
#[cfg(test)]
mod tests;

pub use config::{Mode, ModelConfig, Schedule};
pub use graph::{Model, ModelGraph, QUARANTINE_NAMESPACE};
pub use run::{ModelSettings, RunReport, Runner, Watermark, watermarks};
pub use scheduler::Scheduler;
pub use status::{describe, drop_tables};

/// Why a model run failed. A failed run commits nothing to its target (rows it already
/// quarantined are not quarantined again by the run that repeats it).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An input's history no longer reaches the snapshot the model last read (expired, or
    /// the table was dropped and made anew): the rows in between cannot be found.
    #[error(
        "input {input}: the last snapshot this model read ({snapshot}) is no longer in the \
         table's history (expired?); rebuild the model with `sluice-processor models run \
         --rebuild`"
    )]
    WatermarkLost {
        /// The input, `namespace.table`.
        input: String,
        /// The snapshot id of the model's watermark on it.
        snapshot: i64,
    },
    /// An input's oldest snapshots are expired, so its history cannot be read from the
    /// start. A model's first run reads the input's live files instead; a run repeating an
    /// interrupted one cannot, and fails.
    #[error("input {input}: its early history is expired")]
    HistoryIncomplete {
        /// The input, `namespace.table`.
        input: String,
    },
    /// An incremental model's input has a snapshot that deletes or overwrites rows.
    #[error(
        "input {input}: snapshot {snapshot} deletes or overwrites rows, which an incremental \
         model cannot follow; use mode = \"recompute\""
    )]
    NotAppendOnly {
        /// The input, `namespace.table`.
        input: String,
        /// The id of that snapshot.
        snapshot: i64,
    },
    /// The model's SQL now produces other columns than its target table has.
    #[error(
        "table {table} has columns ({have}) but the model now produces ({want}); rebuild the \
         model with `sluice-processor models run --rebuild`"
    )]
    SchemaChanged {
        /// The target, `namespace.table`.
        table: String,
        /// Its columns, as `name type` pairs.
        have: String,
        /// The columns the SQL produces, alike.
        want: String,
    },
    /// The SQL produces a column of an Arrow type Iceberg has no match for.
    #[error("column {column}: the model produces {data_type}, which the lake cannot store")]
    UnsupportedType {
        /// The column's name.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// The model's SQL failed to plan or to run; DataFusion's message.
    #[error("sql: {0}")]
    Sql(String),
    /// An expectation (or the unique key) cannot be checked: its SQL does not compile, is
    /// not a boolean, or names a column the output lacks.
    #[error("expect.{rule}: {msg}")]
    Expectation {
        /// The rule's name under `expect`, or `unique` for the unique key.
        rule: String,
        /// What is wrong with it.
        msg: String,
    },
    /// Another run of the model (another processor, or `models run`) committed to the
    /// target, named here, first; this run's result was discarded.
    #[error("{0}: another run of this model committed first; this run's result was discarded")]
    ConcurrentRun(String),
    /// Other writers of the target kept committing first; the count of lost races.
    #[error("gave up after {0} conflicting commits")]
    TooManyConflicts(u32),
    /// The catalog or storage failed: a table, a manifest or a file could not be loaded,
    /// created or written.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// An input's data file could not be read back.
    #[error(transparent)]
    Read(#[from] crate::lake::ReadError),
    /// The commit to the target or its quarantine failed otherwise than by a lost race.
    #[error(transparent)]
    Commit(#[from] crate::lake::CommitError),
    /// DataFusion failed outside the model's own SQL: registering the inputs, or checking
    /// the expectations.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed on the output's rows: converting them to the target's types, or
    /// comparing them for the unique key.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// `namespace.table` as its two parts (model and input names are checked to have both).
pub(crate) fn split(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("", name))
}

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

mod config;
mod delta;
mod expect;
mod graph;
mod run;
mod scheduler;
mod status;

pub use config::{Mode, ModelConfig, Schedule};
pub use graph::{Model, ModelGraph, QUARANTINE_NAMESPACE};
pub use run::{ModelSettings, RunReport, Runner, Watermark, watermarks};
pub use scheduler::Scheduler;
pub use status::{describe, drop_tables};

/// Why a model run failed. A failed run commits nothing to its target (rows it already
/// quarantined are not quarantined again by the run that repeats it).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "input {input}: the last snapshot this model read ({snapshot}) is no longer in the \
         table's history (expired?); rebuild the model with `sluice-processor models run \
         --rebuild`"
    )]
    WatermarkLost { input: String, snapshot: i64 },
    #[error("input {input}: its early history is expired")]
    HistoryIncomplete { input: String },
    #[error(
        "input {input}: snapshot {snapshot} deletes or overwrites rows, which an incremental \
         model cannot follow; use mode = \"recompute\""
    )]
    NotAppendOnly { input: String, snapshot: i64 },
    #[error(
        "table {table} has columns ({have}) but the model now produces ({want}); rebuild the \
         model with `sluice-processor models run --rebuild`"
    )]
    SchemaChanged {
        table: String,
        have: String,
        want: String,
    },
    #[error("column {column}: the model produces {data_type}, which the lake cannot store")]
    UnsupportedType { column: String, data_type: String },
    #[error("sql: {0}")]
    Sql(String),
    #[error("expect.{rule}: {msg}")]
    Expectation { rule: String, msg: String },
    #[error("{0}: another run of this model committed first; this run's result was discarded")]
    ConcurrentRun(String),
    #[error("gave up after {0} conflicting commits")]
    TooManyConflicts(u32),
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Read(#[from] crate::lake::ReadError),
    #[error(transparent)]
    Commit(#[from] crate::lake::CommitError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// `namespace.table` as its two parts (model and input names are checked to have both).
pub(crate) fn split(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("", name))
}

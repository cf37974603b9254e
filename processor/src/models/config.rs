//! `[models.NAME]`: SQL models that turn bronze tables into silver and gold ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// One model: a target table (`namespace.table`, the key) kept equal to a SQL query over
/// its inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// One DataFusion `SELECT` over lake tables: `table` (the lander's namespace),
    /// `namespace.table` or `sluice.namespace.table` (`catalog.name`).
    pub sql: String,
    /// How the target follows its inputs. `"incremental"`: each run reads the rows its
    /// inputs appended since the last run and appends the result. `"recompute"`: each run
    /// recomputes the table and replaces it in one `overwrite` snapshot.
    #[serde(default)]
    pub mode: Mode,
    /// If given, must list exactly the tables the SQL reads.
    ///
    /// Default: the tables `sql` reads.
    #[serde(default)]
    pub inputs: Option<Vec<String>>,
    /// `"on_change"` (whenever an input has a new snapshot, checked every
    /// `processor.model_poll_interval`) or an interval (> 0) such as `"5m"`: at most once
    /// per interval, when an input changed.
    ///
    /// Default: `"on_change"`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Table of named rules, `name = "SQL boolean expression"` over the output columns;
    /// rows for which a rule is false or NULL go to `quarantine.<namespace>_<table>` with
    /// the rules they failed. The name `unique` is reserved.
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
    /// Key columns: a row whose key is already in the table, or earlier in the same run,
    /// is quarantined under `unique`.
    #[serde(default)]
    pub unique: Vec<String>,
    /// Incremental: new data files read per input per run (≥ 1; one input snapshot is
    /// never split), which bounds its memory. More runs follow until caught up.
    #[serde(default = "default_max_files")]
    pub max_files_per_run: usize,
    /// How the target is partitioned when it is created: Iceberg transforms of its
    /// columns (`["day(ts)", "bucket(16, host)"]`); unpartitioned if empty.
    #[serde(default)]
    pub partition: Vec<crate::lake::partition::PartitionField>,
}

fn default_max_files() -> usize {
    256
}

/// How a model's target follows its inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Each run reads only the rows its inputs appended since the last run and appends the
    /// result (filters, casts, deduplication: silver).
    #[default]
    Incremental,
    /// Each run recomputes the whole target from its inputs and replaces it in one
    /// snapshot (aggregates: gold).
    Recompute,
}

/// When a model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Schedule {
    /// Whenever an input has a snapshot the target has not seen (checked every
    /// `processor.model_poll_interval`).
    #[default]
    OnChange,
    /// At most once per interval, and only when an input changed.
    Every(Duration),
}

impl TryFrom<String> for Schedule {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "on_change" {
            return Ok(Self::OnChange);
        }
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => Ok(Self::Every(d)),
            _ => Err(format!(
                "schedule {s:?}: write \"on_change\" or an interval such as \"30s\""
            )),
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OnChange => f.write_str("on_change"),
            Self::Every(d) => write!(f, "every {}", humantime::format_duration(*d)),
        }
    }
}

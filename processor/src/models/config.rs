//! `[models.NAME]`: SQL models that turn bronze tables into silver and gold ones.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// One model: a target table (`namespace.table`, the key) kept equal to a SQL query over
/// its inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// One `SELECT` (DataFusion SQL) over lake tables, named `namespace.table`.
    pub sql: String,
    /// How the target follows its inputs.
    #[serde(default)]
    pub mode: Mode,
    /// Tables the SQL reads; by default, every table it names.
    #[serde(default)]
    pub inputs: Option<Vec<String>>,
    /// When to run: `"on_change"` (as soon as an input has a new snapshot) or an interval
    /// such as `"30s"` or `"5m"`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Named rules every output row must pass (SQL boolean expressions over the output's
    /// columns); failing rows go to `quarantine.<namespace>_<table>` with the rules they
    /// failed. A rule that is NULL for a row counts as failed.
    #[serde(default)]
    pub expect: BTreeMap<String, String>,
    /// Columns that together identify a row: a row whose key is already in the target (or
    /// earlier in the same run) is quarantined under the rule `unique`.
    #[serde(default)]
    pub unique: Vec<String>,
    /// An incremental run reads at most this many new data files (more runs follow at
    /// once), which bounds its memory.
    #[serde(default = "default_max_files")]
    pub max_files_per_run: usize,
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

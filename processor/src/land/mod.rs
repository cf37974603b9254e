//! Landing: accepted batches buffered per bronze table, written as Parquet and committed to
//! Iceberg with their marks, then acknowledged.
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | `[lander]`: commit interval and sizes, namespace, compression; `[streams.NAME]` |
//! | `lander.rs` | the `Lander` handle: requests, verdicts, questions about marks |
//! | `task.rs` | the lander task: buffers and table state, dedup by marks, verdicts |
//! | `task/schema.rs` | its tables evolved, taken from the catalog, moved to their partitioning |
//! | `task/quarantined.rs` | its batches that never fit, kept in quarantine and marked as taken |
//! | `pending.rs` | a batch waiting for its commit, and how much of it a table holds |
//! | `commit.rs` | `CommitJob`: one commit of a table's batches and its retries |
//! | `columns.rs` | a batch's columns mapped onto its table's, or what the table must become |
//! | `quarantine.rs` | batches that cannot land kept in `quarantine.bronze_<stream>`, read back |
//! | `replay.rs` | quarantined batches landed again once they fit, each exactly once |
//! | `inflight.rs` | per Kafka partition, offsets taken and not yet landed |
//! | `tests.rs` | the lander end to end, on a lake in a temporary directory |

mod columns;
mod commit;
mod config;
pub mod inflight;
pub mod lander;
mod pending;
pub mod quarantine;
pub mod replay;
mod task;
#[cfg(test)]
mod tests;

pub use columns::ColumnError;
pub use config::{LanderConfig, SchemaPolicy, StreamConfig, Streams};

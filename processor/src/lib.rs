//! The Sluice processor: receives batches from agents (QUIC) and Kafka topics, lands them
//! exactly once in bronze Apache Iceberg tables, refines them with SQL models into silver
//! and gold, keeps the tables compact and their history bounded, and answers read-only SQL.
//!
//! A batch's way through the processor, folder by folder:
//!
//! | file | job |
//! |---|---|
//! | `receive/` | QUIC and Kafka receivers, and the checks a batch passes: TLS, signature, access, quota |
//! | `land/` | the lander: batches buffered per table, committed with their marks, then acked |
//! | `lake/` | the Iceberg side: catalog, storage, files, manifests, commits, marks, locks |
//! | `models/` | SQL models from bronze to silver and gold, incremental and scheduled |
//! | `maintenance/` | compaction, snapshot expiry, orphan removal |
//! | `http/` | the read-only query API and the status page |
//! | `telemetry/` | counters and the status page's history |
//! | `config.rs` | the processor's config file: the stages' sections composed, loaded, checked |
//! | `server.rs` | wires the stages for `serve` |
//! | `tasks.rs` | background runtimes and bounded task shutdown |
//! | `testing.rs` | test helpers shared by the stages' tests: a lake, batches landed in it |
//! | `cli/` | the `sluice-processor` commands |
//! | `main.rs` | the binary: parses the command line and hands it to `cli::start` |

pub mod cli;
pub mod config;
pub mod http;
pub mod lake;
pub mod land;
pub mod maintenance;
pub mod models;
pub mod receive;
pub mod server;
pub mod tasks;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;

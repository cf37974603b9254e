//! The Iceberg side: the catalog, tables, their data files and every commit to them.
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | `[catalog]`, the Parquet compression, the catalog settings in effect |
//! | `catalog.rs` | open the catalog; load or create tables; bronze schemas |
//! | `conform.rs` | batches reshaped to a table's exact types (nested names, nulls, widening) |
//! | `evolve.rs` | a table's next schema (new optional columns, widened types) and its commit |
//! | `files.rs` | write batches as Parquet data files, read them back |
//! | `partition.rs` | partition specs as the config writes them, the bronze default, binding |
//! | `manifests.rs` | manifest lists, live files, which small manifests a commit merges |
//! | `snapshot.rs` | one commit (append, replace, overwrite): manifests, list, metadata, swap |
//! | `retention.rs` | which snapshots expire, and removing the files only they used |
//! | `swap.rs` | the catalog's compare-and-swap, and where a table points now |
//! | `locks.rs` | per-table commit locks shared by the lander, models and maintenance |
//! | `marks.rs` | the marks in snapshot summaries: what each agent and partition has landed |
//! | `storage.rs` | the object store (local or S3) and its byte counters |
//! | `stats.rs` | rows, files, bytes and metadata of each table |

mod catalog;
mod config;
pub mod conform;
pub mod evolve;
mod files;
pub mod locks;
pub mod manifests;
pub mod marks;
pub mod partition;
pub mod retention;
pub mod snapshot;
mod stats;
pub mod storage;
mod swap;

pub use catalog::*;
pub use config::{CatalogConfig, CatalogSettings, Compression};
pub use files::*;
pub use manifests::{live_files, live_files_by_spec, manifest_list};
pub use snapshot::{Change, CommitError, Head};
pub use stats::{TableStats, qualified, tables};
pub use swap::CatalogSwap;

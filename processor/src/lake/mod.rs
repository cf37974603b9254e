//! The Iceberg side: the catalog, tables, their data files and every commit to them.
//!
//! | file | job |
//! |---|---|
//! | `catalog.rs` | open the catalog; load or create tables; bronze schemas |
//! | `files.rs` | write batches as Parquet data files, read them back |
//! | `manifests.rs` | manifest lists, live files, which small manifests a commit merges |
//! | `snapshot.rs` | one commit (append, replace, overwrite): manifests, list, metadata, swap |
//! | `retention.rs` | which snapshots expire, and removing the files only they used |
//! | `swap.rs` | the catalog's compare-and-swap, and where a table points now |

mod catalog;
mod files;
pub mod manifests;
pub mod retention;
pub mod snapshot;
mod swap;

pub use catalog::*;
pub use files::*;
pub use manifests::{live_files, manifest_list};
pub use snapshot::{Change, CommitError, Head};
pub use swap::CatalogSwap;

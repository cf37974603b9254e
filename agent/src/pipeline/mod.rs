//! The pipeline between sources and the write-ahead log: chunks are cut into batches by
//! rows, bytes and age, and encoded as Arrow IPC for the wire.
//!
//! | file | job |
//! |---|---|
//! | `batcher.rs` | a stream's batcher: chunks in, [`ReadyBatch`]es out, offered to the tap |
//! | `config.rs` | `[batch]` |
//!
//! Transforms run between a source and its stream's batcher, in the sandbox of
//! [`crate::wasm`] (`wasm::run_transforms`).

mod batcher;
mod config;

pub use batcher::{Chunk, Limits, ReadyBatch, run};
pub use config::BatchConfig;

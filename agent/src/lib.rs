//! The Sluice edge agent: runs sources (the telemetry simulator, WebAssembly connectors),
//! batches their rows into Arrow, keeps them in a write-ahead log and ships them over QUIC
//! or Kafka until the far side has them.
//!
//! A batch's way through the agent, folder by folder:
//!
//! | module | job |
//! |---|---|
//! | `source/` | where rows enter: the simulator source, resume points |
//! | `wasm/` | the sandbox running connector components as sources and transforms |
//! | `pipeline/` | chunks cut into batches by rows, bytes and age, encoded as Arrow IPC |
//! | `wal/` | each stream's write-ahead log: batches kept on disk until acknowledged |
//! | `sink/` | one lane per stream to a processor (QUIC) or to Kafka |
//! | `telemetry/` | counters, health and taps |
//! | `config.rs` | the agent's config file, composed of each stage's section |
//! | `run.rs` | wires the stages for one run of the agent |
//! | `cli/` | the `sluice-agent` commands |

pub mod cli;
pub mod config;
pub mod pipeline;
pub mod run;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod wal;
pub mod wasm;

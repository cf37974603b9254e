//! The simulation engine: a scenario compiled and checked ([`Scenario`]), then run chunk by
//! chunk ([`Simulation`]).
//!
//! Determinism: each stream's events are a function of the scenario and seed alone (each
//! entity has its own random stream; a child event's fate is drawn from a stream keyed by
//! its parent event), and each column draws from its own stream in event order. Chunk
//! boundaries therefore change nothing but where the output is cut, and columns can be
//! generated on several threads at once.
//!
//! | file | job |
//! |---|---|
//! | `plan.rs` | [`Scenario`]: the checked scenario, each stream's plan, parents before children |
//! | `entities.rs` | entity sets: ids from an `{index}` pattern, attributes drawn once per entity |
//! | `compile.rs` | one stream's plan: field types, expression order, anomaly checks, schema |
//! | `simulation.rs` | [`Simulation`]: set up from [`RunOptions`], stepped chunk by chunk |
//! | `clock.rs` | which stream is due: when each stream's future events can happen |
//! | `stream.rs` | one stream's run state: its source of events and its generators |
//! | `generate.rs` | a chunk of one stream: its events taken, finished into rows, counted |
//! | `children.rs` | child events drawn from each parent event, queued until their time |
//! | `late.rs` | late rows held back and released in arrival order |
//! | `columns.rs` | Arrow columns of a chunk: generated, anomalies applied, expressions evaluated |
//! | `tests.rs` | whole scenarios run: determinism, related streams, rates, anomalies, errors |

mod children;
mod clock;
mod columns;
mod compile;
mod entities;
mod generate;
mod late;
mod plan;
mod simulation;
mod stream;
#[cfg(test)]
mod tests;

pub use plan::Scenario;
pub use simulation::{RunOptions, Simulation, Step};

//! What the processor tells its operator: counters on `/metrics` and the rolling history
//! behind the status page.
//!
//! | file | job |
//! |---|---|
//! | `metrics.rs` | every counter, gauge and histogram |
//! | `status.rs` | the status page's history: rates, freshness, table sizes over time |

pub mod metrics;
pub mod status;

pub use metrics::Metrics;

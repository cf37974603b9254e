//! What the agent tells its operator: counters on `/metrics`, health on `/health` and
//! `/ready`, and taps of the rows flowing through each stream.
//!
//! | file | job |
//! |---|---|
//! | `metrics.rs` | every counter, gauge and histogram, and the health of each sink lane |
//! | `tap.rs` | per-stream taps, served as JSON lines on `/tap/STREAM` |

mod metrics;
pub mod tap;

pub use metrics::Metrics;
pub use tap::{Tap, Taps};

//! The processor's HTTP endpoint beyond `/metrics` and `/health`: the read-only SQL API
//! and the status page.
//!
//! | file | job |
//! |---|---|
//! | `api.rs` | routes: `/api/query`, `/api/tables`, `/api/status`, the status page |
//! | `committed.rs` | `/api/committed`: where the lake stands for an agent's stream |
//! | `query.rs` | `[query]`, and read-only SQL over the lake with DataFusion within its limits |
//! | `status_page.html` | the status page itself, served by `api.rs` |

pub mod api;
pub mod committed;
pub mod query;

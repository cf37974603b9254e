//! Sources: where rows enter the agent. Each source task produces Arrow chunks into its
//! streams' batchers.
//!
//! | file | job |
//! |---|---|
//! | `simulator.rs` | the built-in telemetry simulator as a source, paced and checkpointed |
//!
//! WebAssembly sources run in the sandbox of [`crate::wasm`] (`wasm::run_source`).

mod simulator;

use tokio::sync::watch;

pub use simulator::run_simulator;

/// Where a stream's checkpoint comes from: `None` until known, then the checkpoint (itself
/// `None` for a stream that has none yet).
pub type Resume = watch::Receiver<Option<Option<String>>>;

/// Wait until the stream's checkpoint is known; `None` if `stop` fires first.
pub async fn wait_resume(
    resume: &mut Resume,
    stop: &mut watch::Receiver<bool>,
) -> Option<Option<String>> {
    tokio::select! {
        r = resume.wait_for(Option::is_some) => r.ok().and_then(|c| c.clone()),
        _ = stop.wait_for(|s| *s) => None,
    }
}

//! `sluice-agent run`.

use std::path::PathBuf;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::telemetry::{Metrics, Taps};

/// Run the agent of config file `path` until its sources end or it is stopped.
pub async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = AgentConfig::load(&path)?;
    let health = sluice_ops::health_for(cfg.api.as_ref());
    let metrics = Metrics::new(health.clone());
    let taps = Taps::new(cfg.sources.iter().flat_map(|(n, s)| s.streams(n)));
    if let Some(api) = &cfg.api {
        let routes = sluice_ops::Routes {
            read: taps.router(),
            ..Default::default()
        };
        let addr = sluice_ops::serve_api(api, metrics.clone(), health.clone(), routes)
            .await
            .with_context(|| format!("cannot listen on api.listen {}", api.listen))?;
        tracing::info!(%addr, "agent API listening");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        sluice_ops::stop_signal().await;
        tracing::info!("stop requested; draining unacknowledged batches");
        let _ = stop_tx.send(true);
    });
    tracing::info!(agent = %cfg.agent.id, sources = cfg.sources.len(), "agent starting");
    let summary = crate::run::run(cfg, metrics.clone(), taps, stop_rx).await?;
    tracing::info!(
        rows = summary.rows_generated,
        batches_acked = summary.batches_acked,
        batches_rejected = summary.batches_rejected,
        batches_unshipped = summary.batches_unshipped,
        "agent finished"
    );
    let live = health.live();
    if !live.ok {
        anyhow::bail!("finished unhealthy:\n{}", live.problems.join("\n"));
    }
    Ok(())
}

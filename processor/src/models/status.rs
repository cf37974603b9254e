//! What `sluice-processor models list` shows, and dropping a model's tables to rebuild it.

use iceberg::Catalog;
use serde::Serialize;

use super::delta::snapshots_after;
use super::graph::Model;
use super::{ModelError, ModelGraph, split, watermarks};
use crate::lake::load_if_exists;

/// One model's state.
#[derive(Debug, Serialize)]
pub struct ModelStatus {
    pub model: String,
    pub mode: String,
    pub schedule: String,
    pub inputs: Vec<String>,
    /// Rows in the target; none before its first run.
    pub rows: Option<u64>,
    /// Input snapshots the target has not read yet (recompute models: inputs changed).
    pub pending_snapshots: usize,
}

/// The state of every model, in run order.
pub async fn describe(
    catalog: &dyn Catalog,
    graph: &ModelGraph,
) -> Result<Vec<ModelStatus>, ModelError> {
    let mut out = Vec::new();
    for m in &graph.order {
        let target = load_if_exists(catalog, &m.namespace, &m.table).await?;
        let marks = watermarks(target.as_ref());
        let mut pending = 0;
        for input in &m.inputs {
            let (ns, t) = split(input);
            if let Some(table) = load_if_exists(catalog, ns, t).await? {
                pending += match snapshots_after(&table, input, marks.get(input).copied()) {
                    Ok(s) => s.len(),
                    Err(_) => table.metadata().snapshots().len(),
                };
            }
        }
        out.push(ModelStatus {
            model: m.name.clone(),
            mode: format!("{:?}", m.cfg.mode).to_lowercase(),
            schedule: m.cfg.schedule.to_string(),
            inputs: m.inputs.clone(),
            rows: target.as_ref().map(|t| {
                t.metadata()
                    .current_snapshot()
                    .and_then(|s| s.summary().additional_properties.get("total-records"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            }),
            pending_snapshots: pending,
        });
    }
    Ok(out)
}

/// Drop a model's target and quarantine tables (their files stay until orphan cleanup), so
/// its next run rebuilds them from the inputs.
pub async fn drop_tables(catalog: &dyn Catalog, model: &Model) -> Result<(), ModelError> {
    for name in [&model.name, &model.quarantine] {
        let (ns, t) = split(name);
        if let Some(table) = load_if_exists(catalog, ns, t).await? {
            catalog.drop_table(table.identifier()).await?;
            tracing::info!(table = %name, "dropped for rebuild");
        }
    }
    Ok(())
}

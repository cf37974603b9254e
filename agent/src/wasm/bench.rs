//! `sluice-agent plugin bench`: rows per second through a connector on one core, next to
//! the native simulator producing rows of the same shape, and the cost of one call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::instance::{Instance, Sandbox};
use super::instance::{Source, Transform};
use super::{Runtime, arrow};
use sluice_simulator::{SimulatorConfig, Step};

/// One measured path.
pub struct Figure {
    /// The path's label in the printed table.
    pub name: &'static str,
    /// Rows that went through it.
    pub rows: u64,
    /// Wall-clock time they took, on one core.
    pub elapsed: Duration,
}

impl Figure {
    /// Throughput, the figure the targets are stated in.
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// Everything the bench measured.
pub struct Report {
    /// The simulator generating the same five columns, without WebAssembly: the baseline.
    pub native: Figure,
    /// The connector returning its rows as typed columns.
    pub typed: Figure,
    /// The connector returning its rows as JSON lines, parsed by the agent.
    pub json: Figure,
    /// Mean duration of a `poll` returning a single row.
    pub call_overhead: Duration,
}

/// The native baseline: the simulator generating the counter connector's five columns.
const NATIVE: &str = r#"
    seed = 1
    entities = 100
    rate = 1000
    start_time = "2026-01-01T00:00:00Z"
    [fields]
    ts = { type = "timestamp" }
    seq = { type = "sequence", start = 0 }
    device = { type = "entity", prefix = "dev-" }
    temp = { type = "uniform", min = 20.0, max = 30.0 }
    ok = { type = "choice", values = [true, false], weights = [9, 1] }
"#;

/// Run the three paths for `rows` rows each, `batch` rows per call.
pub fn run(
    runtime: &Runtime,
    path: &std::path::Path,
    rows: u64,
    batch: u32,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut produced = 0u64;
    let mut sim = native()?;
    while produced < rows {
        produced += next_native(&mut sim, batch)?.num_rows() as u64;
    }
    let native = Figure {
        name: "native simulator",
        rows: produced,
        elapsed: started.elapsed(),
    };

    let (component, _) = runtime.load(path)?;
    let sandbox = bench_sandbox();
    let through =
        |name: &'static str, mode: &str, per_call: u32, total: u64| -> anyhow::Result<Figure> {
            let mut inst =
                Instance::<Source>::new(runtime, &component, Arc::from("bench"), &sandbox)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            let config = format!(r#"{{"mode": "{mode}", "devices": 100}}"#);
            let schema = arrow::schema(
                &inst
                    .open(&config, None)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .map_err(|e| anyhow::anyhow!(e))?;
            let started = Instant::now();
            let mut n = 0u64;
            while n < total {
                let r = inst.poll(per_call).map_err(|e| anyhow::anyhow!("{e}"))?;
                let batch = r
                    .batch
                    .ok_or_else(|| anyhow::anyhow!("plugin returned no batch"))?;
                n += arrow::to_record_batch(&schema, batch)
                    .map_err(|e| anyhow::anyhow!(e))?
                    .num_rows() as u64;
            }
            Ok(Figure {
                name,
                rows: n,
                elapsed: started.elapsed(),
            })
        };
    let typed = through("wasm, typed columns", "columns", batch, rows)?;
    let json = through("wasm, JSON lines", "json", batch, rows / 4)?;
    let calls = through("single-row calls", "columns", 1, 20_000)?;
    Ok(Report {
        native,
        typed,
        json,
        call_overhead: calls.elapsed / calls.rows.max(1) as u32,
    })
}

/// The simulator producing the counter connector's columns, unbounded.
fn native() -> anyhow::Result<sluice_simulator::Simulation> {
    let cfg: SimulatorConfig = toml::from_str(NATIVE)?;
    cfg.simulation(1).map_err(|e| anyhow::anyhow!("{e}"))
}

fn next_native(
    sim: &mut sluice_simulator::Simulation,
    batch: u32,
) -> anyhow::Result<arrow_array::RecordBatch> {
    match sim.step(batch as usize, None)? {
        Step::Rows { batch, .. } => Ok(batch),
        _ => anyhow::bail!("the simulator ended early"),
    }
}

fn bench_sandbox() -> Sandbox {
    Sandbox::bare(512 << 20, Duration::from_secs(30))
}

/// Rows per second through a transform built like plugins/examples/redact (keep `ok` rows,
/// hash `device`, add a column), fed the native simulator's batches: Arrow → typed columns
/// → `apply` → Arrow, the whole path a transformed chunk takes in the agent.
pub fn transform(
    runtime: &Runtime,
    path: &std::path::Path,
    rows: u64,
    batch: u32,
) -> anyhow::Result<Figure> {
    let input = next_native(&mut native()?, batch)?;
    let (component, _) = runtime.load(path)?;
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let mut inst =
        Instance::<Transform>::new(runtime, &component, Arc::from("bench"), &bench_sandbox())
            .map_err(|e| err(&e))?;
    let config = r#"{"keep": [{"column": "ok", "op": "==", "value": true}],
        "hash": ["device"], "salt": "bench", "add": {"site": "bench"}}"#;
    let columns = arrow::columns(&input.schema()).map_err(|e| err(&e))?;
    let output =
        arrow::schema(&inst.open(config, &columns).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    let started = Instant::now();
    let mut n = 0u64;
    while n < rows {
        let wit = arrow::to_wit(&input).map_err(|e| err(&e))?;
        let out = inst.apply(wit).map_err(|e| err(&e))?;
        arrow::to_record_batch(&output, out).map_err(|e| err(&e))?;
        n += input.num_rows() as u64;
    }
    Ok(Figure {
        name: "wasm transform",
        rows: n,
        elapsed: started.elapsed(),
    })
}

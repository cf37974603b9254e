//! `sluice-agent simulate`: run a scenario (or an agent's simulator source) as fast as
//! possible into JSON lines or Parquet files, with a progress bar and a summary.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow_array::RecordBatch;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{AgentConfig, SourceConfig};
use sluice_simulator::{RunOptions, Scenario, ScenarioSpec, Simulation, Step};

/// What to simulate and where to write it.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A scenario file (TOML). Or use --config and --source for an agent's simulator source.
    pub scenario: Option<PathBuf>,
    /// Agent config file holding the simulator source.
    #[arg(short, long, requires = "source", conflicts_with = "scenario")]
    pub config: Option<PathBuf>,
    /// Name of the simulator source (`[sources.NAME]`).
    #[arg(short, long, requires = "config")]
    pub source: Option<String>,
    /// Only this stream (default: every stream).
    #[arg(long)]
    pub stream: Option<String>,
    /// Stop each stream after this many rows.
    #[arg(long)]
    pub rows: Option<u64>,
    /// Stop at this simulated time (RFC 3339, e.g. 2026-01-02T00:00:00Z).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// FILE.jsonl, FILE.parquet, or `-` for JSON lines on standard output. With several
    /// streams the name must contain `{stream}`.
    #[arg(short, long, default_value = "-")]
    pub out: String,
    /// Replace the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads generating columns (output is identical whatever the number).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Rows generated per chunk (output is identical whatever the size).
    #[arg(long, default_value_t = 8192)]
    pub batch: usize,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Measure generation speed on one core instead: rows/s of 10-column numeric telemetry
    /// and of telemetry with `fake` string fields, straight into Arrow (nothing written).
    #[arg(long, conflicts_with_all = ["scenario", "config"])]
    pub bench: bool,
}

/// A benchmark scenario: 1,000 devices, events at `rate`, with these `fields`.
fn bench_scenario(rate: &str, fields: &str) -> String {
    format!(
        r#"
seed = 1
start = "2026-01-01T00:00:00Z"
[entities.dev]
count = 1000
[streams.telemetry]
entity = "dev"
rate = {rate}
[streams.telemetry.fields]
ts = {{ type = "timestamp" }}
seq = {{ type = "sequence" }}
{fields}"#
    )
}

const EVERY_SECOND: &str = r#"{ type = "constant", every = "1s" }"#;

/// Eight numeric fields (with the timestamp and sequence: ten columns).
const NUMERIC_FIELDS: &str = r#"
temp = { type = "normal", mean = 21.0, stddev = 2.0 }
humidity = { type = "seasonal", mean = 50.0, daily = 10.0, noise = 1.0 }
pressure = { type = "uniform", min = 980.0, max = 1040.0 }
voltage = { type = "random_walk", start = 3.6, step = 0.01, min = 3.0, max = 4.2 }
packets = { type = "poisson", lambda = 4.0 }
latency = { type = "lognormal", mu = 2.0, sigma = 0.5 }
level = { type = "uniform", min = 0, max = 100, integer = true }
ok = { type = "choice", values = [true, false], weights = [9, 1] }
"#;

/// Five `fake` fields drawn per event (four strings and an HTTP status) and three numbers.
const FAKE_FIELDS: &str = r#"
host = { type = "fake", fake = "hostname" }
ip = { type = "fake", fake = "ipv4" }
path = { type = "fake", fake = "http_path" }
method = { type = "fake", fake = "http_method" }
status = { type = "fake", fake = "http_status" }
latency = { type = "lognormal", mu = 2.0, sigma = 0.5 }
bytes = { type = "uniform", min = 0, max = 100000, integer = true }
temp = { type = "normal", mean = 21.0, stddev = 2.0 }
"#;

/// `simulate --bench`: rows/s on one thread for each benchmark scenario.
pub fn bench(rows: u64, batch: usize) -> anyhow::Result<()> {
    println!("one core, {batch} rows per chunk, straight into Arrow record batches");
    for (name, text, target) in [
        (
            "10 numeric columns",
            bench_scenario(EVERY_SECOND, NUMERIC_FIELDS),
            Some(5_000_000.0),
        ),
        (
            "with 5 fake columns",
            bench_scenario(EVERY_SECOND, FAKE_FIELDS),
            Some(1_000_000.0),
        ),
        (
            "numeric, Poisson times",
            bench_scenario(r#"{ type = "poisson", per_second = 1.0 }"#, NUMERIC_FIELDS),
            None,
        ),
    ] {
        let spec: ScenarioSpec = toml::from_str(&text)?;
        let scenario = Arc::new(
            Scenario::compile(&spec, false)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?,
        );
        let mut sim = Simulation::new(
            scenario,
            RunOptions {
                start_us: 0,
                rows: Some(rows),
                end_us: None,
                threads: 1,
            },
        );
        let started = Instant::now();
        let mut n = 0u64;
        let mut bytes = 0usize;
        while let Step::Rows { batch, .. } = sim.step(batch, None)? {
            n += batch.num_rows() as u64;
            bytes += batch.get_array_memory_size();
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        let verdict = match target {
            Some(t) if rate >= t => format!("target >= {t:.0}: met"),
            Some(t) => format!("target >= {t:.0}: NOT met"),
            None => "(per-entity random arrivals merged by a heap)".into(),
        };
        println!(
            "  {name:<22} {rate:>12.0} rows/s  ({n} rows in {secs:.2} s, {:.0} MB/s of Arrow)  {verdict}",
            bytes as f64 / secs / 1e6,
        );
    }
    Ok(())
}

/// Run `args`; prints the summary on standard error.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if args.bench {
        return bench(args.rows.unwrap_or(10_000_000), args.batch.max(1));
    }
    let (scenario, total) = load(&args)?;
    let rows = args.rows.or(total);
    if rows.is_none() && args.until.is_none() && scenario.end_us.is_none() {
        anyhow::bail!("the scenario has no `end`: pass --rows N or --until TIME");
    }
    let names: Vec<String> = scenario.stream_names().map(str::to_string).collect();
    let selected: Vec<usize> =
        match &args.stream {
            Some(s) => vec![scenario.stream_index(s).with_context(|| {
                format!("no stream named {s:?} (streams: {})", names.join(", "))
            })?],
            None => (0..names.len()).collect(),
        };
    if selected.len() > 1 && args.out != "-" && !args.out.contains("{stream}") {
        anyhow::bail!(
            "the scenario has {} streams ({}): put {{stream}} in --out, or pick one with --stream",
            names.len(),
            names.join(", ")
        );
    }
    let mut writers: Vec<Option<Output>> = (0..names.len()).map(|_| None).collect();
    for &i in &selected {
        let path = args.out.replace("{stream}", &names[i]);
        writers[i] = Some(Output::create(&path, scenario.schema(i))?);
    }
    let mut sim = Simulation::new(
        scenario.clone(),
        RunOptions {
            start_us: Utc::now().timestamp_micros(),
            rows,
            end_us: args.until.map(|t| t.timestamp_micros()),
            threads: args.threads,
        },
    );
    let progress = progress_bar(&args, rows.map(|r| r * selected.len() as u64));
    let started = Instant::now();
    let mut written = 0u64;
    loop {
        match sim.step(args.batch.max(1), None)? {
            Step::Done => break,
            Step::Wait(_) => {
                anyhow::bail!("internal error: the simulation asked to wait without a clock")
            }
            Step::Rows { stream, batch } => {
                if let Some(w) = writers[stream].as_mut() {
                    w.write(&batch)
                        .with_context(|| format!("cannot write stream {}", names[stream]))?;
                    written += batch.num_rows() as u64;
                    progress.set_position(written);
                }
            }
        }
    }
    for w in writers.into_iter().flatten() {
        w.finish()?;
    }
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let summary = sim.summary();
    eprintln!(
        "simulated {written} rows in {secs:.2} s ({:.0} rows/s)",
        written as f64 / secs.max(1e-9)
    );
    for &i in &selected {
        let anomalies: Vec<String> = summary.anomalies[i]
            .iter()
            .map(|(label, n)| format!("{label} {n}"))
            .collect();
        eprintln!(
            "  {}: {} rows{}",
            names[i],
            summary.rows[i],
            if anomalies.is_empty() {
                String::new()
            } else {
                format!("; anomalies injected: {}", anomalies.join(", "))
            }
        );
    }
    Ok(())
}

/// The scenario to run and the source's `total`, if any.
fn load(args: &SimulateArgs) -> anyhow::Result<(Arc<Scenario>, Option<u64>)> {
    if let Some(path) = &args.scenario {
        let scenario = sluice_simulator::compile_file(path, args.seed)?;
        return Ok((Arc::new(scenario), None));
    }
    let (Some(config), Some(source)) = (&args.config, &args.source) else {
        anyhow::bail!("give a scenario file, or --config FILE --source NAME");
    };
    let cfg = AgentConfig::load(config)?;
    let Some(SourceConfig::Simulator(sim)) = cfg.sources.get(source) else {
        anyhow::bail!(
            "{} has no simulator source named {source:?}",
            config.display()
        );
    };
    let mut sim = sim.clone();
    if let Some(seed) = args.seed {
        if sim.scenario.is_some() {
            anyhow::bail!("--seed with --config replaces an inline source's seed only");
        }
        sim.seed = seed;
        sim = sim.recompiled();
    }
    let scenario = sim.scenario().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((scenario, sim.total))
}

fn progress_bar(args: &SimulateArgs, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    if args.quiet || args.out == "-" || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = if total.is_some() {
        "{bar:40} {pos}/{len} rows ({per_sec}, {eta} left)"
    } else {
        "{spinner} {pos} rows ({per_sec})"
    };
    if let Ok(s) = ProgressStyle::with_template(style) {
        bar.set_style(s);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One stream's output file.
enum Output {
    Json(arrow_json::LineDelimitedWriter<BufWriter<Box<dyn Write>>>),
    #[cfg(feature = "parquet")]
    Parquet(Box<parquet::arrow::ArrowWriter<File>>),
}

impl Output {
    fn create(path: &str, schema: arrow_schema::SchemaRef) -> anyhow::Result<Self> {
        if path == "-" {
            let sink: Box<dyn Write> = Box::new(std::io::stdout().lock());
            return Ok(Output::Json(arrow_json::LineDelimitedWriter::new(
                BufWriter::new(sink),
            )));
        }
        let p = Path::new(path);
        let file = File::create(p).with_context(|| format!("cannot create {path}"))?;
        match p.extension().and_then(|e| e.to_str()) {
            #[cfg(not(feature = "parquet"))]
            Some("parquet") => {
                let _ = schema;
                anyhow::bail!(
                    "{path}: this sluice-agent was built without Parquet output (feature `parquet`)"
                )
            }
            #[cfg(feature = "parquet")]
            Some("parquet") => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                Ok(Output::Parquet(Box::new(
                    parquet::arrow::ArrowWriter::try_new(file, schema, Some(props))?,
                )))
            }
            Some("jsonl") | Some("json") | Some("ndjson") => {
                let sink: Box<dyn Write> = Box::new(file);
                Ok(Output::Json(arrow_json::LineDelimitedWriter::new(
                    BufWriter::new(sink),
                )))
            }
            _ => anyhow::bail!("{path}: the output must end in .parquet or .jsonl (or be -)"),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        match self {
            Output::Json(w) => w.write(batch)?,
            #[cfg(feature = "parquet")]
            Output::Parquet(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::Json(mut w) => {
                w.finish()?;
                w.into_inner().flush()?;
            }
            #[cfg(feature = "parquet")]
            Output::Parquet(w) => {
                w.close()?;
            }
        }
        Ok(())
    }
}

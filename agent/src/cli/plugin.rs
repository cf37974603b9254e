//! `sluice-agent plugin check | new | bench`.

use std::path::{Path, PathBuf};

use crate::wasm;

/// `plugin new`: create a connector project that builds as generated.
pub fn new(lang: wasm::scaffold::Lang, name: &str, dir: &Path) -> anyhow::Result<()> {
    let (root, build) = wasm::scaffold::create(lang, name, dir)?;
    println!(
        "created {}
build it with:
  cd {} && {build}",
        root.display(),
        root.display()
    );
    Ok(())
}

/// `plugin bench`: rows/s of the counter (and redact) components against the native
/// simulator.
pub fn bench(
    file: PathBuf,
    rows: u64,
    batch: u32,
    transform: Option<PathBuf>,
) -> anyhow::Result<()> {
    let runtime = wasm::Runtime::bare()?;
    let r = wasm::bench::run(&runtime, &file, rows, batch)?;
    let native = r.native.rows_per_sec();
    println!(
        "one core, {batch} rows per call, 5 columns (timestamp, int64, string, float64 with nulls, bool)"
    );
    for f in [&r.native, &r.typed, &r.json] {
        println!(
            "  {:<22} {:>12.0} rows/s  ({} rows in {:.2} s, {:.2}x native)",
            f.name,
            f.rows_per_sec(),
            f.rows,
            f.elapsed.as_secs_f64(),
            native / f.rows_per_sec()
        );
    }
    println!(
        "  per-call overhead       {:>9.2} µs (poll returning one row)",
        r.call_overhead.as_secs_f64() * 1e6
    );
    if let Some(t) = transform {
        let f = wasm::bench::transform(&runtime, &t, rows, batch)?;
        println!(
            "  {:<22} {:>12.0} rows/s in  ({} rows in {:.2} s; keep 90%, hash a string, add a column)",
            f.name,
            f.rows_per_sec(),
            f.rows,
            f.elapsed.as_secs_f64()
        );
    }
    println!(
        "  targets: typed >= 2,000,000 rows/s and within 1.5x of native; JSON lines >= 300,000 rows/s"
    );
    Ok(())
}

/// `plugin check`: does the component implement a sluice:plugin world, what does it
/// declare and import, and which network uses did it try that no grant covers.
pub fn check(
    file: PathBuf,
    config: String,
    input: Option<String>,
    allow_tcp: &[String],
    allow_http: &[String],
    polls: u32,
) -> anyhow::Result<()> {
    let input = input
        .map(|spec| wasm::schema_from_spec(&spec))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--input: {e}"))?;
    let grants = wasm::network::Grants::parse(allow_tcp, allow_http)
        .map_err(|(what, why)| anyhow::anyhow!("--{}: {why}", what.replace('_', "-")))?;
    let runtime = wasm::Runtime::bare()?;
    let report = wasm::check(
        &runtime,
        &file,
        &config,
        input.as_ref(),
        None,
        grants,
        polls,
    )?;
    println!(
        "{}: OK, implements sluice:plugin/{}@{}",
        file.display(),
        report.kind,
        report.version
    );
    println!("  sha256: {}", report.digest);
    match &report.schema {
        Some(schema) => {
            println!(
                "  {}:",
                match report.kind {
                    wasm::PluginKind::Source => "schema",
                    wasm::PluginKind::Transform => "output schema",
                }
            );
            for f in schema.fields() {
                let null = if f.is_nullable() { "" } else { " not null" };
                println!("    {}: {}{null}", f.name(), f.data_type());
            }
        }
        None => {
            println!("  output schema: depends on the input; pass --input name:type,... to see it")
        }
    }
    println!("  imports (capabilities it may ask for; granted only by config):");
    for i in &report.imports {
        println!("    {i}");
    }
    if !report.refused.is_empty() {
        println!("  refused (missing grants: allow_tcp, allow_http):");
        for r in &report.refused {
            println!("    {r}");
        }
    }
    Ok(())
}

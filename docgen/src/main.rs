//! `sluice-docgen`: rewrite the generated tables of docs/CONFIGURATION.md from the config
//! structs; `--check` only reports the sections that differ, and fails if any does.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

const USAGE: &str = "usage: sluice-docgen [--check] [--repo DIR]

Rewrites the tables between `<!-- generated: ID -->` and `<!-- end generated -->` in
docs/CONFIGURATION.md from the config structs' doc comments and defaults.

  --check     change nothing; exit 1 listing the sections that differ
  --repo DIR  the repository (default: the one this tool was built in)";

fn main() -> ExitCode {
    run().unwrap_or_else(|e| {
        // Printed here rather than returned: a returned error shows a backtrace, not help.
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    })
}

fn run() -> anyhow::Result<ExitCode> {
    let mut check = false;
    // Built inside the workspace, so `cargo run -p sluice-docgen` works from any directory.
    let mut repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--repo" => repo = args.next().context("--repo needs a directory")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    let update = sluice_docgen::compare(&repo)?;
    let doc = sluice_docgen::DOC;
    if update.stale.is_empty() {
        println!("{doc} is up to date");
        return Ok(ExitCode::SUCCESS);
    }
    if check {
        eprint!("{}", update.report(doc));
        return Ok(ExitCode::FAILURE);
    }
    let path = repo.join(doc);
    std::fs::write(&path, &update.text).with_context(|| format!("writing {}", path.display()))?;
    let ids: Vec<&str> = update.stale.iter().map(|s| s.id.as_str()).collect();
    println!("{doc}: rewrote {}", ids.join(", "));
    Ok(ExitCode::SUCCESS)
}

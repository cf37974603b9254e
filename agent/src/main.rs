//! `sluice-agent`: the Sluice edge agent. The command line is parsed here; everything else
//! is in the library (`cli::start`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    sluice_agent::cli::start(sluice_agent::cli::Cli::parse())
}

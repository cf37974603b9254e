//! `sluice-processor`: receives batches from Sluice agents and lands them exactly once in
//! bronze Apache Iceberg tables. The command line is parsed here; everything else is in
//! the library (`cli::start`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    sluice_processor::cli::start(sluice_processor::cli::Cli::parse())
}

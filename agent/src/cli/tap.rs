//! `sluice-agent tap`: print a sample of the rows flowing through a running agent's stream.

use std::io::{BufRead, Read, Write};

use anyhow::Context;

use super::api_client::{Target, locate};
use crate::telemetry::tap::DEFAULT_LIMIT;

/// `sluice-agent tap`.
#[derive(Debug, clap::Args)]
pub struct TapArgs {
    /// The stream to watch.
    pub stream: String,
    #[command(flatten)]
    pub target: Target,
    /// Rows to print before stopping; 0: until interrupted.
    #[arg(short = 'n', long, default_value_t = DEFAULT_LIMIT)]
    pub limit: u64,
}

/// Print the rows a running agent's stream shows, one JSON object per line.
pub fn run(args: TapArgs) -> anyhow::Result<()> {
    let api = locate(&args.target)?;
    let path = format!("/tap/{}?limit={}", args.stream, args.limit);
    let (status, mut body) = api
        .open(&path)
        .context("cannot reach the agent (is it running?)")?;
    if status != 200 {
        let mut reason = String::new();
        let _ = body.read_to_string(&mut reason);
        anyhow::bail!("{}: {}", api, reason.trim_end());
    }
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = body
            .read_line(&mut line)
            .with_context(|| format!("reading from {api}"))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(line.as_bytes())?;
        // Rows arrive as they flow: show each at once.
        out.flush()?;
    }
}

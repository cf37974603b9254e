//! `sluice-agent top`: a live view of a running agent, read from its `/metrics` and
//! `/ready`: per source its rate, per stream what it batches and ships, what waits in its
//! buffer and what it lost, per plugin its calls and failures.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::api_client::{Api, locate};

/// The most bytes of `/metrics` or `/ready` read.
const MAX_ANSWER: u64 = 64 << 20;

/// `sluice-agent top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub target: super::api_client::Target,
    /// Time between refreshes (rates are over this interval).
    #[arg(short, long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print one view (after one interval) and exit, rather than refreshing.
    #[arg(long)]
    pub once: bool,
}

/// Refresh the view every interval until interrupted (or once).
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let api = locate(&args.target)?;
    let terminal = std::io::stdout().is_terminal();
    let mut before = Sample::take(&api)?;
    loop {
        std::thread::sleep(args.interval);
        let now = Sample::take(&api)?;
        let ready = api.get("/ready", MAX_ANSWER)?;
        let view = render(&api.to_string(), &before, &now, &ready);
        let mut out = std::io::stdout().lock();
        if args.once {
            write!(out, "{view}")?;
            return Ok(());
        }
        if terminal {
            // Home and clear: the view replaces the last one.
            write!(out, "\x1b[H\x1b[2J{view}")?;
        } else {
            writeln!(out, "{view}")?;
        }
        out.flush()?;
        before = now;
    }
}

/// Per metric name: the labels and value of each of its series.
type Series = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

/// One scrape of `/metrics`.
struct Sample {
    at: Instant,
    series: Series,
}

impl Sample {
    fn take(api: &Api) -> anyhow::Result<Self> {
        let (status, text) = api
            .get("/metrics", MAX_ANSWER)
            .context("cannot reach the agent (is it running?)")?;
        anyhow::ensure!(
            status == 200,
            "{api}/metrics answered {status}: {}",
            text.trim()
        );
        Ok(Self {
            at: Instant::now(),
            series: parse(&text),
        })
    }

    /// The value of `name` where label `key` is `value` (summed over other labels).
    fn get(&self, name: &str, key: &str, value: &str) -> f64 {
        self.series.get(name).map_or(0.0, |s| {
            s.iter()
                .filter(|(l, _)| l.get(key).is_some_and(|v| v == value))
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Every value label `key` takes in `name`.
    fn labels(&self, name: &str, key: &str) -> BTreeSet<String> {
        self.series
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|(l, _)| l.get(key).cloned())
            .collect()
    }
}

/// The Prometheus text format, as series per metric name.
fn parse(text: &str) -> Series {
    let mut out = Series::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
            None => (head, BTreeMap::new()),
        };
        out.entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    out
}

/// `a="x",b="y"` (the label values Sluice uses hold no quotes or commas).
fn labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

fn render(endpoint: &str, before: &Sample, now: &Sample, ready: &(u16, String)) -> String {
    let secs = now.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let rate = |name: &str, key: &str, value: &str| {
        ((now.get(name, key, value) - before.get(name, key, value)) / secs).max(0.0)
    };
    let mut v = String::new();
    let status = ready.1.lines().next().unwrap_or("?");
    let _ = writeln!(v, "sluice-agent at {endpoint}: {}", status.to_uppercase());
    for problem in ready.1.lines().skip(1) {
        let _ = writeln!(v, "  ! {problem}");
    }

    let _ = writeln!(
        v,
        "\n{:<24} {:>12} {:>10} {:>14}",
        "SOURCE", "ROWS/S", "MB/S", "ROWS"
    );
    for s in now.labels("sluice_agent_source_rows_total", "source") {
        let _ = writeln!(
            v,
            "{:<24} {:>12} {:>10.2} {:>14}",
            s,
            thousands(rate("sluice_agent_source_rows_total", "source", &s)),
            rate("sluice_agent_source_bytes_total", "source", &s) / 1e6,
            thousands(now.get("sluice_agent_source_rows_total", "source", &s)),
        );
    }

    let _ = writeln!(
        v,
        "\n{:<24} {:>12} {:>12} {:>9} {:>9} {:>10} {:>10}",
        "STREAM", "BATCHED/S", "ACKED/S", "IN FLIGHT", "OLDEST", "LOG", "LOST"
    );
    for s in now.labels("sluice_agent_batches_total", "stream") {
        let lost = now.get("sluice_agent_lost_rows_total", "stream", &s);
        let _ = writeln!(
            v,
            "{:<24} {:>12} {:>12} {:>9} {:>8.1}s {:>9.1}M {:>10}",
            s,
            thousands(rate("sluice_agent_batched_rows_total", "stream", &s)),
            thousands(rate("sluice_agent_acked_rows_total", "stream", &s)),
            now.get("sluice_agent_inflight_batches", "stream", &s),
            now.get("sluice_agent_oldest_unacked_age_seconds", "stream", &s),
            now.get("sluice_agent_wal_size_bytes", "stream", &s) / 1e6,
            thousands(lost),
        );
    }

    let plugins = now.labels("sluice_agent_plugin_call_duration_seconds_count", "plugin");
    if !plugins.is_empty() {
        let _ = writeln!(
            v,
            "\n{:<24} {:>10} {:>12} {:>9} {:>9} {:>7}",
            "PLUGIN", "CALLS/S", "MS/CALL", "FAILURES", "RESTARTS", "STATE"
        );
        for p in plugins {
            let calls = rate(
                "sluice_agent_plugin_call_duration_seconds_count",
                "plugin",
                &p,
            );
            let busy = rate(
                "sluice_agent_plugin_call_duration_seconds_sum",
                "plugin",
                &p,
            );
            let per_call = if calls > 0.0 { busy / calls * 1e3 } else { 0.0 };
            let failed = now.get("sluice_agent_plugin_failed", "plugin", &p) > 0.0;
            let _ = writeln!(
                v,
                "{:<24} {:>10.1} {:>12.3} {:>9} {:>9} {:>7}",
                p,
                calls,
                per_call,
                now.get("sluice_agent_plugin_failures_total", "plugin", &p),
                now.get("sluice_agent_plugin_restarts_total", "plugin", &p),
                if failed { "FAILED" } else { "ok" },
            );
        }
    }
    v
}

/// A count with thousands separators, rounded.
fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP sluice_agent_source_rows Rows produced by each source.
# TYPE sluice_agent_source_rows counter
sluice_agent_source_rows_total{source="telemetry"} 1000
sluice_agent_batches_total{stream="telemetry"} 4
sluice_agent_acked_rows_total{stream="telemetry"} 800
sluice_agent_lost_rows_total{stream="telemetry",reason="too_large"} 5
sluice_agent_lost_rows_total{stream="telemetry",reason="rejected"} 2
sluice_agent_inflight_batches{stream="telemetry"} 3
# EOF
"#;

    #[test]
    fn reads_the_exposition_and_shows_rates() {
        let before = Sample {
            at: Instant::now(),
            series: parse(SCRAPE),
        };
        assert_eq!(
            before.get("sluice_agent_lost_rows_total", "stream", "telemetry"),
            7.0
        );
        let later = SCRAPE
            .replace("} 1000", "} 3000")
            .replace("} 800", "} 1800");
        let now = Sample {
            at: before.at + Duration::from_secs(2),
            series: parse(&later),
        };
        let view = render(
            "http://127.0.0.1:1",
            &before,
            &now,
            &(
                503,
                "not ready\nsink for stream \"telemetry\" stalled: 3 batches waiting".into(),
            ),
        );
        assert!(view.contains("NOT READY"), "{view}");
        assert!(view.contains("  ! sink for stream"), "{view}");
        let source = view
            .lines()
            .find(|l| l.starts_with("telemetry") && l.contains("3,000"))
            .expect("source line");
        assert!(source.contains("1,000"), "1,000 rows/s over 2 s: {source}");
        let stream = view
            .lines()
            .filter(|l| l.starts_with("telemetry"))
            .nth(1)
            .expect("stream line");
        assert!(stream.contains(" 500 "), "500 acked rows/s: {stream}");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}

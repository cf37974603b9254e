//! `sluice-bench tables [ROWS]`: what partitioning, nested columns and schema evolution
//! cost, in one run. The QUIC pipeline lands ROWS (default 3,000,000) rows three times into
//! fresh processors: 10 columns unpartitioned, the same partitioned by `day(ts)` (the bronze
//! default), and 20 columns with a map and a list partitioned by `day(ts)`. Then a stream
//! gains a column mid-run: the time from its batches' creation to their commit, which
//! includes the schema change the first of them makes. Each landing prints its total rate
//! (agent start to last commit) and its sustained rate (first to last commit).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use super::{
    TELEMETRY_FIELDS, TempDir, agent_sink, buckets, commit_timeline, counter, free_tcp, free_udp,
    init_certs, processor_common, quantile, run_agent, start_processor, sustained, telemetry_agent,
    wait_committed,
};

/// Ten more, among them a map and a list.
const MORE: &str = r#"labels = { type = "map", keys = ["site", "rack", "zone"], value = { type = "choice", values = ["a", "b", "c", "d"] } }
tags = { type = "list", item = { type = "choice", values = ["hot", "cold", "wet", "dry"] }, min_len = 0, max_len = 3 }
voltage = { type = "normal", mean = 3.3, stddev = 0.1 }
current = { type = "uniform", min = 0.0, max = 2.0 }
uptime = { type = "sequence", per = "entity" }
firmware = { type = "choice", values = ["1.0.3", "1.1.0", "2.0.0"], per = "entity" }
price = { type = "decimal", min = 0.0, max = 999.99, precision = 7, scale = 2 }
day = { type = "date" }
ok = { type = "choice", values = [true, false], weights = [9, 1] }
noise = { type = "lognormal", mu = 0.0, sigma = 0.5 }
"#;

/// One landing of `rows` rows: its throughput and batch → commit latency.
struct Landed {
    /// From the agent's start to the last commit.
    rows_per_s: f64,
    /// Between the first and the last commit.
    sustained: f64,
    mb_per_s: f64,
    p50: f64,
    p99: f64,
}

/// Land `rows` rows of `fields` through a fresh processor whose telemetry stream has
/// `streams` settings.
fn land(processor_bin: &Path, agent_bin: &Path, rows: u64, fields: &str, streams: &str) -> Landed {
    let dir = TempDir::new();
    init_certs(processor_bin, &dir);
    let (quic, api) = (free_udp(), free_tcp());
    write_configs(&dir, quic, api, streams, rows, fields);
    let _processor = start_processor(processor_bin, &dir.path().join("processor.toml"), api);
    let started = Instant::now();
    let committed = "sluice_processor_committed_rows_total{table=\"bronze.telemetry\"}";
    // The agent runs while the commits are timed.
    let (metrics, timeline) = std::thread::scope(|s| {
        let agent = s.spawn(|| run_agent(agent_bin, &dir));
        let landed = commit_timeline(api, committed, rows, started);
        agent.join().expect("agent thread");
        landed
    });
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = counter(
        &metrics,
        "sluice_processor_committed_bytes_total{table=\"bronze.telemetry\"}",
    );
    let latency = buckets(&metrics, "sluice_processor_batch_latency_seconds");
    Landed {
        rows_per_s: counter(&metrics, committed) / elapsed,
        sustained: sustained(&timeline),
        mb_per_s: bytes / elapsed / 1e6,
        p50: quantile(&latency, 0.5),
        p99: quantile(&latency, 0.99),
    }
}

fn write_configs(
    dir: &TempDir,
    quic: SocketAddr,
    api: SocketAddr,
    streams: &str,
    rows: u64,
    fields: &str,
) {
    std::fs::write(
        dir.path().join("processor.toml"),
        format!(
            "{}[lander]\ncommit_interval = \"1s\"\n[streams.telemetry]\n{streams}\n",
            processor_common(quic, api)
        ),
    )
    .expect("processor config");
    std::fs::write(
        dir.path().join("agent.toml"),
        telemetry_agent(&agent_sink(quic), rows, 65_536, None, fields),
    )
    .expect("agent config");
}

/// The bench: three landings, then an evolution.
pub fn run(processor_bin: &Path, agent_bin: &Path, rows: u64) {
    println!("tables bench: {rows} rows per landing, agent -> QUIC -> processor -> bronze");
    let twenty = format!("{TELEMETRY_FIELDS}{MORE}");
    let runs = [
        (
            "10 columns, unpartitioned",
            TELEMETRY_FIELDS,
            "partition = []",
        ),
        (
            "10 columns, day(ts)",
            TELEMETRY_FIELDS,
            "partition = [\"day(ts)\"]",
        ),
        (
            "20 columns (map, list), day(ts)",
            twenty.as_str(),
            "partition = [\"day(ts)\"]",
        ),
    ];
    let mut results = Vec::new();
    for (name, fields, streams) in runs {
        let r = land(processor_bin, agent_bin, rows, fields, streams);
        println!(
            "  {name:<34} {:>10.0} rows/s sustained {:>10.0} rows/s {:>7.1} MB/s  p50 {:.3} s  p99 {:.3} s",
            r.rows_per_s, r.sustained, r.mb_per_s, r.p50, r.p99
        );
        results.push(r);
    }
    println!(
        "  partitioning costs  {:>6.1} % of throughput (target <= 15 %)",
        (1.0 - results[1].sustained / results[0].sustained) * 100.0
    );
    println!(
        "  nested columns      {:>10.0} rows/s sustained (target >= 1000000)",
        results[2].sustained
    );
    evolution(processor_bin, agent_bin);
}

/// A stream of 10 columns gains an eleventh mid-run: the batch → commit latency of the
/// batches that carry it (the first makes the schema change), and the change itself.
fn evolution(processor_bin: &Path, agent_bin: &Path) {
    const BEFORE: u64 = 200_000;
    const AFTER: u64 = 50_000;
    let dir = TempDir::new();
    init_certs(processor_bin, &dir);
    let (quic, api) = (free_udp(), free_tcp());
    write_configs(&dir, quic, api, "", BEFORE, TELEMETRY_FIELDS);
    let _processor = start_processor(processor_bin, &dir.path().join("processor.toml"), api);
    let committed = "sluice_processor_committed_rows_total{table=\"bronze.telemetry\"}";
    let started = Instant::now();
    run_agent(agent_bin, &dir);
    let before = wait_committed(api, committed, BEFORE, started);
    let latency_before = buckets(&before, "sluice_processor_batch_latency_seconds");
    // The same agent resumes with one more column.
    write_configs(
        &dir,
        quic,
        api,
        "",
        BEFORE + AFTER,
        &format!("{TELEMETRY_FIELDS}site = {{ type = \"choice\", values = [\"a\", \"b\"] }}\n"),
    );
    let started = Instant::now();
    run_agent(agent_bin, &dir);
    let after = wait_committed(api, committed, BEFORE + AFTER, started);
    let elapsed = started.elapsed().as_secs_f64();
    let changes = counter(
        &after,
        "sluice_processor_schema_changes_total{table=\"bronze.telemetry\"}",
    );
    assert_eq!(changes, 1.0, "one schema change");
    // The latency of the batches landed since, from the histograms' difference.
    let latency: Vec<(f64, f64)> = buckets(&after, "sluice_processor_batch_latency_seconds")
        .into_iter()
        .zip(latency_before)
        .map(|((le, now), (_, then))| (le, now - then))
        .collect();
    println!(
        "  evolution           {AFTER} rows with a new column in {elapsed:.2} s; their batch -> commit p50 {:.3} s, max {:.3} s (the first made the schema change; target <= 2 s)",
        quantile(&latency, 0.5),
        quantile(&latency, 1.0)
    );
}

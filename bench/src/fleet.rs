//! Many agent identities against one release processor, over QUIC with mutual TLS.
//!
//! `sluice-bench soak [COMMITS] [AGENTS]` runs the processor's default cadence compressed in
//! time: commits every 20 ms instead of 1 s, and every maintenance interval and age scaled
//! by the same factor (50), so COMMITS (default 86,400: a day of 1 s commits) take about
//! half an hour. AGENTS (default 1,000) identities, each with its own certificate, send a
//! small batch every 2 s, so every snapshot records marks of tens of agents and the table
//! holds marks of all of them. At 1k and 5k commits, every 10k and at COMMITS it prints
//! the commit time (p50, p99, from the processor's histogram since the previous reading),
//! the processor's RSS, the bytes under the table's `metadata/` folder, and freshness (p99 time
//! from a batch's creation to its acknowledgement, which the processor sends after the
//! commit holding it), the processor's CPU, and the warehouse bytes it read and wrote per
//! commit (compaction and expiry included).
//!
//! `sluice-bench fleet [SECONDS] [AGENTS]` runs AGENTS (default 1,000) identities at 20
//! rows/s each (one batch a second) in real time at the default settings, and prints
//! freshness, the processor's CPU and RSS, and the size of a snapshot summary.
//!
//! The client is light: one task per agent on one QUIC endpoint, speaking the wire protocol
//! (hello, batches, acks) from `sluice-protocol`, as the agent does.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_protocol::{
    AckStatus, BatchFrame, Envelope, Frame, Hello, encode_batch, read_frame, schema_fingerprint,
    write_frame,
};

use crate::{TempDir, buckets, free_tcp, free_udp, http_get, quantile, start_processor};

/// The stream every agent of the fleet writes.
const STREAM: &str = "fleet";
/// Batches an agent may have unacknowledged before it waits.
const WINDOW: usize = 64;

/// What the agents of a fleet saw.
#[derive(Default)]
struct Seen {
    /// Seconds from a batch's creation to its acknowledgement, since the last reading.
    latencies: Vec<f64>,
    committed: u64,
    /// Acknowledgements other than "committed", and lanes that failed.
    errors: u64,
    /// Batches not sent because the agent's window was full.
    held_back: u64,
}

/// A fleet of agent tasks; stops them when dropped.
struct Fleet {
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Fleet {
    /// Start `agents` agents (certificates `agent-fleet-NNNN` under `certs`), each sending a
    /// batch of `rows` rows every `period`, their starts spread over one period.
    fn start(
        rt: &tokio::runtime::Runtime,
        certs: &Path,
        quic: SocketAddr,
        agents: usize,
        rows: usize,
        period: Duration,
    ) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let endpoint = rt.block_on(async {
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint")
        });
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some(sluice_protocol::UTC.into())),
                false,
            ),
            Field::new("reading", DataType::Float64, false),
            Field::new("count", DataType::Int64, false),
        ]));
        for i in 0..agents {
            let name = agent_name(i);
            let config = client_config(certs, &name);
            let lane = Lane {
                endpoint: endpoint.clone(),
                config,
                quic,
                name,
                schema: schema.clone(),
                rows,
                period,
                offset: period.mul_f64(i as f64 / agents as f64),
                seen: seen.clone(),
                stopped: stopped.clone(),
            };
            rt.spawn(async move {
                let seen = lane.seen.clone();
                if let Err(e) = lane.run().await {
                    eprintln!("  agent lane failed: {e}");
                    seen.lock().expect("seen").errors += 1;
                }
            });
        }
        Self { seen, stop }
    }

    /// What was seen since the last call.
    fn take(&self) -> Seen {
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn agent_name(i: usize) -> String {
    format!("fleet-{i:04}")
}

/// A TLS client config presenting agent `name`'s certificate.
fn client_config(certs: &Path, name: &str) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let cert_chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join(format!("agent-{name}.pem")))
            .expect("agent cert")
            .map(|c| c.expect("agent cert"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("agent-{name}.key"))).expect("key");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_client_auth_cert(cert_chain, key)
        .expect("client auth");
    tls.alpn_protocols = vec![sluice_protocol::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    quinn::ClientConfig::new(Arc::new(quic))
}

/// One agent: a connection with one lane.
struct Lane {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    quic: SocketAddr,
    name: String,
    schema: SchemaRef,
    rows: usize,
    period: Duration,
    offset: Duration,
    seen: Arc<Mutex<Seen>>,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Lane {
    async fn run(mut self) -> anyhow::Result<()> {
        tokio::time::sleep(self.offset).await;
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), self.quic, "localhost")?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(
            &mut send,
            &Frame::Hello(Hello {
                agent: self.name.clone(),
                stream: STREAM.into(),
            }),
        )
        .await?;
        let mut seq = match read_frame(&mut recv, 1 << 20).await? {
            Some(Frame::Welcome(w)) => w.committed_seq,
            other => anyhow::bail!("expected a welcome, got {other:?}"),
        };
        // Sent and not yet acknowledged: (seq, created).
        let in_flight: Arc<Mutex<VecDeque<(u64, Instant)>>> = Arc::default();
        let acks = {
            let in_flight = in_flight.clone();
            let seen = self.seen.clone();
            tokio::spawn(async move {
                while let Ok(Some(Frame::Ack(ack))) = read_frame(&mut recv, 1 << 20).await {
                    let created = {
                        let mut q = in_flight.lock().expect("in flight");
                        while q.front().is_some_and(|(s, _)| *s < ack.seq) {
                            q.pop_front();
                        }
                        q.pop_front().map(|(_, t)| t)
                    };
                    let mut seen = seen.lock().expect("seen");
                    match (ack.status, created) {
                        (AckStatus::Committed, Some(t)) => {
                            seen.committed += 1;
                            seen.latencies.push(t.elapsed().as_secs_f64());
                        }
                        _ => seen.errors += 1,
                    }
                }
            })
        };
        let fingerprint = schema_fingerprint(&self.schema);
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stopped.changed() => break,
            }
            if in_flight.lock().expect("in flight").len() >= WINDOW {
                self.seen.lock().expect("seen").held_back += 1;
                continue;
            }
            seq += 1;
            let now_us = chrono::Utc::now().timestamp_micros();
            let n = self.rows as i64;
            let batch = RecordBatch::try_new(
                self.schema.clone(),
                vec![
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values((0..n).map(|i| now_us - i))
                            .with_timezone(sluice_protocol::UTC),
                    ),
                    Arc::new(Float64Array::from_iter_values(
                        (0..n).map(|i| (seq as f64 + i as f64).sin()),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        (0..n).map(|i| seq as i64 * n + i),
                    )),
                ],
            )?;
            let frame = Frame::Batch(BatchFrame {
                envelope: Envelope {
                    agent: self.name.clone(),
                    stream: STREAM.into(),
                    seq,
                    schema_fingerprint: fingerprint,
                    created_at_us: now_us,
                    rows: self.rows as u32,
                    checkpoint: Some(format!("line={}", seq * self.rows as u64)),
                },
                ipc: Bytes::from(encode_batch(&batch)?),
            });
            in_flight
                .lock()
                .expect("in flight")
                .push_back((seq, Instant::now()));
            write_frame(&mut send, &frame).await?;
        }
        let _ = send.finish();
        acks.abort();
        conn.close(quinn::VarInt::from_u32(0), b"done");
        Ok(())
    }
}

/// A running processor's process id, RSS and CPU time.
struct ProcStat {
    pid: u32,
}

impl ProcStat {
    fn rss_bytes(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024)
    }

    /// CPU seconds (user + system) so far.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return 0.0;
        };
        // Fields after the command name (which may hold spaces) start at its closing ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
        (ticks(11) + ticks(12)) / 100.0
    }
}

/// Files and bytes under `dir`.
fn du(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: a float sum of nothing is -0.0, printed as "-0".
        .fold(0.0, |a, b| a + b)
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A directory with a CA, the server certificate and `agents` agent certificates.
fn fleet_certs(processor_bin: &Path, dir: &TempDir, agents: usize) {
    let mut cmd = Command::new(processor_bin);
    cmd.args(["certs", "init", "--dir"])
        .arg(dir.path().join("certs"));
    for i in 0..agents {
        cmd.args(["--agent", &agent_name(i)]);
    }
    let st = cmd.status().expect("certs init");
    assert!(st.success(), "certs init failed");
}

/// A processor (config with `extra` sections) and a fleet of `agents` identities, each
/// sending a batch of `rows` rows every `period`, on a runtime of their own.
struct Run {
    api: SocketAddr,
    stat: ProcStat,
    fleet: Fleet,
    rt: tokio::runtime::Runtime,
    // Fields drop in order: the processor is gone before its data directory is removed
    // (removing it first made the processor log failed commits after every run).
    _processor: crate::Kill,
    dir: TempDir,
}

impl Run {
    fn start(
        processor_bin: &Path,
        agents: usize,
        extra: &str,
        rows: usize,
        period: Duration,
    ) -> Self {
        let dir = TempDir::new();
        fleet_certs(processor_bin, &dir, agents);
        let (quic, api) = (free_udp(), free_tcp());
        let config = fleet_processor(&dir, quic, api, extra);
        let processor = start_processor(processor_bin, &config, api);
        let stat = ProcStat {
            pid: processor.0.id(),
        };
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let fleet = Fleet::start(&rt, &dir.path().join("certs"), quic, agents, rows, period);
        Self {
            dir,
            api,
            stat,
            fleet,
            rt,
            _processor: processor,
        }
    }

    /// Stop the agents, then the processor.
    fn stop(self) {
        drop(self.fleet);
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// The processor config of both benches, with `extra` sections.
fn fleet_processor(
    dir: &TempDir,
    quic: SocketAddr,
    api: SocketAddr,
    extra: &str,
) -> std::path::PathBuf {
    let config = dir.path().join("processor.toml");
    std::fs::write(
        &config,
        format!("{}{extra}", crate::processor_common(quic, api)),
    )
    .expect("processor config");
    config
}

/// The stream's table's `metadata/` folder.
fn metadata_dir(dir: &TempDir) -> std::path::PathBuf {
    dir.path()
        .join(format!("data/warehouse/bronze/{STREAM}/metadata"))
}

/// The current snapshot's summary of the table, as JSON, read from the newest metadata file.
fn current_summary(dir: &TempDir) -> Option<String> {
    let newest = std::fs::read_dir(metadata_dir(dir))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".metadata.json"))
        .max()?;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(newest).ok()?).ok()?;
    let current = doc.get("current-snapshot-id")?.as_i64()?;
    let snap = doc
        .get("snapshots")?
        .as_array()?
        .iter()
        .find(|s| s.get("snapshot-id").and_then(serde_json::Value::as_i64) == Some(current))?;
    Some(snap.get("summary")?.to_string())
}

/// `sluice-bench soak`.
pub fn soak(processor_bin: &Path, commits: u64, agents: usize) {
    const SCALE: u32 = 50;
    let scaled = |d: Duration| format!("{}ms", (d / SCALE).as_millis());
    println!(
        "soak bench: {commits} commits of one table at the default cadence compressed {SCALE}x (commits every 20 ms, expiry every 1.2 s, snapshots older than 72 s expire, compaction every 12 s); {agents} agent identities, each a batch of 10 rows every 2 s"
    );
    let run = Run::start(
        processor_bin,
        agents,
        &format!(
            r#"[lander]
commit_interval = "{commit}"
[maintenance]
interval = "{interval}"
expire_interval = "{expire}"
expire_older_than = "{older}"
"#,
            commit = scaled(Duration::from_secs(1)),
            interval = scaled(Duration::from_secs(600)),
            expire = scaled(Duration::from_secs(60)),
            older = scaled(Duration::from_secs(3600)),
        ),
        10,
        Duration::from_secs(2),
    );
    let (dir, api, stat, fleet) = (&run.dir, run.api, &run.stat, &run.fleet);
    println!(
        "  {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>11} {:>6} {:>9} {:>9}",
        "commits",
        "p50 ms",
        "p99 ms",
        "RSS MiB",
        "meta MiB",
        "meta files",
        "snapshots",
        "fresh p99 s",
        "cores",
        "KiB read",
        "KiB wrote"
    );
    let commits_sample = "sluice_processor_commits_total{table=\"bronze.fleet\"}";
    let hist = "sluice_processor_commit_duration_seconds";
    let mut marks: Vec<u64> = [1_000, 5_000]
        .into_iter()
        .chain((1..=9).map(|i| i * 10_000))
        .filter(|m| *m < commits)
        .collect();
    marks.push(commits);
    let started = Instant::now();
    let mut prev_buckets: Vec<(f64, f64)> = Vec::new();
    let mut fresh: Vec<f64> = Vec::new();
    let (mut cpu0, mut t0) = (stat.cpu_seconds(), Instant::now());
    // Warehouse I/O and commits at the previous reading, for the I/O per commit.
    let (mut read0, mut wrote0, mut done0) = (0.0, 0.0, 0u64);
    let mut p99s = Vec::new();
    let mut max_rss = 0u64;
    let mut last_report = Instant::now();
    for mark in marks {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let seen = fleet.take();
            fresh.extend(seen.latencies);
            max_rss = max_rss.max(stat.rss_bytes());
            let metrics = http_get(api, "/metrics").unwrap_or_default();
            let done = crate::counter(&metrics, commits_sample) as u64;
            if last_report.elapsed() > Duration::from_secs(60) {
                eprintln!(
                    "  … {done} commits after {:.0} s ({} lane errors, {} held back)",
                    started.elapsed().as_secs_f64(),
                    seen.errors,
                    seen.held_back
                );
                last_report = Instant::now();
            }
            if done < mark {
                assert!(
                    started.elapsed() < Duration::from_secs(4 * 3600),
                    "the soak did not reach {mark} commits"
                );
                continue;
            }
            let now = buckets(&metrics, hist);
            let delta: Vec<(f64, f64)> = now
                .iter()
                .enumerate()
                .map(|(i, (le, c))| (*le, c - prev_buckets.get(i).map_or(0.0, |p| p.1)))
                .collect();
            prev_buckets = now;
            let (p50, p99) = (quantile(&delta, 0.5) * 1e3, quantile(&delta, 0.99) * 1e3);
            p99s.push(p99);
            let (files, bytes) = du(&metadata_dir(dir));
            let snapshots = current_snapshots(&metrics);
            let cpu = stat.cpu_seconds();
            let cores = (cpu - cpu0) / t0.elapsed().as_secs_f64();
            (cpu0, t0) = (cpu, Instant::now());
            let read = crate::counter(&metrics, "sluice_processor_storage_read_bytes_total");
            let wrote = crate::counter(&metrics, "sluice_processor_storage_written_bytes_total");
            let per_commit = |now: f64, then: f64| {
                (now - then) / 1024.0 / done.saturating_sub(done0).max(1) as f64
            };
            println!(
                "  {done:>8} {p50:>8.1} {p99:>8.1} {:>8.1} {:>9.2} {files:>10} {snapshots:>9} {:>11.2} {cores:>6.2} {:>9.1} {:>9.1}",
                stat.rss_bytes() as f64 / (1 << 20) as f64,
                bytes as f64 / (1 << 20) as f64,
                percentile(std::mem::take(&mut fresh), 0.99),
                per_commit(read, read0),
                per_commit(wrote, wrote0),
            );
            (read0, wrote0, done0) = (read, wrote, done);
            break;
        }
    }
    let metrics = http_get(api, "/metrics").unwrap_or_default();
    if let (Some(first), Some(last)) = (p99s.first(), p99s.last()) {
        println!("  p99 commit, last / first reading: {:.2}", last / first);
    }
    println!(
        "  peak RSS {:.1} MiB; {:.0} s in all; commit failures {:.0}; summary {} bytes",
        max_rss as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
        counter_sum(&metrics, "sluice_processor_commit_failures_total"),
        current_summary(dir).map_or(0, |s| s.len()),
    );
    println!(
        "  targets: p99 commit <= 200 ms with last/first <= 1.2; RSS <= 256 MiB and flat; metadata <= 16 MiB; freshness p99 <= 2 s"
    );
    run.stop();
}

/// The table's snapshot count as the processor last read it.
fn current_snapshots(metrics: &str) -> u64 {
    crate::counter(
        metrics,
        "sluice_processor_table_snapshots{table=\"bronze.fleet\"}",
    ) as u64
}

/// `sluice-bench fleet`.
pub fn fleet(processor_bin: &Path, seconds: u64, agents: usize) {
    const ROWS_PER_SECOND: usize = 20;
    println!(
        "fleet bench: {agents} agent identities (own certificates) at {ROWS_PER_SECOND} rows/s each, one batch a second, for {seconds} s; processor defaults (1 s commits)"
    );
    let run = Run::start(
        processor_bin,
        agents,
        "",
        ROWS_PER_SECOND,
        Duration::from_secs(1),
    );
    let (dir, api, stat, fleet) = (&run.dir, run.api, &run.stat, &run.fleet);
    // Warm-up: every agent connected and acknowledged once.
    std::thread::sleep(Duration::from_secs(10));
    let warm = fleet.take();
    let (cpu0, t0) = (stat.cpu_seconds(), Instant::now());
    let mut latencies = Vec::new();
    let (mut errors, mut committed, mut max_rss) = (warm.errors, 0, 0);
    while t0.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let seen = fleet.take();
        latencies.extend(seen.latencies);
        errors += seen.errors;
        committed += seen.committed;
        max_rss = max_rss.max(stat.rss_bytes());
    }
    let cores = (stat.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let summary = current_summary(dir).unwrap_or_default();
    let metrics = http_get(api, "/metrics").unwrap_or_default();
    println!(
        "  batches committed   {committed:>10} ({:.0} rows/s)",
        committed as f64 * ROWS_PER_SECOND as f64 / t0.elapsed().as_secs_f64()
    );
    println!(
        "  freshness           p50 {:.3} s  p99 {:.3} s  max {:.3} s (batch created -> acknowledged after its commit)",
        percentile(latencies.clone(), 0.5),
        percentile(latencies.clone(), 0.99),
        percentile(latencies, 1.0)
    );
    println!("  processor CPU       {cores:.2} cores");
    println!(
        "  processor RSS       {:.1} MiB (peak)",
        max_rss as f64 / (1 << 20) as f64
    );
    println!(
        "  snapshot summary    {} bytes ({} marks of agents in the table)",
        summary.len(),
        agents
    );
    println!(
        "  commits             {:.0}; lane errors {errors}",
        crate::counter(
            &metrics,
            "sluice_processor_commits_total{table=\"bronze.fleet\"}"
        )
    );
    run.stop();
}

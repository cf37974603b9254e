//! End-to-end throughput and latency: `sluice-agent` → QUIC (loopback) → `sluice-processor`
//! → committed bronze Iceberg table, both as real release processes.
//!
//! Run: `cargo build --release --bins && target/release/sluice-bench [ROWS] [RATE]`
//! (ROWS defaults to 5,000,000). The binaries are taken from the directory of this one.
//! Without RATE the simulator runs flat out: the figure is throughput, and batch → commit
//! latency then includes the time batches queue in the agent's write-ahead log. With RATE
//! (rows/s, below what the pipeline takes) the source is paced and the latency is that of
//! a pipeline keeping up.
//!
//! `sluice-bench compaction [ROWS]` lands ROWS (default 3,000,000) in many small commits,
//! stops the processor, runs `sluice-processor maintain compact` and prints its throughput
//! (MB of data files read and rewritten per second).
//!
//! `sluice-bench models [SECONDS]` streams 20,000 rows/s in real time for SECONDS (default
//! 60) into a processor running a silver (incremental) and a gold (recompute) model at the
//! default schedule, polls gold every 100 ms, and prints how long rows took from reaching
//! the processor (`_ingested_at`) to being visible in gold.
//!
//! `sluice-bench kafka [ROWS]` runs the same pipeline through Kafka: agent → tansu (the
//! Kafka-compatible broker `scripts/test.sh` installs; `SLUICE_KAFKA_BROKER` or
//! `~/.cache/sluice/tools/bin/tansu`) → processor (consumer group) → bronze. tansu stores
//! topics in SQLite (`SLUICE_KAFKA_STORAGE` names another engine, e.g. `memory://tansu/`,
//! which needs tansu built with `dynostore`); the agent sends uncompressed messages, the
//! sink's default (`SLUICE_BENCH_KAFKA_COMPRESSION=lz4|zstd|...` to compare).
//!
//! `sluice-bench kafka-json [ROWS] [PARTITIONS]` times the processor landing a plain JSON
//! topic (see `kafka_json.rs`).
//!
//! `sluice-bench tables [ROWS]` compares landings unpartitioned and partitioned by day, of
//! 10 columns and of 20 with a map and a list, and times a schema change (see `tables.rs`).
//!
//! `sluice-bench postgres-cdc [ROWS] [TXN_ROWS]` streams ROWS (default 1,000,000) rows
//! inserted into a PostgreSQL table through the postgres-cdc connector into bronze, and
//! prints the rate and the PostgreSQL commit -> bronze latency (see `postgres_cdc.rs`).
//!
//! `sluice-bench mqtt [MESSAGES] [live|backlog]` publishes MESSAGES (default 1,000,000) to
//! Debian's mosquitto while the mqtt connector takes them into bronze (or, with `backlog`,
//! before the agent starts), acknowledging each once it is committed, and prints the rate
//! beside mosquitto_sub's (see `mqtt.rs`).
//!
//! `sluice-bench fuzz [SECONDS] [SEED]` fuzzes the decoders a peer's bytes reach (see
//! `fuzz.rs`); it needs no binary.
//!
//! `sluice-bench soak [COMMITS] [AGENTS]` runs a day of 1 s commits compressed in time with
//! marks from AGENTS agent identities, and `sluice-bench fleet [SECONDS] [AGENTS]` a fleet
//! of AGENTS identities in real time (see `fleet.rs`).
//!
//! Prints rows/s and MB/s (Arrow IPC bytes) from agent start to the last commit, and the
//! p50/p99 time from batch creation on the agent to its Iceberg commit (read off the
//! processor's latency histogram, whose buckets are 25% apart).

mod fleet;
mod fuzz;
mod kafka_json;
mod mqtt;
mod postgres_cdc;
mod tables;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("sluice-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create scratch dir");
        Self(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free tcp port")
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// `(upper bound, cumulative count)` of a histogram's buckets.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

/// Quantile `q` by linear interpolation inside the bucket that holds it.
fn quantile(b: &[(f64, f64)], q: f64) -> f64 {
    let total = b.last().map(|x| x.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let frac = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return prev.0 + frac * (le - prev.0);
        }
        prev = (le, c);
    }
    prev.0
}

fn counter(metrics: &str, sample: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A number in a flat JSON report: the value after `"key":`.
fn json_number(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} not in {json}"));
    json[at + key.len() + 3..]
        .trim_start()
        .split([',', '\n', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {json}"))
}

/// A CA, a server certificate and the `bench` agent's, under `dir/certs`.
fn init_certs(processor_bin: &Path, dir: &TempDir) {
    let st = Command::new(processor_bin)
        .args(["certs", "init", "--agent", "bench", "--dir"])
        .arg(dir.path().join("certs"))
        .status()
        .expect("certs init");
    assert!(st.success());
}

/// `sluice-processor serve` with `config`, once its API at `api` answers.
fn start_processor(processor_bin: &Path, config: &Path, api: SocketAddr) -> Kill {
    let processor = Kill(
        Command::new(processor_bin)
            .args(["serve", "--config"])
            .arg(config)
            // SLUICE_BENCH_LOG sets the processor's log filter (its log goes to stderr).
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("start processor"),
    );
    let up = Instant::now();
    while http_get(api, "/health").is_none() {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "processor did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    processor
}

/// Poll the processor's metrics until `sample` (a committed-rows counter) reaches `rows`;
/// returns the last scrape. Gives up 30 minutes after `started`.
fn wait_committed(api: SocketAddr, sample: &str, rows: u64, started: Instant) -> String {
    commit_timeline(api, sample, rows, started).0
}

/// [`wait_committed`], and the counter's every change: (seconds since `started`, rows).
fn commit_timeline(
    api: SocketAddr,
    sample: &str,
    rows: u64,
    started: Instant,
) -> (String, Vec<(f64, f64)>) {
    let mut timeline: Vec<(f64, f64)> = Vec::new();
    loop {
        let metrics = http_get(api, "/metrics").unwrap_or_default();
        let now = counter(&metrics, sample);
        if timeline.last().is_none_or(|&(_, was)| now > was) {
            timeline.push((started.elapsed().as_secs_f64(), now));
        }
        if now as u64 >= rows {
            return (metrics, timeline);
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "the processor did not land every row"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows/s between the first and the last commit of a timeline: the rate the pipeline
/// sustains, without the start (connections, the first batch's wait for a commit) and the
/// tail that a run's total time includes. NaN with fewer than three commits.
fn sustained(timeline: &[(f64, f64)]) -> f64 {
    let commits: Vec<_> = timeline.iter().filter(|&&(_, rows)| rows > 0.0).collect();
    match (commits.first(), commits.last()) {
        (Some(&&(t0, r0)), Some(&&(t1, r1))) if commits.len() >= 3 => (r1 - r0) / (t1 - t0),
        _ => f64::NAN,
    }
}

/// Percent-encode a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of an HTTP response (after the blank line).
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Model refresh latency: rows streamed in real time, silver and gold models on the
/// default schedule, gold polled for the newest ingestion time it reflects.
/// The processor config every bench shares: its data dir, QUIC listener and API.
fn processor_common(quic: SocketAddr, api: SocketAddr) -> String {
    format!(
        r#"[processor]
data_dir = "data"
[quic]
listen = "{quic}"
cert = "certs/server.pem"
key = "certs/server.key"
ca = "certs/ca.pem"
[api]
listen = "{api}"
# The bench reads /metrics on loopback without credentials.
anonymous = ["metrics"]
[access]
# The bench's own agents, on loopback.
allow_all = true
"#
    )
}

/// The 10 columns of the pipeline bench's telemetry.
const TELEMETRY_FIELDS: &str = r#"ts = { type = "timestamp" }
seq = { type = "sequence" }
device = { type = "entity", prefix = "dev-" }
temp = { type = "normal", mean = 21.0, stddev = 3.0 }
humidity = { type = "uniform", min = 0.0, max = 100.0 }
pressure = { type = "normal", mean = 1013.0, stddev = 8.0 }
battery = { type = "uniform", min = 0.0, max = 1.0 }
rssi = { type = "uniform", min = -120, max = -30, integer = true }
errors = { type = "poisson", lambda = 0.2 }
status = { type = "choice", values = ["ok", "warn", "fail"], weights = [95, 4, 1] }
"#;

/// Agent `bench` simulating `rows` rows of `fields` (`[sources.telemetry.fields]`) into
/// stream `telemetry`, batches of `batch_rows`, paced at `rate` rows/s if given.
fn telemetry_agent(
    sink: &str,
    rows: u64,
    batch_rows: u64,
    rate: Option<u64>,
    fields: &str,
) -> String {
    format!(
        r#"
[agent]
id = "bench"
[batch]
max_rows = {batch_rows}
max_bytes = "16MiB"
max_age = "200ms"
{sink}window = 32
[sources.telemetry]
type = "simulator"
total = {rows}
{rate}seed = 1
entities = 1000
chunk_rows = 16384
[sources.telemetry.fields]
{fields}"#,
        rate = rate.map(|r| format!("rate = {r}\n")).unwrap_or_default(),
    )
}

/// Run `sluice-agent` on `dir/agent.toml` until it exits, which must be a success.
/// `sluice-agent run` on the scratch directory's `agent.toml`, in the background (killed on drop).
fn spawn_agent(agent_bin: &Path, dir: &TempDir) -> Kill {
    Kill(
        Command::new(agent_bin)
            .args(["run", "--config"])
            .arg(dir.path().join("agent.toml"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start agent"),
    )
}

fn run_agent(agent_bin: &Path, dir: &TempDir) {
    let status = Command::new(agent_bin)
        .args(["run", "--config"])
        .arg(dir.path().join("agent.toml"))
        .env("RUST_LOG", "warn")
        .status()
        .expect("run agent");
    assert!(status.success(), "agent failed");
}

/// Write the processor config of a bench that reads bronze back through the query API
/// (without a token), committing every second.
fn write_reading_processor(dir: &TempDir, quic: SocketAddr, api: SocketAddr) {
    std::fs::write(
        dir.path().join("processor.toml"),
        format!(
            "{}[lander]\ncommit_interval = \"1s\"\n",
            processor_common(quic, api).replace(
                "anonymous = [\"metrics\"]",
                "anonymous = [\"metrics\", \"read\"]"
            )
        ),
    )
    .expect("processor config");
}

/// Write the agent config of a bench whose one source, `name`, is the networked connector
/// `plugin`, granted `allow_tcp`, polled every `poll_interval`, with `config` (TOML lines)
/// as its own config.
fn write_networked_agent(
    dir: &TempDir,
    quic: SocketAddr,
    name: &str,
    plugin: &Path,
    allow_tcp: &str,
    poll_interval: &str,
    config: &str,
) {
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            r#"[agent]
id = "bench"
[batch]
max_rows = 65536
max_age = "200ms"
{sink}window = 32
[sources.{name}]
type = "wasm"
plugin = "{plugin}"
allow_tcp = ["{allow_tcp}"]
max_rows = 16384
poll_interval = "{poll_interval}"
call_timeout = "10s"
[sources.{name}.config]
{config}"#,
            sink = agent_sink(quic),
            plugin = plugin.display(),
        ),
    )
    .expect("agent config");
}

/// Groups of bronze rows in commit order, from a query whose CSV answer has two columns: a
/// time in microseconds since the epoch and a row count. Asserts they add up to `rows`.
fn row_groups(api: SocketAddr, sql: &str, rows: u64) -> Vec<(f64, f64)> {
    let resp =
        http_get(api, &format!("/api/query?format=csv&sql={}", encode(sql))).unwrap_or_default();
    let groups: Vec<(f64, f64)> = body(&resp)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (t, n) = l.split_once(',')?;
            Some((t.trim().parse::<f64>().ok()? / 1e6, n.trim().parse().ok()?))
        })
        .collect();
    assert_eq!(
        groups.iter().map(|g| g.1).sum::<f64>() as u64,
        rows,
        "bronze holds every row once: {}",
        &resp[..resp.len().min(500)]
    );
    groups
}

/// Each row's time from its group's start to the first scrape of the committed-rows
/// `timeline` (wall-clock seconds, rows) that covers it, sorted.
fn visible_after(groups: &[(f64, f64)], timeline: &[(f64, f64)]) -> Vec<f64> {
    let mut per_row = Vec::new();
    let (mut cum, mut at) = (0.0, 0);
    for (start, n) in groups {
        cum += n;
        while timeline[at].1 < cum {
            at += 1;
        }
        per_row.extend(std::iter::repeat_n(
            (timeline[at].0 - start).max(0.0),
            *n as usize,
        ));
    }
    per_row.sort_by(f64::total_cmp);
    per_row
}

fn running_as_root() -> bool {
    // The owner of /proc/self is the process's effective user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A connector component: `$SLUICE_PLUGIN_DIR/NAME.wasm`, else the plugins workspace's
/// release build under the current directory (cargo package `package`).
fn connector(name: &str, package: &str) -> PathBuf {
    let p = match std::env::var("SLUICE_PLUGIN_DIR") {
        Ok(d) => PathBuf::from(d).join(format!("{name}.wasm")),
        Err(_) => PathBuf::from(format!("plugins/target/wasm32-wasip2/release/{name}.wasm")),
    };
    assert!(
        p.exists(),
        "{} is missing: build it with `(cd plugins && cargo build --release --target wasm32-wasip2 -p {package})`",
        p.display()
    );
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// The agent's `[sink]` section (QUIC to `quic`, as agent `bench`).
fn agent_sink(quic: SocketAddr) -> String {
    format!(
        r#"[sink]
type = "quic"
endpoint = "{quic}"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/agent-bench.pem"
key = "certs/agent-bench.key"
"#
    )
}

fn models_bench(processor_bin: &Path, agent_bin: &Path, seconds: u64) {
    const RATE: u64 = 20_000;
    let dir = TempDir::new();
    init_certs(processor_bin, &dir);
    let (quic, api) = (free_udp(), free_tcp());
    let (common, sink) = (processor_common(quic, api), agent_sink(quic));
    std::fs::write(
        dir.path().join("processor.toml"),
        format!(
            r#"
{common}
[models."silver.telemetry"]
sql = "SELECT ts, device, temp, status, _ingested_at AS ingested_at FROM bronze.telemetry"
unique = ["device", "ts"]
expect = {{ temp_sane = "temp BETWEEN -50 AND 100" }}

[models."gold.device_stats"]
mode = "recompute"
sql = """SELECT device, count(*) AS readings, avg(temp) AS avg_temp,
         sum(CASE WHEN status = 'fail' THEN 1 ELSE 0 END) AS failures,
         max(ingested_at) AS newest
         FROM silver.telemetry GROUP BY device"""
"#
        ),
    )
    .expect("processor config");
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            r#"
[agent]
id = "bench"
{sink}[sources.telemetry]
type = "simulator"
rate = {RATE}
total = {total}
entities = 1000
[sources.telemetry.fields]
ts = {{ type = "timestamp" }}
device = {{ type = "entity", prefix = "dev-" }}
temp = {{ type = "normal", mean = 21.0, stddev = 3.0 }}
status = {{ type = "choice", values = ["ok", "warn", "fail"], weights = [95, 4, 1] }}
"#,
            total = RATE * seconds
        ),
    )
    .expect("agent config");
    let _processor = start_processor(processor_bin, &dir.path().join("processor.toml"), api);
    println!(
        "model refresh bench: {RATE} rows/s for {seconds} s, bronze -> silver (incremental) -> gold (recompute), default schedule"
    );
    // The first refresh is measured from the agent's start: an upper bound for its rows.
    let mut last: Option<i64> = Some(now_us());
    let mut agent = Kill(
        Command::new(agent_bin)
            .args(["run", "--config"])
            .arg(dir.path().join("agent.toml"))
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("run agent"),
    );
    let sql = encode(
        "SELECT CAST(max(newest) AS BIGINT) AS newest, CAST(sum(readings) AS BIGINT) AS n FROM gold.device_stats",
    );
    // Per gold refresh: the age of the oldest and of the newest row it made visible.
    let (mut worst, mut best) = (Vec::new(), Vec::new());
    let mut rows_in_gold = 0i64;
    let started = Instant::now();
    loop {
        let done = match agent.0.try_wait().ok().flatten() {
            Some(status) => {
                assert!(status.success(), "agent failed");
                true
            }
            None => false,
        };
        // Taken before the query, so its own duration does not count as latency.
        let t = now_us();
        if let Some(resp) = http_get(api, &format!("/api/query?format=csv&sql={sql}")) {
            let line = body(&resp).lines().nth(1).unwrap_or("").to_string();
            let mut cols = line.split(',');
            let newest = cols.next().and_then(|v| v.trim().parse::<i64>().ok());
            let n = cols.next().and_then(|v| v.trim().parse::<i64>().ok());
            if let (Some(newest), Some(n)) = (newest, n) {
                if let Some(prev) = last
                    && newest > prev
                {
                    worst.push((t - prev) as f64 / 1e6);
                    best.push((t - newest) as f64 / 1e6);
                }
                last = Some(newest);
                rows_in_gold = n;
            }
        }
        if done && rows_in_gold as u64 >= RATE * seconds {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(seconds * 3 + 120),
            "gold did not catch up: {rows_in_gold} rows"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Warm-up refreshes are kept (they are slower).
    worst.sort_by(f64::total_cmp);
    best.sort_by(f64::total_cmp);
    let metrics = http_get(api, "/metrics").unwrap_or_default();
    let runs = |m: &str| {
        counter(
            &metrics,
            &format!("sluice_processor_model_runs_total{{model=\"{m}\",outcome=\"ran\"}}"),
        )
    };
    println!("  rows in gold        {rows_in_gold:>12}");
    println!("  gold refreshes      {:>12}", worst.len());
    println!(
        "  silver / gold runs  {:>7.0} / {:.0}",
        runs("silver.telemetry"),
        runs("gold.device_stats")
    );
    println!(
        "  ingest -> gold, newest row of a refresh  p50 {:>6.2} s  p99 {:>6.2} s",
        percentile(&best, 0.5),
        percentile(&best, 0.99)
    );
    println!(
        "  ingest -> gold, oldest row of a refresh  p50 {:>6.2} s  p99 {:>6.2} s  max {:>6.2} s",
        percentile(&worst, 0.5),
        percentile(&worst, 0.99),
        percentile(&worst, 1.0)
    );
    println!("  target              bronze -> gold <= 5 s");
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "fuzz") {
        let usage = "usage: sluice-bench fuzz [SECONDS] [SEED]";
        let seconds = args.get(1).map(|a| a.parse().expect(usage)).unwrap_or(600);
        let seed = args
            .get(2)
            .map(|a| a.parse().expect(usage))
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        fuzz::main(seconds, seed);
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin_dir = exe.parent().expect("bin dir");
    let processor_bin: PathBuf = bin_dir.join("sluice-processor");
    let agent_bin: PathBuf = bin_dir.join("sluice-agent");
    // soak, fleet and kafka-json drive the processor with in-process clients.
    let in_process = matches!(
        args.first().map(String::as_str),
        Some("soak" | "fleet" | "kafka-json")
    );
    for b in std::iter::once(&processor_bin).chain((!in_process).then_some(&agent_bin)) {
        assert!(
            b.exists(),
            "{} is missing: run `cargo build --release --bins` first",
            b.display()
        );
    }
    if args.first().is_some_and(|a| a == "models") {
        let seconds = args
            .get(1)
            .map(|a| a.parse().expect("usage: sluice-bench models [SECONDS]"))
            .unwrap_or(60);
        models_bench(&processor_bin, &agent_bin, seconds);
        return;
    }
    if args.first().is_some_and(|a| a == "tables") {
        let rows = args
            .get(1)
            .map(|a| a.parse().expect("usage: sluice-bench tables [ROWS]"))
            .unwrap_or(3_000_000);
        tables::run(&processor_bin, &agent_bin, rows);
        return;
    }
    if args.first().is_some_and(|a| a == "postgres-cdc") {
        let usage = "usage: sluice-bench postgres-cdc [ROWS] [TXN_ROWS]";
        let rows = args
            .get(1)
            .map(|a| a.parse().expect(usage))
            .unwrap_or(1_000_000);
        let txn_rows = args
            .get(2)
            .map(|a| a.parse().expect(usage))
            .unwrap_or(1_000);
        postgres_cdc::run(&processor_bin, &agent_bin, rows, txn_rows);
        return;
    }
    if args.first().is_some_and(|a| a == "mqtt") {
        let usage = "usage: sluice-bench mqtt [MESSAGES] [live|backlog]";
        let messages = args
            .get(1)
            .map(|a| a.parse().expect(usage))
            .unwrap_or(1_000_000);
        let backlog = match args.get(2).map(String::as_str) {
            None | Some("live") => false,
            Some("backlog") => true,
            Some(_) => panic!("{usage}"),
        };
        mqtt::run(&processor_bin, &agent_bin, messages, backlog);
        return;
    }
    if args.first().is_some_and(|a| a == "soak") {
        let usage = "usage: sluice-bench soak [COMMITS] [AGENTS]";
        let commits = args
            .get(1)
            .map(|a| a.parse().expect(usage))
            .unwrap_or(86_400);
        let agents = args
            .get(2)
            .map(|a| a.parse().expect(usage))
            .unwrap_or(1_000);
        fleet::soak(&processor_bin, commits, agents);
        return;
    }
    if args.first().is_some_and(|a| a == "fleet") {
        let usage = "usage: sluice-bench fleet [SECONDS] [AGENTS]";
        let seconds = args.get(1).map(|a| a.parse().expect(usage)).unwrap_or(60);
        let agents = args
            .get(2)
            .map(|a| a.parse().expect(usage))
            .unwrap_or(1_000);
        fleet::fleet(&processor_bin, seconds, agents);
        return;
    }
    if args.first().is_some_and(|a| a == "kafka-json") {
        let rows = args
            .get(1)
            .map(|a| {
                a.parse()
                    .expect("usage: sluice-bench kafka-json [ROWS] [PARTITIONS]")
            })
            .unwrap_or(1_000_000);
        let partitions = args
            .get(2)
            .map(|a| {
                a.parse()
                    .expect("usage: sluice-bench kafka-json [ROWS] [PARTITIONS]")
            })
            .unwrap_or(1);
        kafka_json::run(&processor_bin, rows, partitions);
        return;
    }
    let compaction = args.first().is_some_and(|a| a == "compaction");
    let kafka = args.first().is_some_and(|a| a == "kafka");
    if compaction || kafka {
        args.remove(0);
    }
    let usage = "usage: sluice-bench [compaction|kafka] [ROWS] [RATE]";
    let rows: u64 = match args.first() {
        Some(a) => a.parse().expect(usage),
        None if compaction => 3_000_000,
        None => 5_000_000,
    };
    let rate: Option<u64> = args.get(1).map(|a| a.parse().expect(usage));
    let dir = TempDir::new();
    init_certs(&processor_bin, &dir);

    let quic = free_udp();
    let api = free_tcp();
    let (mut common, mut sink) = (processor_common(quic, api), agent_sink(quic));
    let _broker = if kafka {
        let (broker, brokers) = start_broker(&dir, "sluice.telemetry", 1);
        common.push_str(&format!(
            "[kafka]\nbrokers = \"{brokers}\"\ntopics = [\"sluice.telemetry\"]\n"
        ));
        sink = format!(
            "[sink]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ncompression = \"{}\"\n\
             cert = \"certs/agent-bench.pem\"\nkey = \"certs/agent-bench.key\"\n",
            std::env::var("SLUICE_BENCH_KAFKA_COMPRESSION").unwrap_or_else(|_| "none".into())
        );
        Some(broker)
    } else {
        None
    };
    std::fs::write(
        dir.path().join("processor.toml"),
        format!(
            r#"
{common}[lander]
commit_interval = "{commit_interval}"
"#,
            commit_interval = if compaction { "100ms" } else { "1s" },
        ),
    )
    .expect("processor config");
    std::fs::write(
        dir.path().join("agent.toml"),
        telemetry_agent(
            &sink,
            rows,
            if compaction { 20_000 } else { 65_536 },
            rate,
            TELEMETRY_FIELDS,
        ),
    )
    .expect("agent config");
    if compaction {
        // A second table with the same shape: one is compacted by copying row groups, the
        // other by decoding and re-encoding, so both paths are measured on the same data.
        let text = std::fs::read_to_string(dir.path().join("agent.toml")).expect("agent config");
        let second = text[text.find("[sources.telemetry]").expect("source")..]
            .replace("[sources.telemetry]", "[sources.telemetry_b]")
            .replace("[sources.telemetry.fields]", "[sources.telemetry_b.fields]")
            .replace("seed = 1", "seed = 2");
        std::fs::write(dir.path().join("agent.toml"), format!("{text}\n{second}"))
            .expect("agent config");
    }

    let processor = start_processor(&processor_bin, &dir.path().join("processor.toml"), api);

    if compaction {
        run_agent(&agent_bin, &dir);
        drop(processor);
        println!(
            "compaction bench: 2 tables x {rows} rows of 10-column telemetry landed in small commits"
        );
        for (table, mode, threshold, copies) in [
            ("bronze.telemetry", "copy row groups", "4MiB", true),
            ("bronze.telemetry_b", "decode + re-encode", "1TiB", false),
        ] {
            let out = Command::new(&processor_bin)
                .args(["maintain", "--config"])
                .arg(dir.path().join("processor.toml"))
                .args([
                    "compact",
                    "--json",
                    "--table",
                    table,
                    "--copy-row-groups-above",
                    threshold,
                ])
                .output()
                .expect("run maintain compact");
            assert!(
                out.status.success(),
                "compaction failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report = String::from_utf8_lossy(&out.stdout).to_string();
            // The figure is only the named path's if every bin took it.
            let (copied, reencoded) = (
                json_number(&report, "bins_copied"),
                json_number(&report, "bins_reencoded"),
            );
            assert!(
                if copies {
                    reencoded == 0.0
                } else {
                    copied == 0.0
                } && copied + reencoded > 0.0,
                "{mode}: {copied} bins copied, {reencoded} re-encoded"
            );
            let read = json_number(&report, "bytes_read");
            let ms = json_number(&report, "elapsed_ms");
            println!(
                "  {mode:<20} {:>4.0} -> {:.0} files, {:.0} rows, {:.1} MB read, {:.1} MB written, {:.2} s: {:>8.1} MB/s",
                json_number(&report, "files_before"),
                json_number(&report, "files_after"),
                json_number(&report, "rows_rewritten"),
                read / 1e6,
                json_number(&report, "bytes_written") / 1e6,
                ms / 1e3,
                read / 1e6 / (ms / 1e3)
            );
        }
        println!("  target              >= 100 MB/s per core");
        return;
    }
    let _processor = processor;
    println!(
        "pipeline bench: {rows} rows of 10-column telemetry, agent -> {} -> processor -> bronze",
        if kafka { "Kafka (tansu)" } else { "QUIC" }
    );
    let committed_rows = "sluice_processor_committed_rows_total{table=\"bronze.telemetry\"}";
    let started = Instant::now();
    run_agent(&agent_bin, &dir);
    // Over Kafka the agent is done once the broker has every batch; the processor may
    // still be landing them.
    let metrics = wait_committed(api, committed_rows, rows, started);
    let elapsed = started.elapsed().as_secs_f64();
    let committed = counter(&metrics, committed_rows);
    let bytes = counter(
        &metrics,
        "sluice_processor_committed_bytes_total{table=\"bronze.telemetry\"}",
    );
    assert_eq!(committed as u64, rows, "every row must be committed");
    let latency = buckets(&metrics, "sluice_processor_batch_latency_seconds");
    let commits = counter(
        &metrics,
        "sluice_processor_commits_total{table=\"bronze.telemetry\"}",
    );
    println!("  rows committed      {committed:>12.0}");
    println!("  commits             {commits:>12.0}");
    println!("  elapsed             {elapsed:>12.2} s");
    println!("  throughput          {:>12.0} rows/s", committed / elapsed);
    println!(
        "  throughput          {:>12.1} MB/s (Arrow IPC)",
        bytes / elapsed / 1e6
    );
    println!("  batch -> commit p50 {:>12.3} s", quantile(&latency, 0.50));
    println!("  batch -> commit p99 {:>12.3} s", quantile(&latency, 0.99));
    if kafka {
        println!("  target              >= 300000 rows/s");
    } else {
        println!("  target              >= 500000 rows/s, p99 <= 2 s");
    }
}

/// tansu on a free port with its topics in SQLite under `dir` (or the storage engine named
/// by `SLUICE_KAFKA_STORAGE`), and the topic the bench writes.
fn start_broker(dir: &TempDir, topic: &str, partitions: u32) -> (Kill, String) {
    let bin = std::env::var_os("SLUICE_KAFKA_BROKER")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice/tools/bin/tansu"))
        })
        .filter(|p| p.exists())
        .expect("tansu not found: run scripts/test.sh once, or set SLUICE_KAFKA_BROKER");
    let addr = free_tcp();
    let url = format!("tcp://{addr}");
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).expect("broker dir");
    let storage =
        std::env::var("SLUICE_KAFKA_STORAGE").unwrap_or_else(|_| "sqlite://broker.db".into());
    let broker = Kill(
        Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage])
            .current_dir(&broker_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu"),
    );
    let up = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "tansu did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new(&bin)
        .args([
            "topic",
            "create",
            "--broker",
            &url,
            "--partitions",
            &partitions.to_string(),
            topic,
        ])
        .stdout(Stdio::null())
        .status()
        .expect("create topic");
    assert!(st.success(), "cannot create the topic");
    (broker, addr.to_string())
}

//! `sluice-bench postgres-cdc [ROWS] [TXN_ROWS]`: the postgres-cdc connector under load. A
//! throwaway PostgreSQL (Debian's binaries, `SLUICE_PG_BIN` or
//! `/usr/lib/postgresql/*/bin`; `wal_level = logical`) receives ROWS (default 1,000,000)
//! inserted rows in transactions of TXN_ROWS (default 1,000) while the agent streams them
//! through its slot to the processor and bronze. The connector is
//! `$SLUICE_PLUGIN_DIR/postgres_cdc.wasm`, else
//! `plugins/target/wasm32-wasip2/release/postgres_cdc.wasm` under the current directory.
//!
//! Prints the insert rate, the rate from the first insert to the last row committed in
//! bronze, the sustained landing rate (first to last bronze commit), and the time from each
//! PostgreSQL commit to the bronze commit that made it visible: every transaction's
//! `commit_ts`, read back from bronze, against the first scrape of the processor's
//! committed-rows counter that covers it (bronze holds the rows in commit order). Then
//! PostgreSQL's own `pg_recvlogical` streams the same changes from a second slot, to show
//! the server's decoding rate beside the connector's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Kill, TempDir, commit_timeline, connector, free_tcp, free_udp, init_certs, now_us, percentile,
    row_groups, running_as_root, spawn_agent, start_processor, sustained, visible_after,
    write_networked_agent, write_reading_processor,
};

/// A PostgreSQL server in `dir/pg`, as Debian's `postgres` user when run as root.
struct Postgres {
    bin: PathBuf,
    port: u16,
    _server: Kill,
}

/// The `postgres` account's uid and gid, from /etc/passwd.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn pg_bin() -> PathBuf {
    if let Ok(d) = std::env::var("SLUICE_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "no PostgreSQL: install Debian's postgresql (scripts/test.sh does) or set SLUICE_PG_BIN",
    )
}

impl Postgres {
    fn start(dir: &TempDir) -> Postgres {
        use std::os::unix::process::CommandExt;
        let bin = pg_bin();
        let data = dir.path().join("pg");
        std::fs::create_dir_all(&data).expect("pg dir");
        // initdb refuses root: then the server runs as `postgres`.
        let ids = running_as_root().then(postgres_ids).flatten();
        let as_user = |c: &mut Command| {
            if let Some((uid, gid)) = ids {
                c.uid(uid).gid(gid);
            }
        };
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown pg dir");
        }
        let mut init = Command::new(bin.join("initdb"));
        init.args(["-A", "trust", "-U", "sluice", "-D"])
            .arg(&data)
            .stdout(Stdio::null());
        as_user(&mut init);
        assert!(init.status().expect("initdb").success(), "initdb failed");
        let port = free_tcp().port();
        let mut server = Command::new(bin.join("postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&data)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_wal_size=4GB",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut server);
        let server = Kill(server.spawn().expect("start postgres"));
        let pg = Postgres {
            bin,
            port,
            _server: server,
        };
        let up = Instant::now();
        while !Command::new(pg.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                up.elapsed() < Duration::from_secs(60),
                "postgres did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let st = Command::new(pg.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "sluice",
                "lake",
            ])
            .status()
            .expect("createdb");
        assert!(st.success(), "createdb failed");
        pg
    }

    fn psql(&self) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &self.port.to_string(), "-U", "sluice", "-d", "lake"]);
        c
    }

    /// Run `sql`; its output (unaligned, tuples only).
    fn sql(&self, sql: &str) -> String {
        let out = self.psql().args(["-c", sql]).output().expect("psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn write_configs(dir: &TempDir, quic: SocketAddr, api: SocketAddr, pg: &Postgres) {
    write_reading_processor(dir, quic, api);
    let config = format!(
        "host = \"127.0.0.1\"\nport = {port}\nuser = \"sluice\"\ndatabase = \"lake\"\ntable = \"orders\"\nsnapshot = false\n",
        port = pg.port
    );
    write_networked_agent(
        dir,
        quic,
        "orders",
        &connector("postgres_cdc", "postgres-cdc"),
        &format!("127.0.0.1:{}", pg.port),
        "50ms",
        &config,
    );
}

/// The bench.
pub fn run(processor_bin: &Path, agent_bin: &Path, rows: u64, txn_rows: u64) {
    let dir = TempDir::new();
    init_certs(processor_bin, &dir);
    let pg = Postgres::start(&dir);
    pg.sql(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), \
         qty int, status text, updated timestamptz)",
    );
    let (quic, api) = (free_udp(), free_tcp());
    write_configs(&dir, quic, api, &pg);
    let _processor = start_processor(processor_bin, &dir.path().join("processor.toml"), api);
    let _agent = spawn_agent(agent_bin, &dir);
    // Streaming once the slot is taken.
    let up = Instant::now();
    while pg.sql("SELECT count(*) FROM pg_replication_slots WHERE active") != "1" {
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "the connector did not start streaming"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A second slot for the peer, PostgreSQL's own pg_recvlogical, which reads the same
    // changes afterwards (from WAL on disk, to a file): not the same conditions as the live
    // run, but the rate of the server's own client on this machine.
    pg.sql("SELECT pg_create_logical_replication_slot('bench_peer', 'pgoutput')");
    println!(
        "postgres-cdc bench: {rows} rows inserted in transactions of {txn_rows}, PostgreSQL -> slot -> agent (wasm) -> QUIC -> processor -> bronze"
    );
    let script = dir.path().join("inserts.sql");
    let statements: String = (0..rows.div_ceil(txn_rows))
        .map(|t| {
            let (a, b) = (t * txn_rows + 1, ((t + 1) * txn_rows).min(rows));
            format!(
                "INSERT INTO orders SELECT g, 'customer-' || (g % 997), (g % 100000) / 100.0, g % 50, \
                 CASE WHEN g % 3 = 0 THEN 'paid' ELSE 'new' END, now() FROM generate_series({a}, {b}) g;\n"
            )
        })
        .collect();
    std::fs::write(&script, statements).expect("insert script");
    let started = Instant::now();
    let committed = "sluice_processor_committed_rows_total{table=\"bronze.orders\"}";
    // Scrapes of the committed-rows counter, with the wall clock (µs) of each.
    let (timeline, inserted_in) = std::thread::scope(|s| {
        let inserts = s.spawn(|| {
            let st = pg.psql().arg("-f").arg(&script).status().expect("psql");
            assert!(st.success(), "inserts failed");
            started.elapsed().as_secs_f64()
        });
        let clock0 = now_us() as f64 / 1e6 - started.elapsed().as_secs_f64();
        let (_, timeline) = commit_timeline(api, committed, rows, started);
        let inserted_in = inserts.join().expect("insert thread");
        (
            timeline
                .into_iter()
                .map(|(t, n)| (clock0 + t, n))
                .collect::<Vec<_>>(),
            inserted_in,
        )
    });
    // Each transaction's commit time and rows, in commit order.
    let txns = row_groups(
        api,
        "SELECT CAST(min(commit_ts) AS BIGINT) AS c, count(*) AS n FROM bronze.orders GROUP BY lsn ORDER BY lsn",
        rows,
    );
    let per_row = visible_after(&txns, &timeline);
    let first_commit = txns.first().map_or(f64::NAN, |t| t.0);
    let last_visible = timeline.last().map_or(f64::NAN, |t| t.0);
    println!(
        "  inserts             {:>10.0} rows/s ({rows} rows in {inserted_in:.2} s)",
        rows as f64 / inserted_in
    );
    println!(
        "  first commit -> all in bronze {:>10.0} rows/s ({:.2} s)",
        rows as f64 / (last_visible - first_commit),
        last_visible - first_commit
    );
    println!(
        "  sustained landing   {:>10.0} rows/s (first to last bronze commit; target >= 100000)",
        sustained(&timeline)
    );
    println!(
        "  commit -> bronze    p50 {:.2} s  p99 {:.2} s  max {:.2} s (target p99 <= 3 s)",
        percentile(&per_row, 0.5),
        percentile(&per_row, 0.99),
        percentile(&per_row, 1.0)
    );
    let peer = pg_recvlogical(&pg, &dir);
    println!(
        "  pg_recvlogical      {:>10.0} rows/s (the same changes afterwards, from its own slot to a file; sustained landing is {:.2}x of it)",
        rows as f64 / peer,
        sustained(&timeline) / (rows as f64 / peer)
    );
}

/// Seconds pg_recvlogical takes to stream slot `bench_peer` (pgoutput, the connector's
/// publication) up to the server's current position.
fn pg_recvlogical(pg: &Postgres, dir: &TempDir) -> f64 {
    let end = pg.sql("SELECT pg_current_wal_lsn()");
    let started = Instant::now();
    let st = Command::new(pg.bin.join("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "sluice",
            "-d",
            "lake",
        ])
        .args([
            "--slot",
            "bench_peer",
            "--start",
            "--no-loop",
            "-E",
            &end,
            "-f",
        ])
        .arg(dir.path().join("peer.out"))
        .args([
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=sluice_orders",
        ])
        .status()
        .expect("pg_recvlogical");
    assert!(st.success(), "pg_recvlogical failed");
    started.elapsed().as_secs_f64()
}

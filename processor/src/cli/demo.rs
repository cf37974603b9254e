//! `sluice-processor demo`: the whole product on one machine, in one command.
//!
//! Creates certificates and a token, starts a processor in this process (the example
//! pipeline: bronze, SQL models into silver and gold, the status page) and a real
//! `sluice-agent` process on loopback, which runs the example scenario and a WebAssembly
//! connector whose rows an edge transform scrubs, and ships both over QUIC. Once the agent
//! has finished and the models have caught up, it prints what landed where, a query over
//! gold and the status page's address, and serves until Ctrl-C (or stops, with `--exit`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use iceberg::Catalog;
use sha2::{Digest, Sha256};

use crate::config::ProcessorConfig;
use crate::http::query;
use crate::models;
use crate::receive::certs;
use crate::server::Server;

const PROCESSOR_EXAMPLE: &str = include_str!("../../../examples/pipeline/processor.toml");
const AGENT_EXAMPLE: &str = include_str!("../../../examples/demo/agent.toml");
const SCENARIO_EXAMPLE: &str = include_str!("../../../examples/pipeline/scenario.toml");
const DEMO_AGENT: &str = "edge-01";
/// The streams of examples/demo/agent.toml, which the demo's processor grants the agent.
const DEMO_STREAMS: [&str; 2] = ["cpu", "devices"];
/// Rows the connector emits (its `total` in examples/demo/agent.toml).
const DEVICE_ROWS: u64 = 20_000;

/// Options of the demo.
pub struct DemoOptions {
    /// Certificates, configs and data (data is reset on each run).
    pub dir: PathBuf,
    /// The compiled connector components (`counter.wasm`, `redact.wasm`).
    pub plugins: PathBuf,
    /// The agent binary; default: next to this one.
    pub agent_bin: Option<PathBuf>,
    /// How long the agent and the models may take.
    pub timeout: Duration,
    /// Stop at the end instead of serving until Ctrl-C.
    pub exit: bool,
}

/// Run the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = std::path::absolute(&opts.dir)?;
    let plugins = std::path::absolute(&opts.plugins)?;
    for component in ["counter.wasm", "redact.wasm"] {
        if !plugins.join(component).exists() {
            bail!(
                "{} is missing: scripts/demo.sh builds the connectors (or run plugins/build.sh and pass --plugins plugins/dist)",
                plugins.join(component).display()
            );
        }
    }
    let certs_dir = dir.join("certs");
    let data_dir = dir.join("data");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("cannot clear {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    if !certs_dir.join(certs::CA_KEY).exists() {
        certs::init(
            &certs_dir,
            &["localhost".into(), "127.0.0.1".into()],
            &[DEMO_AGENT.into()],
            certs::DEFAULT_DAYS,
            false,
        )?;
    }
    println!("demo directory: {}", dir.display());

    // Processor: the example pipeline, on free ports, data under the demo directory, a
    // token for the status page and the agent's streams granted.
    let token = sluice_ops::new_token()?;
    let mut p: toml::Table =
        toml::from_str(PROCESSOR_EXAMPLE).context("examples/pipeline/processor.toml")?;
    set(
        &mut p,
        &["processor", "data_dir"],
        data_dir.display().to_string(),
    );
    set(&mut p, &["quic", "listen"], "127.0.0.1:0".into());
    set(&mut p, &["api", "listen"], "127.0.0.1:0".into());
    for (key, file) in [
        ("cert", certs::SERVER_CERT),
        ("key", certs::SERVER_KEY),
        ("ca", certs::CA_CERT),
    ] {
        set(
            &mut p,
            &["quic", key],
            certs_dir.join(file).display().to_string(),
        );
    }
    let digest: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    table(&mut p, &["api"]).insert(
        "tokens".into(),
        toml::Value::Array(vec![toml::Value::Table(toml::Table::from_iter([
            ("name".to_string(), toml::Value::String("demo".into())),
            ("sha256".to_string(), toml::Value::String(digest)),
            (
                "roles".to_string(),
                toml::Value::Array(vec!["read".into(), "metrics".into()]),
            ),
        ]))]),
    );
    table(&mut p, &["access", "allow"]).insert(
        DEMO_AGENT.into(),
        toml::Value::Array(DEMO_STREAMS.iter().map(|s| (*s).into()).collect()),
    );
    std::fs::write(dir.join("processor.toml"), toml::to_string(&p)?)?;
    let cfg = ProcessorConfig::load(&dir.join("processor.toml"))?;
    let server = Server::start(&cfg).await?;
    let quic_addr = server
        .quic_addr
        .context("the demo's processor config has no [quic] section")?;

    // Agent: the demo's config pointed at that port, its connectors at `plugins`.
    let mut a: toml::Table = toml::from_str(AGENT_EXAMPLE).context("examples/demo/agent.toml")?;
    set(&mut a, &["sink", "endpoint"], quic_addr.to_string());
    let (agent_cert, agent_key) = certs::agent_files(&certs_dir, DEMO_AGENT);
    set(
        &mut a,
        &["sink", "ca"],
        certs_dir.join(certs::CA_CERT).display().to_string(),
    );
    set(&mut a, &["sink", "cert"], agent_cert.display().to_string());
    set(&mut a, &["sink", "key"], agent_key.display().to_string());
    // The agent's own endpoint is not part of the demo (the processor's shows the flow).
    a.remove("api");
    // The agent's write-ahead log and checkpoints go with the lake, cleared on each run: a
    // log kept from an earlier run would resume a simulation that run already finished.
    set(
        &mut a,
        &["agent", "data_dir"],
        data_dir.join("agent").display().to_string(),
    );
    // The scenario ships inside the binary, like the configs.
    let scenario = dir.join("scenario.toml");
    std::fs::write(&scenario, SCENARIO_EXAMPLE)?;
    set(
        &mut a,
        &["sources", "fleet", "scenario"],
        scenario.display().to_string(),
    );
    for path in [
        ["sources", "devices", "plugin"],
        ["transforms", "scrub", "plugin"],
    ] {
        let file = get_str(&a, &path)
            .and_then(|p| Path::new(p).file_name().map(|f| f.to_owned()))
            .with_context(|| format!("examples/demo/agent.toml has no {}", path.join(".")))?;
        set(&mut a, &path, plugins.join(file).display().to_string());
    }
    let agent_config = dir.join("agent.toml");
    std::fs::write(&agent_config, toml::to_string(&a)?)?;

    let agent_bin = match opts.agent_bin {
        Some(p) => p,
        None => sibling_binary("sluice-agent")?,
    };
    println!(
        "running {}: a scenario simulation and a WebAssembly connector (with an edge transform) -> QUIC {quic_addr} -> bronze -> silver -> gold",
        agent_bin.display(),
    );
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let mut child = tokio::process::Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&agent_config)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", agent_bin.display()))?;
    let status = match tokio::time::timeout_at(deadline.into(), child.wait()).await {
        Ok(s) => s?,
        Err(_) => {
            let _ = child.kill().await;
            bail!("the agent did not finish within {:?}", opts.timeout);
        }
    };
    if !status.success() {
        bail!("the agent failed ({status})");
    }
    server.lander.flush().await;
    let landed = started.elapsed();
    let graph = cfg.model_graph()?;
    loop {
        let status = models::describe(server.catalog.as_ref(), &graph).await?;
        if status
            .iter()
            .all(|m| m.rows.is_some() && m.pending_snapshots == 0)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the models did not catch up within {:?}", opts.timeout);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "\nlanded in {:.1}s, models caught up in {:.1}s:",
        landed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let ctx = query::session(
        server.catalog.clone(),
        cfg.catalog_name(),
        &query::AsOf::default(),
        query::Limits::new(&cfg.query, false)?.env(),
    )
    .await?;
    let mut devices = 0;
    for name in tables(server.catalog.as_ref()).await? {
        let n = count(&ctx, &name).await?;
        if name == format!("{}.devices", cfg.lander.namespace) {
            devices = n;
        }
        println!("  {name:<24} {n:>10} rows");
    }
    for sql in [
        "SELECT hour, role, samples, hosts, round(avg_cpu, 1) AS avg_cpu, round(max_cpu, 1) AS max_cpu \
         FROM gold.cpu_hourly ORDER BY hour, role LIMIT 8",
        "SELECT device, site, count(*) AS readings, round(avg(temp), 2) AS avg_temp \
         FROM bronze.devices GROUP BY device, site ORDER BY device LIMIT 3",
    ] {
        println!("\n{sql}");
        println!("{}", query::pretty(&query::run(&ctx, sql, None).await?.0)?);
    }
    if let Some(api) = server.api_addr {
        println!("\nstatus page: http://{api}/#token={token}");
        println!(
            "query API:   curl -H 'Authorization: Bearer {token}' 'http://{api}/api/query?sql=SELECT+*+FROM+gold.host_daily+LIMIT+5'"
        );
    }
    println!(
        "warehouse:   {}\ncatalog:     {} (catalog name {:?})",
        cfg.warehouse(),
        cfg.catalog_uri_shown(),
        cfg.catalog_name()
    );
    if devices != DEVICE_ROWS {
        server.shutdown().await;
        bail!("expected {DEVICE_ROWS} rows in bronze.devices, found {devices}");
    }
    if !opts.exit {
        println!("\nserving until Ctrl-C");
        sluice_ops::stop_signal().await;
    }
    server.shutdown().await;
    Ok(())
}

/// Every table of every namespace, `namespace.table`, sorted.
async fn tables(catalog: &dyn Catalog) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for ns in catalog.list_namespaces(None).await? {
        for t in catalog.list_tables(&ns).await? {
            out.push(crate::lake::qualified(&t));
        }
    }
    // Bronze, silver, gold, then quarantine: the order a batch takes.
    let rank = |n: &str| match n.split('.').next() {
        Some("bronze") => 0,
        Some("silver") => 1,
        Some("gold") => 2,
        _ => 3,
    };
    out.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    Ok(out)
}

async fn count(ctx: &datafusion::prelude::SessionContext, table: &str) -> anyhow::Result<u64> {
    let sql = format!("SELECT count(*) AS n FROM {table}");
    Ok(query::run(ctx, &sql, None)
        .await?
        .0
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0))
}

fn get_str<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for p in parents {
        t = t.get(*p)?.as_table()?;
    }
    t.get(*last)?.as_str()
}

/// The table at `path`, created (or replacing a non-table) as needed.
fn table<'a>(root: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut t = root;
    for p in path {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => unreachable!("made a table above"),
        };
    }
    t
}

fn set(root: &mut toml::Table, path: &[&str], value: String) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    table(root, parents).insert(last.to_string(), toml::Value::String(value));
}

/// Find another Sluice binary next to this one (as `cargo build` lays them out).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidate = dir.join(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "cannot find {name} next to {} — build it (`cargo build --bins`) or pass --agent-bin",
        exe.display()
    )
}

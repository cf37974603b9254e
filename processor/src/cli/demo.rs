//! `sluice-processor demo`: the whole path on one machine, in one command.
//!
//! Creates certificates, starts a processor in this process and a real `sluice-agent`
//! process on loopback (both configured from `examples/`), lets the agent's bounded
//! simulation run to completion, then prints per-table row counts and a sample query.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use iceberg::NamespaceIdent;

use crate::config::ProcessorConfig;
use crate::http::query;
use crate::receive::certs;
use crate::server::Server;

const PROCESSOR_EXAMPLE: &str = include_str!("../../../examples/processor.toml");
const AGENT_EXAMPLE: &str = include_str!("../../../examples/agent.toml");
const DEMO_AGENT: &str = "edge-01";

/// Options of the demo.
pub struct DemoOptions {
    pub dir: PathBuf,
    pub rows: Option<u64>,
    pub agent_bin: Option<PathBuf>,
    pub timeout: Duration,
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = std::path::absolute(&opts.dir)?;
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

    // Processor: the example config, on a free port, data under the demo directory.
    let mut p: toml::Table =
        toml::from_str(PROCESSOR_EXAMPLE).context("examples/processor.toml")?;
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
    let processor_toml = toml::to_string(&p)?;
    std::fs::write(dir.join("processor.toml"), &processor_toml)?;
    let cfg = ProcessorConfig::load(&dir.join("processor.toml"))?;
    let server = Server::start(&cfg).await?;
    let quic_addr = server
        .quic_addr
        .context("the demo's processor config has no [quic] section")?;

    // Agent: the example config pointed at that port.
    let mut a: toml::Table = toml::from_str(AGENT_EXAMPLE).context("examples/agent.toml")?;
    set(&mut a, &["sink", "endpoint"], quic_addr.to_string());
    let (agent_cert, agent_key) = certs::agent_files(&certs_dir, DEMO_AGENT);
    set(
        &mut a,
        &["sink", "ca"],
        certs_dir.join(certs::CA_CERT).display().to_string(),
    );
    set(&mut a, &["sink", "cert"], agent_cert.display().to_string());
    set(&mut a, &["sink", "key"], agent_key.display().to_string());
    set(&mut a, &["api", "listen"], "127.0.0.1:0".into());
    // The agent's write-ahead log and checkpoints go with the lake, cleared on each run: a
    // log kept from an earlier run would resume a simulation that run already finished.
    set(
        &mut a,
        &["agent", "data_dir"],
        data_dir.join("agent").display().to_string(),
    );
    let mut expected = 0u64;
    if let Some(toml::Value::Table(sources)) = a.get_mut("sources") {
        for (_, src) in sources.iter_mut() {
            if let toml::Value::Table(src) = src {
                if let Some(rows) = opts.rows {
                    src.insert("total".into(), toml::Value::Integer(rows as i64));
                }
                expected += src
                    .get("total")
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0) as u64;
            }
        }
    }
    let agent_config = dir.join("agent.toml");
    std::fs::write(&agent_config, toml::to_string(&a)?)?;

    let agent_bin = match opts.agent_bin {
        Some(p) => p,
        None => sibling_binary("sluice-agent")?,
    };
    println!(
        "running {} -> QUIC {} -> bronze ({expected} rows)",
        agent_bin.display(),
        quic_addr
    );
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(&agent_bin)
        .args(["run", "--config"])
        .arg(&agent_config)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", agent_bin.display()))?;
    let status = match tokio::time::timeout(opts.timeout, child.wait()).await {
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
    let elapsed = started.elapsed();

    let ctx = query::session(
        server.catalog.clone(),
        cfg.catalog_name(),
        &query::AsOf::default(),
        query::Limits::new(&cfg.query, false)?.env(),
    )
    .await?;
    let tables = server
        .catalog
        .list_tables(&NamespaceIdent::new(cfg.lander.namespace.clone()))
        .await?;
    println!("\nlanded in {:.1}s:", elapsed.as_secs_f64());
    let mut total = 0i64;
    for t in &tables {
        let sql = format!(
            "SELECT count(*) AS n FROM {}.{}",
            cfg.lander.namespace,
            t.name()
        );
        let n = query::run(&ctx, &sql, None)
            .await?
            .0
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .map(|a| a.value(0))
            })
            .unwrap_or(0);
        total += n;
        println!("  {}.{:<20} {n:>10} rows", cfg.lander.namespace, t.name());
    }
    let sample = "SELECT region, count(*) AS samples, count(DISTINCT host) AS hosts, \
                  round(avg(cpu), 1) AS avg_cpu, round(max(cpu), 1) AS max_cpu \
                  FROM bronze.host_metrics GROUP BY region ORDER BY region";
    println!("\n{sample}");
    println!(
        "{}",
        query::pretty(&query::run(&ctx, sample, None).await?.0)?
    );
    println!(
        "\nwarehouse: {}\ncatalog:   {} (catalog name {:?})",
        cfg.warehouse(),
        cfg.catalog_uri_shown(),
        cfg.catalog_name()
    );
    server.shutdown().await;
    if total as u64 != expected {
        bail!("expected {expected} rows in bronze, found {total}");
    }
    Ok(())
}

fn set(table: &mut toml::Table, path: &[&str], value: String) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = table;
    for p in parents {
        t = match t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(inner) => inner,
            other => {
                *other = toml::Value::Table(toml::Table::new());
                match other {
                    toml::Value::Table(inner) => inner,
                    _ => unreachable!(),
                }
            }
        };
    }
    t.insert(last.to_string(), toml::Value::String(value));
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

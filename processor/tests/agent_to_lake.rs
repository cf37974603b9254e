//! Both libraries in one process: the agent's pipeline (`sluice_agent::run`) ships a
//! simulator source over QUIC with mutual TLS to a processor started from its library
//! (`sluice_processor::server::Server`), and the rows are read back from the lake through
//! the processor's query engine. What the binaries do, without the binaries.

use std::sync::Arc;

use sluice_agent::config::AgentConfig;
use sluice_agent::telemetry::{Metrics as AgentMetrics, Taps};
use sluice_processor::config::ProcessorConfig;
use sluice_processor::http::query;
use sluice_processor::receive::certs;
use sluice_processor::server::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_library_ships_to_a_processor_library_and_every_row_lands_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let certs_dir = dir.path().join("certs");
    certs::init(
        &certs_dir,
        &["localhost".into()],
        &["edge-01".into()],
        30,
        false,
    )
    .expect("certificates");
    let processor = ProcessorConfig::parse(&format!(
        r#"
[processor]
data_dir = {data:?}
[quic]
listen = "127.0.0.1:0"
cert = {cert:?}
key = {key:?}
ca = {ca:?}
[access]
allow = {{ "edge-01" = ["telemetry"] }}
[lander]
commit_interval = "200ms"
"#,
        data = dir.path().join("lake"),
        cert = certs_dir.join(certs::SERVER_CERT),
        key = certs_dir.join(certs::SERVER_KEY),
        ca = certs_dir.join(certs::CA_CERT),
    ))
    .expect("processor config");
    let server = Server::start(&processor).await.expect("processor");
    let addr = server.quic_addr.expect("a QUIC listener");

    let (cert, key) = certs::agent_files(&certs_dir, "edge-01");
    let agent = AgentConfig::parse(&format!(
        r#"
[agent]
id = "edge-01"
data_dir = {data:?}
[sink]
type = "quic"
endpoint = "localhost:{port}"
ca = {ca:?}
cert = {cert:?}
key = {key:?}
[sources.telemetry]
type = "simulator"
pace = "fast"
total = 30000
seed = 3
[sources.telemetry.fields]
ts = {{ type = "timestamp" }}
n = {{ type = "sequence" }}
v = {{ type = "normal", mean = 1.0, stddev = 0.5 }}
"#,
        data = dir.path().join("agent"),
        port = addr.port(),
        ca = certs_dir.join(certs::CA_CERT),
    ))
    .expect("agent config");
    agent.validate().expect("a valid agent config");
    let metrics = AgentMetrics::new(sluice_ops::health_for(None));
    let taps = Taps::new(["telemetry".to_string()]);
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let summary = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        sluice_agent::run::run(agent, metrics, taps, stop),
    )
    .await
    .expect("the agent finishes")
    .expect("the agent runs");
    assert_eq!(summary.rows_generated, 30_000);
    assert_eq!(summary.batches_rejected + summary.batches_unshipped, 0);

    server.lander.flush().await;
    let ctx = query::session(
        Arc::clone(&server.catalog),
        processor.catalog_name(),
        &query::AsOf::default(),
        query::Limits::new(&processor.query, false)
            .expect("limits")
            .env(),
    )
    .await
    .expect("a query session");
    let (batches, _) = query::run(
        &ctx,
        "SELECT count(*) AS n, count(DISTINCT n) AS distinct_n, min(n) AS lo, max(n) AS hi, \
         count(DISTINCT _agent) AS agents FROM bronze.telemetry",
        None,
    )
    .await
    .expect("the query");
    let row = query::pretty(&batches).expect("printable");
    assert!(
        row.contains("| 30000 | 30000      | 1  | 30000 | 1      |"),
        "every row once, numbered 1..=30000, from one agent:\n{row}"
    );
    server.shutdown().await;
}

//! `sluice-processor serve`: the processor assembled from its parts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use iceberg::Catalog;

use crate::config::ProcessorConfig;
use crate::lake;
use crate::lake::CatalogSwap;
use crate::lake::locks::CommitLocks;
use crate::land::inflight::InFlight;
use crate::land::lander::Lander;
use crate::receive::kafka::KafkaReceiver;
use crate::receive::quic::Receiver;
use crate::receive::tls;
use crate::telemetry::metrics::Metrics;

/// A running processor.
pub struct Server {
    /// Where the QUIC receiver listens, if the processor has one.
    pub quic_addr: Option<SocketAddr>,
    /// Where the HTTP endpoint (metrics, query API, status page) listens, if configured.
    pub api_addr: Option<SocketAddr>,
    /// The catalog every stage reads and commits through.
    pub catalog: Arc<dyn Catalog>,
    /// The running lander, for callers that hand it batches or wait for its commits.
    pub lander: Lander,
    endpoint: Option<quinn::Endpoint>,
    /// Tells the QUIC lanes to take no further batch.
    stop_intake: tokio::sync::watch::Sender<bool>,
    kafka: Option<KafkaReceiver>,
    models: Option<crate::models::Scheduler>,
    maintenance: Option<crate::maintenance::Scheduled>,
    /// Refreshes the per-table gauges.
    table_stats: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Open the catalog, start the lander, bind the QUIC and HTTP endpoints, join the
    /// Kafka consumer group.
    pub async fn start(cfg: &ProcessorConfig) -> anyhow::Result<Self> {
        let health = sluice_ops::health_for(cfg.api.as_ref());
        let metrics = Metrics::with_health(health.clone());
        let catalog = lake::open(&cfg.catalog_settings())
            .await
            .with_context(|| format!("cannot open the catalog at {}", cfg.catalog_uri_shown()))?;
        lake::ensure_namespace(catalog.as_ref(), &cfg.lander.namespace)
            .await
            .context("cannot create the bronze namespace")?;
        let graph = cfg.model_graph()?;
        let locks = CommitLocks::default();
        let inflight = InFlight::default();
        let swap = CatalogSwap::open(&cfg.catalog_settings())
            .await
            .context("cannot open the catalog database")?;
        let lander = Lander::start(
            catalog.clone(),
            swap.clone(),
            cfg.lander.clone(),
            cfg.streams(),
            metrics.clone(),
            locks.clone(),
            inflight.clone(),
        );
        let storage = crate::lake::storage::ObjectStorage::new(cfg.catalog.s3.clone());
        let models = (!graph.order.is_empty()).then(|| {
            tracing::info!(
                models = ?graph.order.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
                "running models"
            );
            crate::models::Scheduler::start(
                crate::models::Runner::new(
                    cfg.model_settings(),
                    catalog.clone(),
                    swap.clone(),
                    locks.clone(),
                    metrics.clone(),
                ),
                graph,
                cfg.processor.model_poll_interval,
            )
        });
        let maintenance = cfg.maintenance.enabled.then(|| {
            crate::maintenance::Scheduled::start(crate::maintenance::Upkeep {
                catalog: catalog.clone(),
                swap: swap.clone(),
                locks: locks.clone(),
                cfg: cfg.maintenance.clone(),
                compression: cfg.lander.compression,
                metrics: metrics.clone(),
                storage: storage.clone(),
            })
        });

        let (stop_intake, stopping) = tokio::sync::watch::channel(false);
        let access = Arc::new(crate::receive::access::Access::new(&cfg.access)?);
        access.log();
        let endpoint = match &cfg.quic {
            Some(quic) => {
                let server_config =
                    tls::server_config(&quic.ca, quic.crl.as_deref(), &quic.cert, &quic.key)
                        .context("cannot set up TLS for the QUIC receiver")?;
                let endpoint = quinn::Endpoint::server(server_config, quic.listen)
                    .with_context(|| format!("cannot listen on quic.listen {}", quic.listen))?;
                let receiver = Receiver {
                    lander: lander.clone(),
                    metrics: metrics.clone(),
                    max_frame_bytes: usize::try_from(quic.max_frame_bytes.as_u64())
                        .unwrap_or(usize::MAX),
                    access: access.clone(),
                    quotas: crate::receive::quota::Quotas::new(crate::receive::quota::Limits {
                        connections: quic.max_connections_per_agent,
                        lanes: quic.max_lanes_per_agent,
                        inflight_bytes: usize::try_from(quic.max_inflight_bytes_per_agent.as_u64())
                            .unwrap_or(usize::MAX),
                    }),
                    frame_timeout: quic.frame_timeout,
                    namespace: cfg.lander.namespace.clone(),
                    stopping,
                };
                tokio::spawn(receiver.serve(endpoint.clone()));
                Some(endpoint)
            }
            None => None,
        };
        let quic_addr = endpoint.as_ref().map(|e| e.local_addr()).transpose()?;
        let kafka = match &cfg.kafka {
            Some(k) => Some(
                KafkaReceiver::start(
                    k,
                    catalog.as_ref(),
                    &cfg.lander.namespace,
                    lander.clone(),
                    inflight,
                    metrics.clone(),
                    crate::receive::admission::Admission::new(
                        access.clone(),
                        cfg.kafka_ca(),
                        k.require_signed,
                    )?,
                )
                .await?,
            ),
            None => None,
        };

        let api_addr = match &cfg.api {
            Some(api) => Some(
                sluice_ops::serve_api(
                    api,
                    metrics.clone(),
                    health,
                    crate::http::api::routes(
                        catalog.clone(),
                        storage.clone(),
                        cfg.catalog_name(),
                        &cfg.lander.namespace,
                        metrics.clone(),
                        Arc::new(crate::http::query::Limits::new(&cfg.query, true)?),
                    ),
                )
                .await
                .with_context(|| format!("cannot listen on api.listen {}", api.listen))?,
            ),
            None => None,
        };
        tracing::info!(quic = ?quic_addr, api = ?api_addr, warehouse = %cfg.warehouse(), "processor ready");
        let table_stats = watch_tables(catalog.clone(), storage, metrics);
        Ok(Self {
            quic_addr,
            api_addr,
            catalog,
            lander,
            endpoint,
            stop_intake,
            kafka,
            models,
            maintenance,
            table_stats,
        })
    }

    /// Stop accepting, commit what is buffered, close connections, leave the group — all
    /// within [`STOP_WITHIN`], whatever the processor is doing. Maintenance and model runs
    /// stop at their next step, and are cut off if they do not (a cut-off commit either
    /// went in or left only files orphan cleanup removes). Batches the lander cannot commit
    /// in time are not acknowledged: agents send them again, Kafka reads them again.
    pub async fn shutdown(self) {
        let deadline = Instant::now() + STOP_WITHIN;
        // No new connection, and no further batch on the open ones: what is buffered can
        // then be committed and acknowledged, however fast agents send.
        if let Some(e) = &self.endpoint {
            e.set_server_config(None);
        }
        let _ = self.stop_intake.send(true);
        let mut maintenance = self.maintenance;
        let background = async {
            if let Some(m) = maintenance.as_mut() {
                m.stop(Duration::from_secs(5)).await;
            }
            if let Some(m) = self.models {
                m.stop(Duration::from_secs(5)).await;
            }
        };
        let kafka = async {
            if let Some(k) = self.kafka {
                k.stop(KAFKA_STOP).await;
            }
        };
        // The consumer waits for what it read to be committed, which the flush speeds up.
        let landed = async {
            tokio::join!(kafka, self.lander.flush());
            self.lander.flush().await;
        };
        let (_, on_time) = tokio::join!(background, tokio::time::timeout_at(deadline, landed));
        if on_time.is_err() {
            tracing::warn!(
                "stopping without committing every buffered batch: it is not acknowledged and will be sent again"
            );
        }
        if let Some(e) = &self.endpoint {
            e.close(quinn::VarInt::from_u32(0), b"processor stopping");
            let idle = tokio::time::timeout_at(deadline + Duration::from_secs(2), e.wait_idle());
            if idle.await.is_err() {
                tracing::warn!("agent connections did not close in time");
            }
        }
        self.table_stats.abort();
        drop(maintenance);
    }
}

/// The most a graceful stop takes to commit what is buffered; the process exits after it
/// (plus a couple of seconds to close connections) whatever it is doing.
pub const STOP_WITHIN: Duration = Duration::from_secs(20);
/// How long the Kafka consumer waits for what it read to be committed when stopping.
const KAFKA_STOP: Duration = Duration::from_secs(15);

/// Keep the per-table gauges and the status report up to date from the tables' current
/// snapshots, and sample the status history.
fn watch_tables(
    catalog: Arc<dyn Catalog>,
    storage: crate::lake::storage::ObjectStorage,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::telemetry::status::SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stats = match crate::lake::tables(catalog.as_ref(), &storage).await {
                Ok(stats) => {
                    metrics.table_stats(&stats);
                    Some(stats)
                }
                Err(e) => {
                    tracing::warn!("cannot read the tables' stats for the metrics: {e:#}");
                    None
                }
            };
            let worst = metrics
                .freshness()
                .into_iter()
                .map(|(_, f)| f)
                .reduce(f64::max);
            metrics
                .status
                .sample(stats, metrics.committed_total(), worst);
        }
    })
}

//! `sluice-processor serve`: the processor assembled from its parts.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use iceberg::Catalog;

use crate::config::ProcessorConfig;
use crate::lander::Lander;
use crate::locks::CommitLocks;
use crate::metrics::Metrics;
use crate::receiver::Receiver;
use crate::rewrite::CatalogSwap;
use crate::{lake, tls};

/// A running processor.
pub struct Server {
    pub quic_addr: SocketAddr,
    pub catalog: Arc<dyn Catalog>,
    pub lander: Lander,
    endpoint: quinn::Endpoint,
    models: Option<crate::models::Scheduler>,
    maintenance: Option<crate::maintenance::Scheduled>,
}

impl Server {
    /// Open the catalog, start the lander, bind the QUIC and HTTP endpoints.
    pub async fn start(cfg: &ProcessorConfig) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let catalog = lake::open(cfg)
            .await
            .with_context(|| format!("cannot open the catalog at {}", cfg.catalog_uri()))?;
        lake::ensure_namespace(catalog.as_ref(), &cfg.lander.namespace)
            .await
            .context("cannot create the bronze namespace")?;
        let graph = cfg.model_graph()?;
        let locks = CommitLocks::default();
        let lander = Lander::start(
            catalog.clone(),
            cfg.lander.clone(),
            metrics.clone(),
            locks.clone(),
        );
        let swap = CatalogSwap::open(cfg)
            .await
            .context("cannot open the catalog database")?;
        let models = (!graph.order.is_empty()).then(|| {
            tracing::info!(
                models = ?graph.order.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
                "running models"
            );
            crate::models::Scheduler::start(
                crate::models::Runner::new(
                    cfg,
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
                storage: crate::storage::ObjectStorage::new(cfg.catalog.s3.clone()),
            })
        });

        let server_config = tls::server_config(&cfg.quic.ca, &cfg.quic.cert, &cfg.quic.key)
            .context("cannot set up TLS for the QUIC receiver")?;
        let endpoint = quinn::Endpoint::server(server_config, cfg.quic.listen)
            .with_context(|| format!("cannot listen on quic.listen {}", cfg.quic.listen))?;
        let quic_addr = endpoint.local_addr()?;
        let receiver = Receiver {
            lander: lander.clone(),
            metrics: metrics.clone(),
            max_frame_bytes: usize::try_from(cfg.quic.max_frame_bytes.as_u64())
                .unwrap_or(usize::MAX),
            access: Arc::new(
                crate::access::Access::new(cfg.quic.allow.clone()).map_err(anyhow::Error::msg)?,
            ),
        };
        tokio::spawn(receiver.serve(endpoint.clone()));

        let api_addr = match &cfg.api {
            Some(api) => Some(
                sluice_ops::serve_api_with(
                    api.listen,
                    metrics.clone(),
                    crate::api::router(catalog.clone(), cfg.catalog_name()),
                )
                .await
                .with_context(|| format!("cannot listen on api.listen {}", api.listen))?,
            ),
            None => None,
        };
        tracing::info!(quic = %quic_addr, api = ?api_addr, warehouse = %cfg.warehouse(), "processor ready");
        Ok(Self {
            quic_addr,
            catalog,
            lander,
            endpoint,
            models,
            maintenance,
        })
    }

    /// Stop accepting, commit what is buffered, close connections.
    pub async fn shutdown(self) {
        self.endpoint.set_server_config(None);
        self.lander.flush().await;
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"processor stopping");
        self.endpoint.wait_idle().await;
        if let Some(m) = self.models {
            m.stop().await;
        }
        if let Some(m) = self.maintenance {
            m.stop().await;
        }
    }
}

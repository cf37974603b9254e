//! What both Sluice binaries need to be operated: process start-up, logging, stop signals
//! and the HTTP endpoint serving `/metrics` and `/health`.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;

/// Log format on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Run `main` on a multi-threaded runtime; an error is printed with its causes and turns
/// into a failing exit code.
pub fn run<F, E>(main: F) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints an anyhow error with its chain of causes.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `[api]` in both configs: where the HTTP endpoint listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
}

/// What the HTTP endpoint shows: the Prometheus text exposition, and health.
pub trait RenderMetrics: Send + Sync + 'static {
    fn render(&self) -> String;

    /// `Err(reasons)` turns `/health` into a 503 with the reasons in the body.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Serve `/metrics` and `/health` in the background; returns the bound address.
pub async fn serve_api(
    listen: SocketAddr,
    metrics: Arc<dyn RenderMetrics>,
) -> std::io::Result<SocketAddr> {
    serve_api_with(listen, metrics, Router::new()).await
}

/// Serve `/metrics`, `/health` and the binary's own `routes` in the background; returns the
/// bound address.
pub async fn serve_api_with(
    listen: SocketAddr,
    metrics: Arc<dyn RenderMetrics>,
    routes: Router,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let health = metrics.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let h = health.clone();
                async move {
                    match h.health() {
                        Ok(()) => (axum::http::StatusCode::OK, "ok\n".to_string()),
                        Err(reasons) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("unhealthy\n{reasons}\n"),
                        ),
                    }
                }
            }),
        )
        .merge(routes);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(addr)
}

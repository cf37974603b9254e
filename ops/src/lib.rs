//! What both Sluice binaries need to be operated: process start-up, logging, stop signals
//! and the HTTP endpoint serving `/metrics`, `/health` and `/ready`.
//!
//! | file | job |
//! |---|---|
//! | `lib.rs` | start-up, logging, signals, the endpoint and its `[api]` config |
//! | `health.rs` | `/health` and `/ready` from what each part of a pipeline reports |
//! | `auth.rs` | bearer tokens with roles, and the checks that stop browsers being used |
//! | `client.rs` | a minimal client of an endpoint (`top`, `tap`, `/api/committed`) |
//! | `secret.rs` | config values that never reach a log (`Secret`, `Options`, `redact_uri`) |
//! | `config/` | loading config files: errors naming key and line, `{ type = ... }` tables |

mod auth;
pub mod client;
pub mod config;
mod health;
mod secret;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use auth::{Refusal, Role, TokenArgs, TokenConfig, TokenDigest, new_token, print_new_token};
pub use health::{Health, Report, Watch};
pub use secret::{Options, Secret, is_secret_key, redact_uri};

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;

/// Log format on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
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
    /// Address of the HTTP endpoint serving `/metrics`, `/health`, `/ready` and the
    /// binary's own routes: the agent's `/tap/STREAM` (what `sluice-agent top` and `tap`
    /// read), the processor's `/api/query`, `/api/tables`, `/api/status`, `/api/committed`
    /// and status page (`/`); see OPERATIONS.md. Without `[api]` there is no endpoint.
    pub listen: SocketAddr,
    /// A part of the pipeline with work waiting (or failing) and no progress for this long
    /// makes `/ready` answer 503 with the reason: in the agent, a stream's sink whose
    /// batches are not acknowledged, a write-ahead log that cannot be written; in the
    /// processor, a table with rows waiting and no commit, a catalog or Kafka brokers that
    /// keep failing.
    #[serde(default = "default_stalled_after", with = "humantime_serde")]
    pub stalled_after: Duration,
    /// Who may call: each token's digest and roles (`[[api.tokens]]`).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Roles granted to requests without a token. `["metrics"]` lets a Prometheus without
    /// credentials scrape; granting `read` is logged as a warning; `committed` lets agents
    /// behind a Kafka sink ask the processor what the lake holds without a token.
    #[serde(default)]
    pub anonymous: Vec<Role>,
    /// Host names, besides IP addresses and `localhost`, that clients use to reach the
    /// endpoint. A request whose `Host` is another name is refused (this stops DNS
    /// rebinding).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// How long a part may have work waiting without progress when `[api]` does not say.
pub const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(30);

fn default_stalled_after() -> Duration {
    DEFAULT_STALLED_AFTER
}

/// The health of a process configured with `api` (or without an endpoint).
pub fn health_for(api: Option<&ApiConfig>) -> Health {
    Health::new(api.map_or(DEFAULT_STALLED_AFTER, |a| a.stalled_after))
}

/// What the HTTP endpoint needs of a binary's metrics.
pub trait ApiMetrics: Send + Sync + 'static {
    /// `/metrics`: the Prometheus text exposition.
    fn render(&self) -> String;
    /// Count a request refused for `reason` (a [`Refusal::reason`]).
    fn refused(&self, reason: &'static str) {
        let _ = reason;
    }
}

/// A binary's own routes on the endpoint.
#[derive(Default)]
pub struct Routes {
    /// Pages anyone may load (they hold no data: the status page's HTML).
    pub public: Router,
    /// Routes for tokens with the `read` role.
    pub read: Router,
    /// Routes for tokens with the `committed` role.
    pub committed: Router,
}

/// Serve `/metrics`, `/health`, `/ready` and the binary's own `routes` on `api.listen` in
/// the background, under `api`'s rules; returns the bound address.
pub async fn serve_api(
    api: &ApiConfig,
    metrics: Arc<dyn ApiMetrics>,
    health: Health,
    routes: Routes,
) -> std::io::Result<SocketAddr> {
    let guard = Arc::new(auth::Guard::new(api, metrics.clone()));
    let guarded = |routes: Router, role: Option<Role>| {
        // axum refuses a route layer on a router with no routes.
        if routes.has_routes() {
            routes.route_layer(axum::middleware::from_fn_with_state(
                (guard.clone(), role),
                auth::enforce,
            ))
        } else {
            routes
        }
    };
    let listener = tokio::net::TcpListener::bind(api.listen).await?;
    let addr = listener.local_addr()?;
    let answer = |r: Report, ok: &str, not_ok: &str| {
        let status = if r.ok {
            axum::http::StatusCode::OK
        } else {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        };
        (status, r.body(ok, not_ok))
    };
    let ready = health.clone();
    let scrape = Router::new().route(
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
    );
    let app = Router::new()
        .route(
            "/health",
            get(move || {
                let r = health.live();
                async move { answer(r, "ok", "unhealthy") }
            }),
        )
        .route(
            "/ready",
            get(move || {
                let r = ready.ready();
                async move { answer(r, "ready", "not ready") }
            }),
        )
        .merge(guarded(scrape, Some(Role::Metrics)))
        .merge(guarded(routes.public, None))
        .merge(guarded(routes.read, Some(Role::Read)))
        .merge(guarded(routes.committed, Some(Role::Committed)));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(addr)
}

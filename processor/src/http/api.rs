//! The processor's query API, served next to `/metrics` and `/health`:
//!
//! - `GET|POST /api/query` — SQL over the lake; `sql` in the query string or a JSON body
//!   (`{"sql": ...}`); `format=json` (default) or `csv`; `limit` rows (default 10,000); time
//!   travel with `as_of` (RFC 3339 or epoch ms) and/or `snapshot=ns.table=ID,...`.
//! - `GET /api/tables` — every table with rows, files, bytes, snapshots, last commit.
//! - `GET /api/committed` — where the lake stands for an agent's stream (see
//!   [`super::committed`]; role `committed`).
//! - `GET /api/status` — agents (streams, last seen, rows, rate), tables (with freshness)
//!   and the last hour's landing rate and worst freshness (see [`crate::telemetry::status`]).
//! - `GET /` (also `/status`) — the status page: that report and `/ready` for people, with
//!   charts of the last hour, refreshed every 5 s by the page itself. The page holds no data
//!   and loads without a token; it asks for one and fetches the report with it.
//!
//! Everything but the page needs a token with the `read` role (see `sluice_ops`).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iceberg::Catalog;
use serde::Deserialize;

use crate::http::query::{self, AsOf};
use crate::telemetry::metrics::Metrics;

/// Rows returned when the request does not say.
const DEFAULT_LIMIT: usize = 10_000;
/// The most rows a request may ask for.
const MAX_LIMIT: usize = 1_000_000;

#[derive(Clone)]
struct Api {
    catalog: Arc<dyn Catalog>,
    storage: crate::lake::storage::ObjectStorage,
    name: String,
    metrics: Arc<Metrics>,
    limits: Arc<query::Limits>,
}

/// The `/api` routes over `catalog` (named `name` in SQL; the lander's tables in
/// `namespace`), its warehouse in `storage`, and the status page.
pub fn routes(
    catalog: Arc<dyn Catalog>,
    storage: crate::lake::storage::ObjectStorage,
    name: &str,
    namespace: &str,
    metrics: Arc<Metrics>,
    limits: Arc<query::Limits>,
) -> sluice_ops::Routes {
    sluice_ops::Routes {
        public: Router::new()
            .route("/", get(status_page))
            .route("/status", get(status_page)),
        committed: super::committed::routes(catalog.clone(), namespace),
        read: Router::new()
            .route("/api/query", get(query_get).post(query_post))
            .route("/api/tables", get(tables))
            .route("/api/status", get(status))
            .with_state(Api {
                catalog,
                storage,
                name: name.to_string(),
                metrics,
                limits,
            }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    sql: Option<String>,
    format: Option<String>,
    limit: Option<usize>,
    as_of: Option<String>,
    snapshot: Option<String>,
}

async fn query_get(State(api): State<Api>, Query(p): Query<Params>) -> Response {
    run(api, p).await
}

/// The body is JSON: the endpoint refuses other content types before this runs, so a web
/// page elsewhere cannot post a query as a form or plain text.
async fn query_post(State(api): State<Api>, Query(mut p): Query<Params>, body: String) -> Response {
    match serde_json::from_str::<Params>(&body) {
        Ok(b) => {
            p.sql = b.sql.or(p.sql);
            p.format = b.format.or(p.format);
            p.limit = b.limit.or(p.limit);
            p.as_of = b.as_of.or(p.as_of);
            p.snapshot = b.snapshot.or(p.snapshot);
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")),
    }
    run(api, p).await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

async fn run(api: Api, p: Params) -> Response {
    let Some(sql) = p.sql.filter(|s| !s.trim().is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "no SQL: pass `sql`".into());
    };
    let csv = match p.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format {f:?}: use json or csv"),
            );
        }
    };
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be within 1..={MAX_LIMIT}"),
        );
    }
    let as_of = match AsOf::parse(p.as_of.as_deref(), p.snapshot.as_deref()) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let started = Instant::now();
    let (catalog, name) = (api.catalog.clone(), api.name.clone());
    let result = api
        .limits
        .run(|env| async move {
            let ctx = query::session(catalog, &name, &as_of, env).await?;
            query::run(&ctx, &sql, Some(limit)).await
        })
        .await;
    let (batches, truncated) = match result {
        Ok(r) => {
            api.metrics.query("ok");
            r
        }
        Err(e) => {
            let (status, reason) = if e.downcast_ref::<query::Refused>().is_some() {
                (StatusCode::FORBIDDEN, "refused")
            } else if let Some(limit) = e.downcast_ref::<query::LimitError>() {
                let status = match limit {
                    query::LimitError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
                    query::LimitError::Memory(_) => StatusCode::UNPROCESSABLE_ENTITY,
                    query::LimitError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                };
                (status, limit.reason())
            } else {
                // Planning and execution errors are the caller's SQL, or a missing table.
                (StatusCode::BAD_REQUEST, "error")
            };
            api.metrics.query(reason);
            return error(status, format!("{e:#}"));
        }
    };
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if csv {
        return match query::csv(&batches) {
            Ok(body) => ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        };
    }
    let rows = match query::json_rows(&batches) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    };
    let columns: Vec<serde_json::Value> = batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
                .collect()
        })
        .unwrap_or_default();
    let row_count = batches.iter().map(|b| b.num_rows()).sum::<usize>();
    axum::Json(serde_json::json!({
        "columns": columns,
        "rows": rows,
        "row_count": row_count,
        "truncated": truncated,
        "elapsed_ms": elapsed_ms,
    }))
    .into_response()
}

async fn status(State(api): State<Api>) -> Response {
    let freshness = api.metrics.freshness();
    axum::Json(api.metrics.status.report(&freshness)).into_response()
}

/// The page is self-contained (no scripts or styles from elsewhere), so the policy allows
/// only its own inline parts and requests to this endpoint.
const STATUS_PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, STATUS_PAGE_POLICY),
        ],
        include_str!("status_page.html"),
    )
        .into_response()
}

async fn tables(State(api): State<Api>) -> Response {
    match crate::lake::tables(api.catalog.as_ref(), &api.storage).await {
        Ok(t) => axum::Json(serde_json::json!({ "tables": t })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

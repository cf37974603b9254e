//! `GET /api/committed?stream=S&agent=A`: the newest batch of agent A that the lander's
//! table S holds, as the table's marks record it: `{"stream", "agent", "seq",
//! "checkpoint"}` (`seq` 0 and no checkpoint when the table holds none of the agent's).
//!
//! Agents behind a Kafka sink ask it: the brokers' acknowledgements say nothing of the
//! lake, and a connector that releases upstream data (a replication slot, message acks)
//! must hear only what the lake holds. A table's marks are read at most once a second,
//! whatever the number of agents asking, so the cost is flat in the size of the fleet.
//! The answer holds no rows, but a checkpoint is a connector's position, which can hold
//! values (a snapshot's last key): a `committed` token reads every agent's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use serde::Deserialize;

use crate::lake::marks::{self, Marks};

/// How long a table's marks are served from memory.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// Per table, its marks and when they were read.
type Cache = HashMap<String, (Instant, Arc<Marks>)>;

#[derive(Clone)]
struct Committed {
    catalog: Arc<dyn Catalog>,
    namespace: String,
    /// Only tables that exist get an entry, so it is bounded by the lander's tables. Held
    /// while marks are read, so requests arriving meanwhile wait and find them fresh.
    cache: Arc<tokio::sync::Mutex<Cache>>,
}

/// The route, over the lander's `namespace` in `catalog`.
pub fn routes(catalog: Arc<dyn Catalog>, namespace: &str) -> Router {
    Router::new()
        .route("/api/committed", get(committed))
        .with_state(Committed {
            catalog,
            namespace: namespace.to_string(),
            cache: Arc::default(),
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    stream: String,
    agent: String,
}

async fn committed(State(c): State<Committed>, Query(p): Query<Params>) -> Response {
    for (what, v) in [("stream", &p.stream), ("agent", &p.agent)] {
        if let Err(e) = sluice_protocol::validate_name(what, v) {
            return answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": e.to_string() }),
            );
        }
    }
    let marks = match c.marks(&p.stream).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return answer(
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": format!("no table {}.{}", c.namespace, p.stream) }),
            );
        }
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": format!("{e:#}") }),
            );
        }
    };
    answer(
        StatusCode::OK,
        serde_json::json!({
            "stream": p.stream,
            "agent": p.agent,
            "seq": marks.get(&p.agent),
            "checkpoint": marks.checkpoint(&p.agent),
        }),
    )
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

impl Committed {
    /// The marks of the table of `stream`, at most [`FRESH_FOR`] old; `None` without it.
    async fn marks(&self, stream: &str) -> anyhow::Result<Option<Arc<Marks>>> {
        let mut cache = self.cache.lock().await;
        if let Some((at, m)) = cache.get(stream)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Some(m.clone()));
        }
        let ident = TableIdent::new(NamespaceIdent::new(self.namespace.clone()), stream.into());
        if !self.catalog.table_exists(&ident).await? {
            return Ok(None);
        }
        let table = self.catalog.load_table(&ident).await?;
        let m = Arc::new(marks::load(&table).await?.marks);
        cache.insert(stream.to_string(), (Instant::now(), m.clone()));
        Ok(Some(m))
    }
}

//! Taps: a sample of the records flowing through a stream of a running agent, served as
//! JSON lines (like `vector tap`; `sluice-agent tap STREAM` is the client). Each stream's batcher offers every chunk it
//! receives (after transforms) to the stream's tap, which costs one atomic load while
//! nobody listens; the agent's endpoint serves `/tap/STREAM?limit=N` to listeners.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::broadcast;

/// Rows a listener gets when it does not say.
pub const DEFAULT_LIMIT: u64 = 20;

/// Per stream, where its records are offered to listeners.
#[derive(Clone, Default)]
pub struct Taps(Arc<BTreeMap<String, broadcast::Sender<RecordBatch>>>);

impl Taps {
    /// Taps for these streams.
    pub fn new(streams: impl IntoIterator<Item = String>) -> Self {
        // A few chunks of slack: a listener that falls behind skips chunks (it is a sample)
        // and never holds the batcher back.
        Self(Arc::new(
            streams
                .into_iter()
                .map(|s| (s, broadcast::channel(8).0))
                .collect(),
        ))
    }

    /// The tap of `stream`, for its batcher.
    pub fn tap(&self, stream: &str) -> Option<Tap> {
        self.0.get(stream).cloned().map(Tap)
    }

    /// `/tap/{stream}` on the agent's endpoint.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/tap/{stream}", get(serve))
            .with_state(self.clone())
    }
}

/// One stream's tap.
#[derive(Clone)]
pub struct Tap(broadcast::Sender<RecordBatch>);

impl Tap {
    /// Offer a chunk to whoever listens; nothing is done when nobody does.
    pub fn offer(&self, batch: &RecordBatch) {
        if self.0.receiver_count() > 0 {
            let _ = self.0.send(batch.clone());
        }
    }
}

#[derive(Debug, Deserialize)]
struct TapParams {
    /// Rows to send before the response ends; 0: until the listener goes away.
    limit: Option<u64>,
}

async fn serve(
    State(taps): State<Taps>,
    Path(stream): Path<String>,
    Query(params): Query<TapParams>,
) -> Response {
    let Some(tx) = taps.0.get(&stream) else {
        let known: Vec<&str> = taps.0.keys().map(String::as_str).collect();
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no stream {stream:?} in this agent; its streams: {}\n",
                known.join(", ")
            ),
        )
            .into_response();
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    let rows = futures::stream::unfold(Some((tx.subscribe(), 0u64)), move |state| async move {
        let (mut rx, sent) = state?;
        if limit > 0 && sent >= limit {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(batch) => {
                    let left = if limit == 0 { u64::MAX } else { limit - sent };
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(batch.num_rows());
                    return Some(match json_lines(&batch.slice(0, take)) {
                        Ok(lines) => (Ok(lines), Some((rx, sent + take as u64))),
                        Err(e) => (Err(std::io::Error::other(e)), None),
                    });
                }
                // The listener fell behind: it is a sample, go on with what comes next.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(rows),
    )
        .into_response()
}

/// A batch as JSON lines.
fn json_lines(batch: &RecordBatch) -> Result<Bytes, arrow_schema::ArrowError> {
    let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
    w.write(batch)?;
    w.finish()?;
    Ok(Bytes::from(w.into_inner()))
}

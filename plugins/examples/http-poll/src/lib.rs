//! Networked source: polls a JSON API page by page with a cursor. Each page is
//! `GET <url>?<cursor_param>=<cursor>&<limit_param>=<n>`, answered with an object holding
//! the rows (`items`, one JSON object each) and the cursor to ask with next (`next`). The
//! checkpoint is that cursor, so a restarted agent asks again exactly after what the lake
//! holds. A 429 or a 5xx is retried after its `Retry-After` (seconds), or else after a
//! backoff doubling from `backoff` up to `max_backoff`; meanwhile polls return nothing.
//!
//! ```toml
//! [sources.events]
//! type = "wasm"
//! plugin = "plugins/dist/http_poll.wasm"
//! allow_http = ["https://api.example.com/v1/events*"]
//! [sources.events.config]
//! url = "https://api.example.com/v1/events"
//! columns = [{ name = "id", type = "int64" }, { name = "at", type = "timestamp-tz" }, { name = "kind", type = "utf8" }]
//! headers = { authorization = "Bearer ..." }
//! ```
//!
//! The agent must grant the URL (`allow_http`); a refused request fails the poll with the
//! host's `http-request-denied`, which the agent counts and logs.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sluice_plugin::{Batch, Column, Level, Poll, Source, log};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    columns: Vec<ColumnSpec>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "cursor_param")]
    cursor_param: String,
    #[serde(default = "limit_param")]
    limit_param: String,
    #[serde(default = "items")]
    items: String,
    #[serde(default = "next")]
    next: String,
    /// Rows asked for per page, at most (and never more than the agent's `max_rows`).
    #[serde(default = "page_size")]
    page_size: u32,
    /// First wait after a 429 or 5xx without `Retry-After`, in milliseconds.
    #[serde(default = "backoff_ms")]
    backoff_ms: u64,
    /// Longest wait between retries, in milliseconds (a longer `Retry-After` is cut to it).
    #[serde(default = "max_backoff_ms")]
    max_backoff_ms: u64,
    /// Give up a request after this long, in milliseconds (connect, first byte, between
    /// bytes; the agent's `network_timeout` bounds it too).
    #[serde(default = "timeout_ms")]
    timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnSpec {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default = "yes")]
    nullable: bool,
}

fn cursor_param() -> String {
    "cursor".into()
}
fn limit_param() -> String {
    "limit".into()
}
fn items() -> String {
    "items".into()
}
fn next() -> String {
    "next".into()
}
fn page_size() -> u32 {
    1000
}
fn backoff_ms() -> u64 {
    500
}
fn max_backoff_ms() -> u64 {
    60_000
}
fn timeout_ms() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}

/// The parts of `url` a request needs.
struct Target {
    https: bool,
    authority: String,
    path: String,
}

struct HttpPoll {
    cfg: Config,
    target: Target,
    cursor: Option<String>,
    /// No request before this (after a 429 or 5xx).
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Source for HttpPoll {
    fn open(config: &str, checkpoint: Option<String>) -> Result<(Self, Vec<Column>), String> {
        let cfg: Config = serde_json::from_str(config).map_err(|e| format!("bad config: {e}"))?;
        let target = parse_url(&cfg.url)?;
        if cfg.columns.is_empty() {
            return Err("config: columns must name at least one column".into());
        }
        let columns = cfg
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_: c.ty.clone(),
                nullable: c.nullable,
            })
            .collect();
        let backoff = Duration::from_millis(cfg.backoff_ms);
        Ok((
            HttpPoll {
                cfg,
                target,
                cursor: checkpoint,
                retry_at: None,
                backoff,
            },
            columns,
        ))
    }

    fn poll(&mut self, max_rows: u32) -> Result<Poll, String> {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(Poll::idle());
        }
        self.retry_at = None;
        let limit = max_rows.min(self.cfg.page_size).max(1);
        let mut query = format!("{}={limit}", self.cfg.limit_param);
        if let Some(c) = &self.cursor {
            query = format!("{}={}&{query}", self.cfg.cursor_param, encode(c));
        }
        let sep = if self.target.path.contains('?') {
            '&'
        } else {
            '?'
        };
        let path = format!("{}{sep}{query}", self.target.path);
        let (status, retry_after, body) = self.get(&path)?;
        if status == 429 || (500..600).contains(&status) {
            let wait = retry_after
                .map(Duration::from_secs)
                .unwrap_or(self.backoff)
                .min(Duration::from_millis(self.cfg.max_backoff_ms));
            self.backoff = (self.backoff * 2).min(Duration::from_millis(self.cfg.max_backoff_ms));
            log(
                Level::Warn,
                &format!("{} answered {status}; retrying in {wait:?}", self.cfg.url),
            );
            self.retry_at = Some(Instant::now() + wait);
            return Ok(Poll::idle());
        }
        if status != 200 {
            return Err(format!(
                "{} answered {status}: {}",
                self.cfg.url,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        self.backoff = Duration::from_millis(self.cfg.backoff_ms);
        let page: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("the page is no JSON: {e}"))?;
        let rows = page
            .get(&self.cfg.items)
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("the page has no array {:?}", self.cfg.items))?;
        if rows.len() > limit as usize {
            return Err(format!("asked for {limit} rows, got {}", rows.len()));
        }
        let next = match page.get(&self.cfg.next) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        if rows.is_empty() {
            if next.is_some() && next != self.cursor {
                self.cursor = next.clone();
            }
            return Ok(Poll::idle());
        }
        let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        let cursor = next
            .ok_or_else(|| format!("a page of rows without a next cursor ({:?})", self.cfg.next))?;
        self.cursor = Some(cursor.clone());
        Ok(Poll::batch(Batch::json_lines(lines.join("\n"))).checkpoint(cursor))
    }
}

impl HttpPoll {
    /// GET `path` (with its query): status, `Retry-After` in seconds, body.
    fn get(&self, path: &str) -> Result<(u16, Option<u64>, Vec<u8>), String> {
        let headers = Fields::new();
        for (k, v) in &self.cfg.headers {
            headers
                .append(k, v.as_bytes())
                .map_err(|e| format!("header {k}: {e:?}"))?;
        }
        let req = OutgoingRequest::new(headers);
        req.set_method(&Method::Get).map_err(|()| "method")?;
        req.set_scheme(Some(if self.target.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|()| "scheme")?;
        req.set_authority(Some(&self.target.authority))
            .map_err(|()| "authority")?;
        req.set_path_with_query(Some(path)).map_err(|()| "path")?;
        let options = RequestOptions::new();
        let ns = Duration::from_millis(self.cfg.timeout_ms).as_nanos() as u64;
        let _ = options.set_connect_timeout(Some(ns));
        let _ = options.set_first_byte_timeout(Some(ns));
        let _ = options.set_between_bytes_timeout(Some(ns));
        let body = req.body().map_err(|()| "body")?;
        let pending = outgoing_handler::handle(req, Some(options)).map_err(|e| refused(&e))?;
        OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
        pending.subscribe().block();
        let resp: IncomingResponse = pending
            .get()
            .ok_or("no response")?
            .map_err(|()| "the response was taken twice")?
            .map_err(|e| refused(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok());
        let incoming = resp.consume().map_err(|()| "consume")?;
        let mut stream = incoming.stream().map_err(|()| "stream")?;
        let mut out = Vec::new();
        stream
            .read_to_end(&mut out)
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok((status, retry_after, out))
    }
}

/// A request error, named plainly when the agent refused it.
fn refused(e: &ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => {
            "the agent refused the request: no allow_http grant covers it".into()
        }
        other => format!("request failed: {other:?}"),
    }
}

fn parse_url(url: &str) -> Result<Target, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("url {url:?} must start with http:// or https://"));
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() {
        return Err(format!("url {url:?} has no host"));
    }
    Ok(Target {
        https,
        authority: authority.to_string(),
        path: path.to_string(),
    })
}

/// Percent-encode a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

sluice_plugin::export_source!(HttpPoll);

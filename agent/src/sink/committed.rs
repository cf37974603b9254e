//! Behind a Kafka sink, where the lake stands. The brokers' acknowledgements say a batch is
//! in Kafka, not in the lake, so the lane never tells the stream's connectors anything
//! (`connector.committed`). With `sink.committed_api` the agent asks the processor's API
//! instead (`GET /api/committed?stream=S&agent=A`), every `committed_interval`, and passes
//! on each new checkpoint the lake holds: the checkpoint of this agent's newest batch in the
//! table, which the lake holds with every batch before it.

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use sluice_ops::client::Endpoint;
use tokio::sync::watch;

use super::config::KafkaSinkConfig;
use super::lane::CommittedTx;

/// Longest a connect, a read or a write may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// The processor's API, as the Kafka sink's config names it.
pub struct CommittedApi {
    authority: String,
    token: Option<String>,
    interval: Duration,
    agent: String,
}

/// `host:port` of an `http://host:port` URL (a trailing `/` allowed).
pub fn authority(url: &str) -> Option<&str> {
    let a = url.strip_prefix("http://")?.trim_end_matches('/');
    let (host, port) = a.rsplit_once(':')?;
    (!host.is_empty() && !a.contains(['/', '@', '?', '#']) && port.parse::<u16>().is_ok())
        .then_some(a)
}

impl CommittedApi {
    /// The API of `cfg` for agent `agent`, if configured (its token file read now).
    pub fn new(agent: &str, cfg: &KafkaSinkConfig) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(url) = &cfg.committed_api else {
            return Ok(None);
        };
        let authority = authority(url)
            .ok_or_else(|| anyhow!("sink.committed_api {url:?}: write http://host:port"))?;
        let token = match &cfg.committed_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| {
                        format!("cannot read sink.committed_token_file {}", p.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Some(Arc::new(CommittedApi {
            authority: authority.to_string(),
            token,
            interval: cfg.committed_interval,
            agent: agent.to_string(),
        })))
    }

    /// Ask until `stop`, telling `tx` each new checkpoint the lake holds for `stream`.
    pub async fn follow(
        self: Arc<Self>,
        stream: Arc<str>,
        tx: CommittedTx,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failing = false;
        while !*stop.borrow() {
            match self.ask(&stream).await {
                Ok(checkpoint) => {
                    if failing {
                        tracing::info!(%stream, api = %self.authority, "the processor's API answers again");
                    }
                    failing = false;
                    if checkpoint.is_some() && *tx.borrow() != checkpoint {
                        tx.send_replace(checkpoint);
                    }
                }
                Err(e) => {
                    // Once per spell of failures: it is asked again and again.
                    if !failing {
                        tracing::warn!(%stream, api = %self.authority, "cannot learn what the lake holds: {e:#}");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// The checkpoint of this agent's newest batch in the table of `stream` (`None` while
    /// the table or the agent's batches are not there yet).
    async fn ask(self: &Arc<Self>, stream: &str) -> anyhow::Result<Option<String>> {
        // Agent ids and stream names are of letters, digits, `_` and `-`: nothing to escape.
        let path = format!("/api/committed?stream={stream}&agent={}", self.agent);
        let me = self.clone();
        let (status, body) = tokio::task::spawn_blocking(move || {
            // Resolved at each ask, so a processor that moves is found again; the address
            // is the Host sent, which the endpoint admits without `api.hosts`.
            let addr = me
                .authority
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| anyhow!("{} resolves to no address", me.authority))?;
            let endpoint = Endpoint::new(addr, me.token.clone()).with_timeout(TIMEOUT);
            anyhow::Ok(endpoint.get(&path, MAX_ANSWER)?)
        })
        .await??;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            let said: String = body.chars().take(200).collect();
            return Err(anyhow!("{status}: {said}"));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            checkpoint: Option<String>,
        }
        let a: Answer = serde_json::from_str(&body).context("an answer that is not the API's")?;
        Ok(a.checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_host_and_port_urls_name_the_api() {
        assert_eq!(authority("http://proc:9090"), Some("proc:9090"));
        assert_eq!(authority("http://10.0.0.5:9090/"), Some("10.0.0.5:9090"));
        assert_eq!(authority("http://[::1]:9090"), Some("[::1]:9090"));
        for bad in [
            "https://proc:9090",
            "http://proc",
            "http://proc:x",
            "http://proc:9090/api",
            "http://u@proc:9090",
            "http://:9090",
            "proc:9090",
        ] {
            assert_eq!(authority(bad), None, "{bad}");
        }
    }
}

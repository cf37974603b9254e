//! A minimal client for a running agent's own endpoint, for `top` and `tap`: plain HTTP/1.0
//! GETs, the body delimited by the end of the connection (which also lets `tap` stream).

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::config::AgentConfig;

/// How `top` and `tap` reach a running agent.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The running agent's config file (its `[api] listen` is where to ask).
    #[arg(short, long, required_unless_present = "url")]
    pub config: Option<PathBuf>,
    /// The running agent's endpoint, `host:port` (instead of --config).
    #[arg(long, conflicts_with = "config")]
    pub url: Option<String>,
    /// A bearer token with the `read` and `metrics` roles (`sluice-agent token`).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Where a running agent answers.
pub struct Api {
    addr: SocketAddr,
    token: Option<String>,
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.addr)
    }
}

impl Api {
    /// The endpoint named by `url` (`host:port`, `http://` optional), or else the `[api]
    /// listen` of the agent config at `config` (an unspecified address means this host).
    pub fn locate(target: &Target) -> anyhow::Result<Self> {
        let addr = match (target.url.as_deref(), target.config.as_deref()) {
            (Some(url), _) => {
                let hostport = url.trim_start_matches("http://").trim_end_matches('/');
                hostport
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve {hostport}"))?
                    .next()
                    .with_context(|| format!("{hostport} resolves to no address"))?
            }
            (None, Some(path)) => {
                let cfg = AgentConfig::load(path)?;
                let api = cfg.api.with_context(|| {
                    format!(
                        "{} has no [api] section: the agent serves no endpoint to ask",
                        path.display()
                    )
                })?;
                let mut addr = api.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                addr
            }
            (None, None) => anyhow::bail!("give --config or --url"),
        };
        Ok(Self {
            addr,
            token: target.token.clone(),
        })
    }

    /// GET `path`: the status and the whole body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (status, mut body) = self.open(path)?;
        let mut text = String::new();
        body.read_to_string(&mut text)
            .with_context(|| format!("reading {self}{path}"))?;
        Ok((status, text))
    }

    /// GET `path`: the status, and the body to read as it comes.
    pub fn open(&self, path: &str) -> anyhow::Result<(u16, BufReader<TcpStream>)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .with_context(|| format!("cannot reach the agent at {self} (is it running?)"))?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n{auth}\r\n",
            self.addr
        )
        .with_context(|| format!("cannot ask {self}"))?;
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line)
            .with_context(|| format!("no answer from {self}"))?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("{self} answered {status_line:?}, not HTTP"))?;
        // Skip the headers.
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
                break;
            }
        }
        Ok((status, r))
    }
}

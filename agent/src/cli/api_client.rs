//! Where `top` and `tap` find a running agent's endpoint (read with
//! [`sluice_ops::client::Endpoint`]).

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use anyhow::Context;
use sluice_ops::client::Endpoint;

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
pub type Api = Endpoint;

/// The agent's endpoint named by `url` (`host:port`, `http://` optional), or else the
/// `[api] listen` of the agent config at `config` (an unspecified address means this host).
pub fn locate(target: &Target) -> anyhow::Result<Api> {
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
    Ok(Endpoint::new(addr, target.token.clone()))
}

//! Network grants: what a plugin may reach, enforced by the host. Nothing is allowed by
//! default; `allow_tcp` and `allow_http` grant connections one host and port (and for HTTP
//! one path prefix) at a time.
//!
//! | file | job |
//! |---|---|
//! | `grants.rs` | `allow_tcp` and `allow_http` entries, parsed and matched |
//! | `resolve.rs` | names resolved for grants and plugins alike: `[network] hosts`, then DNS |
//! | `sockets.rs` | `wasi:sockets` held to the grants: connects checked against the names' addresses now, lookups of granted names only, no UDP or listening |
//! | `io.rs` | every wait of a networked plugin bounded by `network_timeout`, TCP bytes counted |
//! | `http.rs` | `wasi:http` requests filtered by `allow_http`, sent by the host over its TLS |
//!
//! A connect is allowed only to an address that a granted name resolves to at that moment,
//! on the granted port: a plugin cannot reach another host by resolving a name of its own,
//! and a name that moves is followed. Lookups of names no grant mentions are refused too,
//! so a plugin cannot leak data through DNS queries.

mod grants;
mod http;
mod io;
mod resolve;
mod sockets;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;

pub use grants::{Grants, HttpGrant, TcpGrant};
pub use http::{Http, Tls};
pub use io::{BoundedIo, NetTimeout};
pub use resolve::Resolver;
pub(crate) use sockets::{addr_check, link_sockets};

use crate::telemetry::Metrics;

/// `[network]`: how the host serves plugins' network grants (every plugin alike).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Names answered before DNS, like `/etc/hosts`: `hosts = { "db.internal" =
    /// "10.0.0.5" }`. For grant checks and plugins' own lookups alike.
    #[serde(default)]
    pub hosts: BTreeMap<String, IpAddr>,
    /// PEM file of CA certificates that HTTPS requests of plugins trust (beside the
    /// system's roots, unless `system_roots = false`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Whether HTTPS requests trust the system's root certificates.
    #[serde(default = "yes")]
    pub system_roots: bool,
}

fn yes() -> bool {
    true
}

/// The agent-wide half of network grants: the resolver and the TLS roots.
#[derive(Clone)]
pub struct Network {
    /// Names for grant checks and plugins' lookups.
    pub resolver: Resolver,
    /// The TLS client of plugins' HTTPS requests.
    pub tls: Tls,
}

impl Network {
    /// From `[network]`; a CA file that does not load is an error.
    pub fn new(cfg: &NetworkConfig) -> anyhow::Result<Self> {
        Ok(Self {
            resolver: Resolver::new(&cfg.hosts),
            tls: Tls::new(cfg.ca.as_deref(), cfg.system_roots)?,
        })
    }
}

/// The most distinct targets a plugin's refusals are labelled with in metrics; more are
/// counted as `other` (a plugin trying every port must not grow the metrics without end).
const MAX_REFUSED_TARGETS: usize = 16;
/// The most refusals a plugin's meter remembers for `plugin check`.
const MAX_REMEMBERED: usize = 64;
/// The longest a refusal's target is kept, in bytes: a plugin names it.
const MAX_TARGET: usize = 128;
/// The most TCP sockets an instance may hold open at once: each is a file descriptor of
/// the agent's.
pub const MAX_SOCKETS: usize = 64;

/// A target a plugin named, made safe for a metric label and a log line: at most
/// [`MAX_TARGET`] bytes of `[A-Za-z0-9.:_/[]-]`, anything else as `_`.
fn clean(target: &str) -> String {
    let mut out = String::with_capacity(target.len().min(MAX_TARGET));
    for c in target.chars() {
        if out.len() >= MAX_TARGET {
            out.push('~');
            break;
        }
        out.push(
            if c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '/' | '[' | ']' | '-') {
                c
            } else {
                '_'
            },
        );
    }
    out
}

/// Where a plugin's network use is counted: metrics (when the agent runs) and a short
/// list of refusals (what `plugin check` shows as missing grants).
#[derive(Clone)]
pub struct Meter {
    plugin: Arc<str>,
    metrics: Option<Arc<Metrics>>,
    /// Bytes in and out (taken from `metrics` once; every read and write adds to them).
    bytes: Option<(Counter, Counter)>,
    refused: Arc<Mutex<Refused>>,
}

#[derive(Default)]
struct Refused {
    targets: HashSet<String>,
    kept: BTreeSet<String>,
}

impl Meter {
    /// A meter for `plugin`, counting into `metrics` if given.
    pub fn new(plugin: Arc<str>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            bytes: metrics.as_ref().map(|m| m.plugin_network_bytes(&plugin)),
            plugin,
            metrics,
            refused: Arc::default(),
        }
    }

    /// Bytes received.
    pub fn bytes_in(&self, n: usize) {
        if let Some((counter, _)) = &self.bytes {
            counter.inc_by(n as u64);
        }
    }

    /// Bytes sent.
    pub fn bytes_out(&self, n: usize) {
        if let Some((_, counter)) = &self.bytes {
            counter.inc_by(n as u64);
        }
    }

    /// A refused `kind` (`tcp`, `udp`, `listen`, `dns`, `http`) of `target`: logged,
    /// counted, remembered.
    pub fn refused(&self, kind: &'static str, target: &str) {
        let target = clean(target);
        let target = target.as_str();
        let label = {
            let Ok(mut r) = self.refused.lock() else {
                return;
            };
            let first = !r.targets.contains(target);
            if first && r.targets.len() < MAX_REFUSED_TARGETS {
                r.targets.insert(target.to_string());
            }
            if r.kept.len() < MAX_REMEMBERED {
                r.kept.insert(format!("{kind} {target}"));
            }
            if r.targets.contains(target) {
                if first {
                    tracing::warn!(plugin = %self.plugin, kind, target, "refused a network use no grant covers");
                }
                target.to_string()
            } else {
                "other".to_string()
            }
        };
        if let Some(m) = &self.metrics {
            m.plugin_network_refused(&self.plugin, kind, &label);
        }
    }

    /// A wait cut by `network_timeout`.
    pub fn timed_out(&self) {
        if let Some(m) = &self.metrics {
            m.plugin_network_timeout(&self.plugin);
        }
    }

    /// The refusals so far, `kind target` each (at most 64).
    pub fn refusals(&self) -> Vec<String> {
        self.refused
            .lock()
            .map(|r| r.kept.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What a networked instance shares between its host calls.
pub struct NetShared {
    /// What the plugin may reach.
    pub grants: Grants,
    /// The agent's resolver and TLS roots.
    pub network: Network,
    /// Where its network use is counted.
    pub meter: Meter,
    /// The longest any one wait (connect, read, write, poll) may take.
    pub timeout: Duration,
}

/// A store's network state: its grants (none for most plugins), the current call's
/// deadline and which streams are TCP connections (their bytes are counted).
#[derive(Default)]
pub struct NetState {
    /// The plugin's grants; none for a plugin granted no network.
    pub shared: Option<Arc<NetShared>>,
    /// When the current call's time budget ends: no wait goes past it either.
    pub deadline: Option<Instant>,
    pub(crate) tcp_streams: HashSet<u32>,
    /// The TCP sockets it made (some may be gone): at most [`MAX_SOCKETS`] live ones.
    pub(crate) tcp_sockets: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_ops::ApiMetrics;

    #[test]
    fn refusals_are_labelled_with_at_most_sixteen_clean_targets_then_other() {
        let metrics = Arc::new(Metrics::default());
        let meter = Meter::new("p".into(), Some(metrics.clone()));
        meter.refused(
            "dns",
            "x\"} 1\nsluice_agent_plugin_failed{plugin=\"q\"} 1\n#",
        );
        for port in 0..40 {
            meter.refused("tcp", &format!("10.0.0.1:{port}"));
        }
        meter.refused("dns", &"a".repeat(10_000));
        let text = metrics.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sluice_agent_plugin_network_refused_total{"))
            .collect();
        // 16 targets (the injection attempt, cleaned, and 15 ports), then `other` for the
        // rest of the ports and for the long name.
        assert_eq!(lines.len(), 18, "{lines:?}");
        for other in [
            r#"kind="tcp",target="other"} 25"#,
            r#"kind="dns",target="other"} 1"#,
        ] {
            assert!(
                lines.iter().any(|l| l.contains(other)),
                "{other}: {lines:?}"
            );
        }
        assert!(
            !text.contains("sluice_agent_plugin_failed{plugin=\"q\"}"),
            "no injected series"
        );
        assert!(lines.iter().all(|l| l.len() < 300), "{lines:?}");
        assert!(
            meter
                .refusals()
                .iter()
                .all(|r| r.len() <= 4 + MAX_TARGET + 1)
        );
    }
}

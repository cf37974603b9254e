//! Name resolution for plugins and their grants: `[network] hosts` first (like
//! `/etc/hosts`, and how tests point a name anywhere), then the system's resolver.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Resolves names for grant checks and for plugins' own lookups, the same way for both.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    hosts: Arc<BTreeMap<String, IpAddr>>,
}

impl Resolver {
    /// A resolver that answers `hosts` (lower-case names) itself.
    pub fn new(hosts: &BTreeMap<String, IpAddr>) -> Self {
        Self {
            hosts: Arc::new(
                hosts
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), *v))
                    .collect(),
            ),
        }
    }

    /// The address `[network] hosts` gives `name`, if any.
    pub fn pinned(&self, name: &str) -> Option<IpAddr> {
        self.hosts
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .copied()
    }

    /// The addresses of `name` now: an IP address is itself.
    pub async fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip.to_canonical()]);
        }
        if let Some(ip) = self.pinned(name) {
            return Ok(vec![ip]);
        }
        Ok(tokio::net::lookup_host((name, 0))
            .await?
            .map(|a| a.ip().to_canonical())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pinned_names_and_addresses_resolve_without_dns() {
        let r = Resolver::new(&BTreeMap::from([(
            "DB.test".to_string(),
            "127.0.0.7".parse().expect("ip"),
        )]));
        assert_eq!(
            r.resolve("db.test").await.expect("pinned"),
            ["127.0.0.7".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            r.resolve("::ffff:10.0.0.1").await.expect("literal"),
            ["10.0.0.1".parse::<IpAddr>().expect("ip")]
        );
        assert!(
            r.resolve("localhost")
                .await
                .expect("system")
                .iter()
                .all(|ip| ip.is_loopback())
        );
    }
}

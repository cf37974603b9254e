//! Which streams each agent may write (`[access]`), over QUIC and Kafka alike. Agents are
//! identified by the common name of their client certificate, so this is authorisation on
//! top of mutual TLS (and, on Kafka, of the batch's signature). Nothing is granted unless
//! the config says so.

use std::collections::BTreeMap;

use sluice_ops::config::Invalid;

use crate::receive::AccessConfig;

/// Why a lane or a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// `[access]` grants nothing at all: neither rules nor `allow_all`.
    #[error(
        "the processor grants no streams: add [access.allow] rules (or access.allow_all = true)"
    )]
    NoRules,
    /// The agent, named here, has no rules of its own and there is no `*` rule.
    #[error("agent {0:?} is not listed in the processor's [access.allow]")]
    UnknownAgent(String),
    /// The agent has rules, but no pattern of them matches the stream.
    #[error("agent {agent:?} may not write stream {stream:?} (see [access.allow])")]
    Stream {
        /// The agent, as its certificate names it.
        agent: String,
        /// The stream it asked to write.
        stream: String,
    },
}

impl Denied {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::NoRules => "no_rules",
            Denied::UnknownAgent(_) => "agent_not_allowed",
            Denied::Stream { .. } => "stream_not_allowed",
        }
    }
}

/// Stream permissions per agent.
#[derive(Debug, Clone)]
pub enum Access {
    /// Every agent the CA certified may write every stream (`allow_all = true`).
    All,
    /// Agent id (or `*` for every agent) → stream patterns; empty refuses everything.
    Rules(BTreeMap<String, Vec<String>>),
}

impl Access {
    /// The rules of `[access]`, where `*` in a pattern matches any run of characters; a
    /// refusal names the config key at fault.
    pub fn new(config: &AccessConfig) -> Result<Self, Invalid> {
        if config.allow_all {
            if !config.allow.is_empty() {
                return Err(Invalid::new(
                    "access.allow_all",
                    "access.allow_all = true grants everything access.allow would: keep one",
                ));
            }
            return Ok(Self::All);
        }
        for (agent, patterns) in &config.allow {
            let key = format!("access.allow.{agent}");
            if agent != "*" {
                sluice_protocol::validate_name("agent", agent)
                    .map_err(|e| Invalid::new(&key, e.to_string()))?;
            }
            for p in patterns {
                let plain = p.replace('*', "a");
                sluice_protocol::validate_name("stream pattern", &plain)
                    .map_err(|e| Invalid::new(&key, format!("pattern {p:?}: {e}")))?;
            }
        }
        Ok(Self::Rules(config.allow.clone()))
    }

    /// Say at start what is granted: nothing, or everything, are both worth a warning.
    pub fn log(&self) {
        match self {
            Access::All => tracing::warn!(
                "access.allow_all = true: every agent with a certificate from the CA may write \
                 every stream, and create its table"
            ),
            Access::Rules(rules) if rules.is_empty() => tracing::warn!("{}", Denied::NoRules),
            Access::Rules(rules) => tracing::info!(agents = rules.len(), "stream permissions"),
        }
    }

    /// May `agent` write `stream`?
    pub fn check(&self, agent: &str, stream: &str) -> Result<(), Denied> {
        let rules = match self {
            Access::All => return Ok(()),
            Access::Rules(rules) if rules.is_empty() => return Err(Denied::NoRules),
            Access::Rules(rules) => rules,
        };
        let own = rules.get(agent);
        let any = rules.get("*");
        if own.is_none() && any.is_none() {
            return Err(Denied::UnknownAgent(agent.to_string()));
        }
        let allowed = own
            .into_iter()
            .chain(any)
            .flatten()
            .any(|p| wildcard_match(p, stream));
        if allowed {
            Ok(())
        } else {
            Err(Denied::Stream {
                agent: agent.to_string(),
                stream: stream.to_string(),
            })
        }
    }
}

/// Match `text` against `pattern`, where `*` stands for any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(rules: &[(&str, &[&str])]) -> Access {
        Access::new(&AccessConfig {
            allow: rules
                .iter()
                .map(|(a, ps)| (a.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect(),
            allow_all: false,
        })
        .unwrap()
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("cpu", "cpu"));
        assert!(!wildcard_match("cpu", "cpu2"));
        assert!(wildcard_match("cpu*", "cpu_load"));
        assert!(wildcard_match("*_raw", "logs_raw"));
        assert!(!wildcard_match("*_raw", "logs_raw2"));
        assert!(wildcard_match("a*b*c", "a-b-b-c"));
        assert!(!wildcard_match("ab*ba", "aba"));
        assert!(wildcard_match("*", "anything"));
    }

    #[test]
    fn agents_get_their_streams_and_the_shared_ones() {
        let a = access(&[("edge-01", &["telemetry", "cpu_*"]), ("*", &["shared"])]);
        assert_eq!(a.check("edge-01", "telemetry"), Ok(()));
        assert_eq!(a.check("edge-01", "cpu_load"), Ok(()));
        assert_eq!(a.check("edge-01", "shared"), Ok(()));
        assert_eq!(a.check("edge-02", "shared"), Ok(()));
        assert_eq!(
            a.check("edge-02", "telemetry").unwrap_err().reason(),
            "stream_not_allowed"
        );
        let strict = access(&[("edge-01", &["telemetry"])]);
        assert_eq!(
            strict.check("edge-02", "telemetry").unwrap_err().reason(),
            "agent_not_allowed"
        );
        assert!(
            Access::new(&AccessConfig {
                allow: [("edge 01".into(), vec![])].into(),
                allow_all: false
            })
            .is_err()
        );
    }

    #[test]
    fn nothing_is_granted_unless_the_config_says_so() {
        let none = Access::new(&AccessConfig::default()).unwrap();
        assert_eq!(none.check("edge-01", "telemetry"), Err(Denied::NoRules));
        let all = Access::new(&AccessConfig {
            allow: BTreeMap::new(),
            allow_all: true,
        })
        .unwrap();
        assert_eq!(all.check("anyone", "anything"), Ok(()));
        // Both at once is a mistake worth naming.
        assert!(
            Access::new(&AccessConfig {
                allow: [("edge-01".into(), vec!["t".into()])].into(),
                allow_all: true
            })
            .is_err()
        );
    }
}

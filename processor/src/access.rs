//! Which streams each agent may write (`[quic.allow]`). Agents are identified by the common
//! name of their client certificate, so this is authorisation on top of mutual TLS.

use std::collections::BTreeMap;

/// Why a lane was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("agent {0:?} is not listed in the processor's [quic.allow]")]
    UnknownAgent(String),
    #[error("agent {agent:?} may not write stream {stream:?} (see [quic.allow])")]
    Stream { agent: String, stream: String },
}

impl Denied {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::UnknownAgent(_) => "agent_not_allowed",
            Denied::Stream { .. } => "stream_not_allowed",
        }
    }
}

/// Stream permissions per agent; `None` lets every certified agent write every stream.
#[derive(Debug, Clone, Default)]
pub struct Access {
    rules: Option<BTreeMap<String, Vec<String>>>,
}

impl Access {
    /// Rules from config: agent id (or `*` for every agent) → stream patterns, where `*`
    /// matches any run of characters.
    pub fn new(rules: Option<BTreeMap<String, Vec<String>>>) -> Result<Self, String> {
        if let Some(rules) = &rules {
            for (agent, patterns) in rules {
                if agent != "*" {
                    sluice_protocol::validate_name("agent", agent)
                        .map_err(|e| format!("quic.allow.{agent}: {e}"))?;
                }
                for p in patterns {
                    let plain = p.replace('*', "a");
                    sluice_protocol::validate_name("stream pattern", &plain)
                        .map_err(|e| format!("quic.allow.{agent}: pattern {p:?}: {e}"))?;
                }
            }
        }
        Ok(Self { rules })
    }

    /// May `agent` write `stream`?
    pub fn check(&self, agent: &str, stream: &str) -> Result<(), Denied> {
        let Some(rules) = &self.rules else {
            return Ok(());
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
        Access::new(Some(
            rules
                .iter()
                .map(|(a, ps)| (a.to_string(), ps.iter().map(|p| p.to_string()).collect()))
                .collect(),
        ))
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
        assert_eq!(Access::default().check("anyone", "anything"), Ok(()));
        assert!(Access::new(Some([("edge 01".into(), vec![])].into())).is_err());
    }
}

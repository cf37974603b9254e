//! What one agent may hold of the QUIC receiver at once: connections, lanes, and bytes of
//! batches read and not yet settled by the lander. A certified agent gone wrong (or its
//! stolen key) can then only use its share: more connections or lanes are refused with a
//! reason, and past its bytes its lanes stop being read (QUIC flow control holds it back).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, from `[quic]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one agent may have open (`quic.max_connections_per_agent`).
    pub connections: usize,
    /// Lanes one agent may have open, over all its connections (`quic.max_lanes_per_agent`).
    pub lanes: usize,
    /// Bytes of one agent's batches read and not yet settled
    /// (`quic.max_inflight_bytes_per_agent`).
    pub inflight_bytes: usize,
}

/// A share that is full.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Exceeded {
    /// The agent has as many connections open as it may; the new one is refused.
    #[error("agent {agent:?} already has {limit} connections (quic.max_connections_per_agent)")]
    Connections {
        /// The agent, as its certificate names it.
        agent: String,
        /// [`Limits::connections`].
        limit: usize,
    },
    /// The agent has as many lanes open as it may; the new one is refused.
    #[error("agent {agent:?} already has {limit} lanes open (quic.max_lanes_per_agent)")]
    Lanes {
        /// The agent, as its certificate names it.
        agent: String,
        /// [`Limits::lanes`].
        limit: usize,
    },
}

impl Exceeded {
    /// The metric reason; not worth retrying until the agent closes something.
    pub fn reason(&self) -> &'static str {
        match self {
            Exceeded::Connections { .. } => "too_many_connections",
            Exceeded::Lanes { .. } => "too_many_lanes",
        }
    }
}

#[derive(Default)]
struct Held {
    connections: usize,
    lanes: usize,
    bytes: Option<Arc<Semaphore>>,
}

/// Every connected agent's share; an agent with nothing open holds no entry, so this is
/// bounded by the agents connected now.
pub struct Quotas {
    limits: Limits,
    agents: Mutex<HashMap<Arc<str>, Held>>,
}

/// A connection or lane counted against its agent until dropped.
pub struct Slot {
    quotas: Arc<Quotas>,
    agent: Arc<str>,
    lane: bool,
}

impl Quotas {
    /// No agent holds anything yet; each is held to `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            agents: Mutex::new(HashMap::new()),
        })
    }

    fn take(self: &Arc<Self>, agent: &Arc<str>, lane: bool) -> Result<Slot, Exceeded> {
        let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
        let held = agents.entry(agent.clone()).or_default();
        let limit = if lane {
            self.limits.lanes
        } else {
            self.limits.connections
        };
        let count = if lane {
            &mut held.lanes
        } else {
            &mut held.connections
        };
        if *count < limit {
            *count += 1;
            return Ok(Slot {
                quotas: self.clone(),
                agent: agent.clone(),
                lane,
            });
        }
        let agent = agent.to_string();
        Err(if lane {
            Exceeded::Lanes { agent, limit }
        } else {
            Exceeded::Connections { agent, limit }
        })
    }

    /// Count one more connection of `agent`.
    pub fn connection(self: &Arc<Self>, agent: &Arc<str>) -> Result<Slot, Exceeded> {
        self.take(agent, false)
    }

    /// Count one more lane of `agent`.
    pub fn lane(self: &Arc<Self>, agent: &Arc<str>) -> Result<Slot, Exceeded> {
        self.take(agent, true)
    }

    /// Hold `bytes` of `agent`'s in-flight share until the permit is dropped; waits while
    /// the share is spent. A batch larger than the whole share takes all of it.
    pub async fn bytes(&self, agent: &Arc<str>, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
            let held = agents.entry(agent.clone()).or_default();
            held.bytes
                .get_or_insert_with(|| Arc::new(Semaphore::new(self.limits.inflight_bytes)))
                .clone()
        };
        let n = bytes.clamp(1, self.limits.inflight_bytes);
        semaphore
            .acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .await
            .ok()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut agents = self
            .quotas
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = agents.get_mut(&self.agent) {
            let count = if self.lane {
                &mut held.lanes
            } else {
                &mut held.connections
            };
            *count = count.saturating_sub(1);
            let idle = held.connections == 0
                && held.lanes == 0
                && held
                    .bytes
                    .as_ref()
                    .is_none_or(|s| s.available_permits() == self.quotas.limits.inflight_bytes);
            if idle {
                agents.remove(&self.agent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_agent_gets_its_share_and_gets_it_back() {
        let q = Quotas::new(Limits {
            connections: 2,
            lanes: 3,
            inflight_bytes: 100,
        });
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let c1 = q.connection(&a).expect("first");
        let _c2 = q.connection(&a).expect("second");
        assert_eq!(
            q.connection(&a).err().map(|e| e.reason()),
            Some("too_many_connections")
        );
        // Another agent's share is its own.
        let _b1 = q.connection(&b).expect("b");
        drop(c1);
        let _c3 = q.connection(&a).expect("a slot came back");
        let lanes: Vec<_> = (0..3).map(|_| q.lane(&a).expect("lane")).collect();
        assert_eq!(q.lane(&a).err().map(|e| e.reason()), Some("too_many_lanes"));
        drop(lanes);
        // Bytes: a second batch waits until the first is settled.
        let first = q.bytes(&a, 80).await.expect("permit");
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), q.bytes(&a, 80)).await;
        assert!(waiting.is_err(), "past the share, reading waits");
        drop(first);
        let _second = q.bytes(&a, 80).await.expect("permit");
        // A batch bigger than the whole share takes all of it rather than waiting for ever.
        let _big = q.bytes(&b, 1_000).await.expect("permit");
    }
}

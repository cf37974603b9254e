//! Sinks: where batches leave the agent. One lane per stream ships what the stream's
//! write-ahead log holds, over QUIC to a processor or through Kafka.
//!
//! | file | job |
//! |---|---|
//! | `lane.rs` | the lane loop both transports share: window, resend, acks, backoff, drain |
//! | `quic.rs` | QUIC: one connection, a `Hello`/`Welcome` handshake per lane, acks after commit |
//! | `kafka.rs` | Kafka: an idempotent, gapless producer of signed messages, acks from brokers |
//! | `tls.rs` | the agent's mutual-TLS client and the signer of Kafka batches |
//! | `config.rs` | `[sink]` |

mod config;
mod kafka;
mod lane;
mod quic;
mod tls;

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{KafkaCompression, KafkaSinkConfig, QuicSinkConfig, SinkConfig};
pub use kafka::{KafkaShipper, RESERVED_OPTIONS};
pub use lane::{CommittedTx, Feedback, LaneLog, LaneSummary, ResumeTx};
pub use quic::QuicShipper;

use crate::telemetry::Metrics;

/// Where the lanes ship.
pub enum Sink {
    /// A processor, over QUIC.
    Quic(Arc<QuicShipper>),
    /// Kafka topics.
    Kafka(Arc<KafkaShipper>),
}

impl Sink {
    /// Set up the sink of agent `agent` (no connection is made yet).
    pub fn new(agent: &str, cfg: &SinkConfig, metrics: &Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(match cfg {
            SinkConfig::Quic(quic) => {
                let client = tls::client_config(&quic.ca, &quic.cert, &quic.key, quic.idle_timeout)
                    .context("cannot set up TLS for the QUIC sink")?;
                Sink::Quic(Arc::new(QuicShipper::new(
                    agent.to_string(),
                    quic.clone(),
                    client,
                    metrics.clone(),
                )?))
            }
            SinkConfig::Kafka(kafka) => Sink::Kafka(Arc::new(KafkaShipper::new(
                agent.to_string(),
                kafka.clone(),
            )?)),
        })
    }

    /// Start the lane of `stream` on `lanes`.
    pub fn spawn_lane(
        &self,
        lanes: &mut JoinSet<LaneSummary>,
        metrics: &Arc<Metrics>,
        stream: Arc<str>,
        log: LaneLog,
        feedback: Feedback,
        stop: watch::Receiver<bool>,
    ) {
        let metrics = metrics.clone();
        match self {
            Sink::Quic(s) => {
                lanes.spawn(lane::run(s.clone(), metrics, stream, log, feedback, stop))
            }
            Sink::Kafka(s) => {
                lanes.spawn(lane::run(s.clone(), metrics, stream, log, feedback, stop))
            }
        };
    }

    /// After the last lane: close connections politely.
    pub async fn close(&self) {
        if let Sink::Quic(s) = self {
            s.close().await;
        }
    }
}

//! Sinks: where batches leave the agent. One lane per stream ships what the stream's
//! write-ahead log holds, over QUIC to a processor or through Kafka.
//!
//! | file | job |
//! |---|---|
//! | `lane.rs` | the lane loop both transports share: window, resend, acks, backoff, drain |
//! | `quic.rs` | QUIC: one connection, a `Hello`/`Welcome` handshake per lane, acks after commit |
//! | `kafka.rs` | Kafka: an idempotent, gapless producer of signed messages, acks from brokers |
//! | `committed.rs` | behind Kafka, what the lake holds: asked of the processor's API |
//! | `tls.rs` | the agent's mutual-TLS client and the signer of Kafka batches |
//! | `config.rs` | `[sink]` |

mod committed;
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
    /// Kafka topics, and the processor's API to learn what the lake holds, if configured.
    Kafka(Arc<KafkaShipper>, Option<Arc<committed::CommittedApi>>),
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
            SinkConfig::Kafka(kafka) => Sink::Kafka(
                Arc::new(KafkaShipper::new(agent.to_string(), kafka.clone())?),
                committed::CommittedApi::new(agent, kafka)?,
            ),
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
            Sink::Kafka(s, api) => {
                // The lane's acknowledgements are the brokers': what the lake holds is
                // asked of the processor, if the config says where.
                let feedback = match api {
                    Some(api) => {
                        tokio::spawn(api.clone().follow(
                            stream.clone(),
                            feedback.committed,
                            stop.clone(),
                        ));
                        Feedback {
                            resume: feedback.resume,
                            committed: watch::channel(None).0,
                        }
                    }
                    None => feedback,
                };
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

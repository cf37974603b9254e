//! Receivers: where batches enter the processor, from agents over QUIC and from Kafka
//! topics, and the checks each passes before it reaches the lander.
//!
//! | file | job |
//! |---|---|
//! | `config.rs` | `[quic]`, `[kafka]` and `[access]` |
//! | `quic.rs` | the QUIC receiver: `Hello`/`Welcome`, batch frames in, acks out in order |
//! | `kafka/` | the Kafka receiver: a consumer group member landing agents' batches and JSON |
//! | `json_topic.rs` | plain JSON topics: lines to Arrow with the table's schema |
//! | `batch.rs` | a batch's Arrow IPC payload decoded and checked against its envelope |
//! | `admission.rs` | what a Kafka batch must pass: its agent's signature and permission |
//! | `signed.rs` | the signature on a Kafka batch, checked against the CA and its agent |
//! | `access.rs` | `[access]`: which agent may write which stream, deny by default |
//! | `quota.rs` | per-agent shares of connections, lanes and in-flight bytes |
//! | `tls.rs` | the receiver's mutual TLS and the agent certificate checks |
//! | `certs.rs` | the processor's CA: `certs init`, `issue`, `revoke` |

pub mod access;
pub mod admission;
pub mod batch;
pub mod certs;
mod config;
pub mod json_topic;
pub mod kafka;
pub mod quic;
pub mod quota;
pub mod signed;
pub mod tls;

pub use config::{
    AccessConfig, JsonTopicConfig, KAFKA_RESERVED_OPTIONS, KafkaConfig, QuicConfig, valid_topic,
};

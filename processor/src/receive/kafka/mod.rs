//! The Kafka receiver: one member of a consumer group, landing the batches agents' Kafka
//! sinks write.
//!
//! Exactly once without Kafka transactions:
//! - every table's snapshot summary carries, per partition, an offset below which the
//!   partition is entirely in the lake (see [`crate::land::inflight`]); when the group gives this
//!   processor a partition, it starts reading at the highest such mark over all tables;
//! - a batch is recognised as already landed by its (agent, stream, sequence), which the
//!   lander checks again under the commit, after any conflict, against the table as the
//!   catalog has it; two processors racing after a rebalance cannot both append it.
//!
//! Messages of plain JSON topics are landed in runs (see `run.rs`): each row is numbered by
//! its offset, so a run read again lands only the rows the table lacks.
//!
//! The consumer group's own committed offsets are kept up to date (the settled prefix of
//! each partition) so Kafka tools show the group's lag; they are only a fallback for
//! partitions no table has a mark for.
//!
//! The consumer runs on a thread of its own: librdkafka's rebalance callback must decide
//! the starting offsets before it returns, which takes a catalog read.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the receiver: consumer set up, group joined, thread started and stopped |
//! | `group.rs` | the consumer-group context: librdkafka's logs and errors, rebalances |
//! | `consume.rs` | the consume loop: messages read, batches handed over, verdicts settled |
//! | `decode.rs` | an agent's batch from a message: headers, signature, access, payload |
//! | `run.rs` | plain JSON messages gathered in runs and landed row by row |
//! | `dead_letters.rs` | messages that cannot land where they should, to the dead-letter table |
//! | `stall.rs` | partitions another member holds and does not move: rejoin the group |
//! | `testing.rs` | test helpers: a consume loop over a test lake, no broker; signed messages |

mod consume;
mod dead_letters;
mod decode;
mod group;
mod run;
mod stall;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer};

pub use decode::DecodeError;

use self::consume::ConsumeLoop;
use self::group::GroupContext;
use self::stall::Stall;
use crate::land::inflight::InFlight;
use crate::land::lander::Lander;
use crate::receive::KafkaConfig;
use crate::receive::json_topic::JsonTopic;
use crate::telemetry::metrics::Metrics;

/// A running Kafka receiver.
pub struct KafkaReceiver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaReceiver {
    /// Join the group and start consuming. The columns of JSON topics without a declared
    /// schema are read from their tables, if these exist.
    pub async fn start(
        cfg: &KafkaConfig,
        catalog: &dyn iceberg::Catalog,
        namespace: &str,
        lander: Lander,
        inflight: InFlight,
        metrics: Arc<Metrics>,
        admission: crate::receive::admission::Admission,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let mut json = HashMap::new();
        for (topic, j) in &cfg.json {
            let table = cfg.json_table(topic);
            let schema = match &j.schema {
                Some(columns) => Some(crate::receive::json_topic::declared_schema(columns)),
                None => crate::lake::load_if_exists(catalog, namespace, &table)
                    .await
                    .with_context(|| format!("cannot load table {namespace}.{table}"))?
                    .map(|t| crate::lake::table_user_schema(&t))
                    .transpose()
                    .with_context(|| format!("cannot read the columns of {namespace}.{table}"))?,
            };
            let policy = lander.schema_policy(&table);
            json.insert(topic.clone(), JsonTopic::new(table, schema, policy));
        }
        let runtime = tokio::runtime::Handle::current();
        let health = metrics.health.watch("kafka consumer", "messages");
        let broker_errors = Arc::new(AtomicBool::new(false));
        let ctx = GroupContext {
            lander: lander.clone(),
            inflight: inflight.clone(),
            runtime: runtime.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            broker_errors: broker_errors.clone(),
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &cfg.brokers)
            .set("group.id", &cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Eager rebalancing: a partition is given up entirely before anyone else
            // starts on it, and the rebalance callback below assigns with explicit offsets.
            .set("partition.assignment.strategy", "range,roundrobin")
            // A processor that dies is replaced this soon (Kafka's default is 45 s).
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Some brokers (tansu 0.6) hold every fetch this long even with data ready, and
            // return one batch: with librdkafka's 500 ms a partition reads about 5x slower. On
            // an idle topic it costs 100 small fetches a second.
            .set("fetch.wait.max.ms", "10")
            // A topic matching a `^` pattern is found within this long of its creation.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &cfg.options {
            client.set(k, v);
        }
        let consumer: BaseConsumer<GroupContext> = client
            .create_with_context(ctx)
            .context("cannot create the Kafka consumer")?;
        let topics: Vec<String> = cfg.topics.iter().chain(cfg.json.keys()).cloned().collect();
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .with_context(|| format!("cannot subscribe to {names:?}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let run = ConsumeLoop {
            consumer,
            lander,
            inflight,
            metrics,
            runtime,
            stop: stop.clone(),
            runs: HashMap::new(),
            waiting: Vec::new(),
            waiting_bytes: 0,
            paused: false,
            rewind_at: None,
            last_commit: Instant::now(),
            topics,
            json,
            admission,
            dead_letter_table: cfg.dead_letter_table.clone(),
            stalled_after: cfg.rejoin_when_stalled,
            stall: Stall::default(),
            health,
            broker_errors,
            health_checked: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || run.run())
            .context("cannot start the Kafka consumer thread")?;
        tracing::info!(brokers = %cfg.brokers, group = %cfg.group, topics = ?cfg.topics, json_topics = ?cfg.json.keys().collect::<Vec<_>>(), "consuming Kafka topics");
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop reading; wait (within `timeout`) for what was read to be settled, commit the
    /// group's offsets and leave the group. Call while the lander still commits.
    pub async fn stop(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || t.join());
            if tokio::time::timeout(timeout + Duration::from_secs(5), joined)
                .await
                .is_err()
            {
                tracing::warn!("the Kafka consumer did not stop in time");
            }
        }
    }
}

//! The consumer-group side of the Kafka receiver: librdkafka's logs and errors, and the
//! rebalance callback, which starts each assigned partition where the tables' marks (or
//! the group's committed offsets, whichever is later) say it is landed up to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::lake::marks::Partition;
use crate::land::inflight::InFlight;
use crate::land::lander::Lander;
use crate::telemetry::metrics::Metrics;

/// Decides where each assigned partition starts, from the tables' marks.
pub(super) struct GroupContext {
    pub(super) lander: Lander,
    pub(super) inflight: InFlight,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) metrics: Arc<Metrics>,
    /// The consumer's health: broker errors, until the brokers answer again.
    pub(super) health: sluice_ops::Watch,
    /// Set on a broker error: the consume loop then checks whether the brokers answer.
    pub(super) broker_errors: Arc<AtomicBool>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            _ => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // Mostly transient (a broker away): librdkafka reconnects by itself.
        tracing::warn!(target: "librdkafka", "{error}: {reason}");
        self.health.error(format!("{error}: {reason}"));
        self.broker_errors.store(true, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.kafka_rebalance("assign");
                let marks = self.runtime.block_on(self.lander.kafka_marks());
                let marks = match marks {
                    Ok(m) => Some(m),
                    Err(e) => {
                        // The group's committed offsets are settled ones, so starting from
                        // them is safe; it may only re-read (and skip) more.
                        tracing::error!(
                            "cannot read the tables' Kafka offsets, starting from the group's committed offsets: {e}"
                        );
                        None
                    }
                };
                // The group's committed offsets are settled prefixes (everything below is
                // in the lake), so the later of the two is safe. They matter when the last
                // commits of two tables each held the other's messages in flight: neither
                // table's mark then reaches the end, and only the group's offset does.
                let committed = consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(10))
                    .map_err(|e| tracing::warn!("cannot read the group's committed offsets: {e}"))
                    .ok();
                let mut started = Vec::new();
                for e in tpl.elements() {
                    let part: Partition = (e.topic().to_string(), e.partition());
                    let table = marks.as_ref().and_then(|m| m.offset(&part.0, part.1));
                    let group = committed.as_ref().and_then(|c| {
                        match c.find_partition(&part.0, part.1)?.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        }
                    });
                    started.push((part, table.max(group)));
                }
                for (part, start) in &started {
                    if let Some(o) = start {
                        let _ = tpl.set_partition_offset(&part.0, part.1, Offset::Offset(*o));
                    }
                    self.inflight.assign(part.clone(), *start);
                }
                tracing::info!(partitions = ?started, "assigned Kafka partitions (starting offsets from the tables)");
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!("cannot take the assigned partitions: {e}");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics.kafka_rebalance("revoke");
                for e in tpl.elements() {
                    self.inflight
                        .release(&(e.topic().to_string(), e.partition()));
                }
                tracing::info!(partitions = tpl.count(), "Kafka partitions revoked");
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!("cannot give up the revoked partitions: {e}");
                }
            }
            other => {
                tracing::error!("Kafka rebalance error: {other:?}");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!("committing the group's offsets failed (they are a hint only): {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Fixture, LOGS, json_message};
    use super::*;

    #[test]
    fn partitions_assigned_start_where_the_tables_marks_say_and_are_let_go_when_revoked() {
        let mut f = Fixture::new();
        let p0: Partition = (LOGS.to_string(), 0);
        let p1: Partition = (LOGS.to_string(), 1);
        f.inflight.assign(p0.clone(), Some(10));
        f.read((10..13).map(|o| json_message(o, br#"{"level":"x"}"#)));
        f.settle();
        // Another processor is given the partitions: it starts from the tables.
        f.inflight.release(&p0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(LOGS, 0);
        tpl.add_partition(LOGS, 1);
        let ctx = f.lp.consumer.context();
        ctx.rebalance(
            &f.lp.consumer,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS,
            &mut tpl,
        );
        let start = |p: &Partition| tpl.find_partition(&p.0, p.1).map(|e| e.offset());
        assert_eq!(start(&p0), Some(Offset::Offset(13)), "past what landed");
        assert_eq!(
            start(&p1),
            Some(Offset::Invalid),
            "no mark: the group's default"
        );
        assert!(f.inflight.epoch(&p0).is_some() && f.inflight.epoch(&p1).is_some());
        assert_eq!(f.inflight.settled(), vec![(p0.clone(), 13)]);
        let assigned = f.lp.consumer.assignment().expect("assignment");
        assert_eq!(assigned.count(), 2);
        assert_eq!(f.counter("kafka_rebalances_total{kind=\"assign\"}"), 1);

        ctx.rebalance(
            &f.lp.consumer,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS,
            &mut tpl,
        );
        assert_eq!(f.inflight.epoch(&p0), None, "no longer claimed");
        assert_eq!(f.inflight.epoch(&p1), None);
        assert_eq!(f.lp.consumer.assignment().expect("assignment").count(), 0);
        assert_eq!(f.counter("kafka_rebalances_total{kind=\"revoke\"}"), 1);
    }

    #[test]
    fn a_broker_error_makes_the_consumer_unready_and_has_the_loop_check_the_brokers() {
        let f = Fixture::new();
        assert!(f.metrics.health.ready().ok);
        f.lp.consumer.context().error(
            rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown),
            "127.0.0.1:9: connection refused",
        );
        assert!(f.lp.broker_errors.load(Ordering::Relaxed));
        let ready = f.metrics.health.ready();
        assert!(!ready.ok);
        assert!(
            ready
                .problems
                .iter()
                .any(|p| p.starts_with("kafka consumer") && p.contains("connection refused")),
            "{ready:?}"
        );
        // The loop's check clears it once the brokers answer.
        f.lp.health.recovered();
        assert!(f.metrics.health.ready().ok);
    }
}

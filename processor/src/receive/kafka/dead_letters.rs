//! The dead-letter table: messages that cannot land where they should (a batch that does
//! not decode or is refused, JSON that does not fit) are landed there raw, with the reason.

use rdkafka::message::{Message, OwnedMessage};

use super::consume::ConsumeLoop;
use super::run::{offset_envelope, partition_agent};
use crate::lake::marks::Partition;
use crate::land::lander::Origin;
use crate::receive::json_topic::{DeadLetter, dead_letter_batch};

impl ConsumeLoop {
    /// Land messages that cannot go where they should in the dead-letter table, raw, with
    /// the reasons: messages of one partition, in offset order. Their offsets are settled
    /// only once that is committed.
    ///
    /// Dead-letter rows are numbered by offset, like the rows of JSON topics, and a lane
    /// of them must arrive in offset order. Messages the lander `refused` are known only
    /// later than those dead-lettered as read, so they have a lane of their own.
    pub(super) fn dead_letter(&mut self, letters: Vec<(OwnedMessage, String)>, refused: bool) {
        let (Some((first, reason)), Some((last, _))) = (letters.first(), letters.last()) else {
            return;
        };
        tracing::warn!(
            topic = %first.topic(),
            partition = first.partition(),
            offsets = %format!("{}..={}", first.offset(), last.offset()),
            messages = letters.len(),
            table = %self.dead_letter_table,
            "messages sent to the dead-letter table; the first because: {reason}"
        );
        for (msg, reason) in &letters {
            self.metrics.kafka_dead_letter(msg.topic());
            tracing::debug!(topic = %msg.topic(), partition = msg.partition(), offset = msg.offset(), "dead letter: {reason}");
        }
        let rows: Vec<DeadLetter<'_>> = letters
            .iter()
            .map(|(msg, reason)| DeadLetter {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key(),
                value: msg.payload(),
                reason,
                timestamp_us: msg.timestamp().to_millis().map(|ms| ms * 1000),
            })
            .collect();
        let partition: Partition = (first.topic().to_string(), first.partition());
        let offsets: Vec<i64> = letters.iter().map(|(m, _)| m.offset()).collect();
        match dead_letter_batch(&rows) {
            Ok(batch) => {
                let mut agent = partition_agent(first);
                if refused {
                    agent.push_str("-refused");
                }
                let envelope =
                    offset_envelope(agent, &self.dead_letter_table, first, last.offset(), &batch);
                let bytes = letters
                    .iter()
                    .map(|(m, _)| m.payload().map_or(0, <[u8]>::len))
                    .sum();
                let origin = Origin::Rows { partition, offsets };
                self.submit(envelope, batch, bytes, origin, Vec::new());
            }
            Err(e) => {
                // Cannot happen with the fixed dead-letter columns; never lose it silently.
                tracing::error!(topic = %partition.0, partition = partition.1, ?offsets, "cannot build dead-letter rows, the messages are skipped: {e}");
                for o in offsets {
                    self.inflight.settle(&partition, o);
                }
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::testing::{AGENTS, DEAD_LETTERS, Fixture, SENT_AT_MS, message};
    use super::super::testing::{binaries, ints, texts};
    use super::*;
    use crate::lake::{AGENT_COLUMN, SEQ_COLUMN};

    fn letter(offset: i64, reason: &str) -> (OwnedMessage, String) {
        let value = format!("value {offset}").into_bytes();
        let key = Some(format!("key {offset}").into_bytes());
        (
            message(AGENTS, offset, key, value, None),
            reason.to_string(),
        )
    }

    /// The dead-letter rows: (offset, `_seq`, `_agent`, reason), in offset order.
    fn letters(f: &Fixture) -> Vec<(i64, i64, String, String)> {
        let rows = f.rows(DEAD_LETTERS);
        let mut out: Vec<_> = ints(&rows, "offset")
            .into_iter()
            .zip(ints(&rows, SEQ_COLUMN))
            .zip(texts(&rows, AGENT_COLUMN))
            .zip(texts(&rows, "reason"))
            .map(|(((o, s), a), r)| (o, s, a, r))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn dead_letters_land_raw_numbered_by_offset_and_those_the_lander_refused_on_a_lane_of_their_own()
     {
        let mut f = Fixture::new();
        let partition: Partition = (AGENTS.to_string(), 0);
        f.inflight.assign(partition.clone(), Some(3));
        for o in 3..7 {
            f.inflight.read(&partition, o);
        }
        f.lp.dead_letter(vec![letter(5, "bad five"), letter(6, "bad six")], false);
        f.settle();
        // Refused by the lander later than 5 and 6 were dead-lettered as read: a lane of
        // its own, or its lower offset would pass for one already landed.
        f.lp.dead_letter(vec![letter(3, "refused three")], true);
        f.settle();
        let lane = "agents-0".to_string();
        let refused = "agents-0-refused".to_string();
        assert_eq!(
            letters(&f),
            vec![
                (3, 4, refused, "refused three".into()),
                (5, 6, lane.clone(), "bad five".into()),
                (6, 7, lane, "bad six".into()),
            ]
        );
        let rows = f.rows(DEAD_LETTERS);
        let raw = |name: &str| {
            let mut v = binaries(&rows, name);
            v.sort();
            v
        };
        assert_eq!(raw("value"), [b"value 3", b"value 5", b"value 6"]);
        assert_eq!(raw("key"), [b"key 3", b"key 5", b"key 6"]);
        assert_eq!(ints(&rows, "timestamp"), [SENT_AT_MS * 1000; 3]);
        // Their offsets are settled once they are in; offset 4 was never dead-lettered.
        assert_eq!(f.inflight.settled(), vec![(partition.clone(), 4)]);
        assert_eq!(f.counter("kafka_dead_letters_total{topic=\"agents\"}"), 3);

        // Read again (after a restart, say): nothing lands twice.
        f.lp.dead_letter(vec![letter(5, "bad five"), letter(6, "bad six")], false);
        f.settle();
        assert_eq!(letters(&f).len(), 3);
    }
}

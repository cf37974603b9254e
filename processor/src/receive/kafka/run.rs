//! Plain JSON topics: the messages of a partition read one after the other are gathered
//! in a run and landed as one batch, each row numbered by its offset, so a run read again
//! lands only the rows its table lacks; messages that do not fit are dead-lettered.

use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use sluice_protocol::Envelope;

use super::consume::ConsumeLoop;
use crate::lake::marks::Partition;
use crate::land::lander::Origin;
use crate::receive::json_topic::JsonError;

/// A plain JSON topic's messages are landed in runs: those of one partition read one
/// after the other, as one batch of at most this many rows or bytes, or this old.
const RUN_ROWS: usize = 8192;
const RUN_BYTES: usize = 4 << 20;
const RUN_AGE: Duration = Duration::from_millis(100);

/// Messages of a plain JSON topic partition, read one after the other, waiting to be
/// landed: those that parse as one batch, the others as dead letters.
pub(super) struct Run {
    /// The assignment of the partition they were read under.
    epoch: Option<u64>,
    started: Instant,
    values: Vec<serde_json::Value>,
    messages: Vec<OwnedMessage>,
    /// Messages that do not parse, and why.
    misfits: Vec<(OwnedMessage, String)>,
    bytes: usize,
}

impl Run {
    fn last_offset(&self) -> Option<i64> {
        let good = self.messages.last().map(Message::offset);
        let bad = self.misfits.last().map(|(m, _)| m.offset());
        good.max(bad)
    }

    fn len(&self) -> usize {
        self.messages.len() + self.misfits.len()
    }
}

impl ConsumeLoop {
    /// Add a JSON message to its partition's run; land the run once it is full.
    pub(super) fn add_to_run(
        &mut self,
        partition: Partition,
        parsed: Result<serde_json::Value, JsonError>,
        msg: OwnedMessage,
    ) {
        let epoch = self.inflight.epoch(&partition);
        // A run holds messages read in order under one assignment; a seek back (a rewind)
        // or a new assignment starts another.
        if self
            .runs
            .get(&partition)
            .is_some_and(|r| r.epoch != epoch || r.last_offset().is_some_and(|o| o >= msg.offset()))
        {
            self.flush_run(&partition);
        }
        let run = self.runs.entry(partition.clone()).or_insert_with(|| Run {
            epoch,
            started: Instant::now(),
            values: Vec::new(),
            messages: Vec::new(),
            misfits: Vec::new(),
            bytes: 0,
        });
        run.bytes += msg.payload().map_or(0, <[u8]>::len);
        match parsed {
            Ok(value) => {
                run.values.push(value);
                run.messages.push(msg);
            }
            Err(reason) => run.misfits.push((msg, reason.to_string())),
        }
        if run.len() >= RUN_ROWS || run.bytes >= RUN_BYTES {
            self.flush_run(&partition);
        }
    }

    /// Land the runs that are due (all of them if `all`).
    pub(super) fn flush_runs(&mut self, all: bool) {
        let due: Vec<Partition> = self
            .runs
            .iter()
            .filter(|(_, r)| all || r.started.elapsed() >= RUN_AGE)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            self.flush_run(&p);
        }
    }

    /// Hand a partition's run to the lander: the messages that fit the columns as one
    /// batch, the others (in offset order) as one batch of dead letters. A type the JSON
    /// reader cannot convert fails the whole batch: its messages are then tried one by one.
    fn flush_run(&mut self, partition: &Partition) {
        let Some(run) = self.runs.remove(partition) else {
            return;
        };
        if self.inflight.epoch(partition) != run.epoch {
            // Given up since: whoever holds it now reads these messages again.
            tracing::debug!(topic = %partition.0, partition = partition.1, messages = run.len(), "dropping the run of a partition no longer held");
            return;
        }
        let Some(topic) = self.json.get(&partition.0) else {
            return;
        };
        let table = topic.table.clone();
        let Run {
            values,
            messages,
            mut misfits,
            ..
        } = run;
        let rows = match topic.rows(&values) {
            _ if values.is_empty() => None,
            Ok(batch) => Some((batch, messages)),
            Err(_) => {
                let mut fit = Vec::new();
                for (value, msg) in values.iter().zip(messages) {
                    match topic.rows(std::slice::from_ref(value)) {
                        Ok(row) => fit.push((row, msg)),
                        Err(reason) => misfits.push((msg, reason.to_string())),
                    }
                }
                let (rows, messages): (Vec<_>, Vec<_>) = fit.into_iter().unzip();
                match rows
                    .first()
                    .map(|r| arrow_select::concat::concat_batches(&r.schema(), &rows))
                {
                    None => None,
                    Some(Ok(batch)) => Some((batch, messages)),
                    Some(Err(e)) => {
                        // Rows of one schema always concatenate; never lose them silently.
                        let reason = format!("cannot gather the rows: {e}");
                        misfits.extend(messages.into_iter().map(|m| (m, reason.clone())));
                        None
                    }
                }
            }
        };
        if !misfits.is_empty() {
            misfits.sort_by_key(|(m, _)| m.offset());
            self.dead_letter(misfits, false);
        }
        let Some((batch, messages)) = rows else {
            return;
        };
        let offsets: Vec<i64> = messages.iter().map(Message::offset).collect();
        let (Some(first), Some(&last)) = (messages.first(), offsets.last()) else {
            return;
        };
        let bytes = messages
            .iter()
            .map(|m| m.payload().map_or(0, <[u8]>::len))
            .sum();
        let envelope = offset_envelope(partition_agent(first), &table, first, last, &batch);
        let origin = Origin::Rows {
            partition: partition.clone(),
            offsets,
        };
        self.submit(envelope, batch, bytes, origin, messages);
    }
}

/// The "agent" of rows numbered by offset: the message's topic partition.
pub(super) fn partition_agent(msg: &OwnedMessage) -> String {
    let topic: String = msg
        .topic()
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{topic}-{}", msg.partition())
}

/// The envelope of rows from a plain JSON topic or of dead letters, one per message from
/// `msg` to the one at `last_offset` (one partition, in offset order): its sequence is the
/// last offset + 1, so the lander's sequence marks deduplicate by offset.
pub(super) fn offset_envelope(
    agent: String,
    table: &str,
    msg: &OwnedMessage,
    last_offset: i64,
    batch: &arrow_array::RecordBatch,
) -> Envelope {
    Envelope {
        agent,
        stream: table.to_string(),
        seq: u64::try_from(last_offset).unwrap_or(0) + 1,
        schema_fingerprint: sluice_protocol::schema_fingerprint(&batch.schema()),
        created_at_us: msg
            .timestamp()
            .to_millis()
            .map_or_else(|| chrono::Utc::now().timestamp_micros(), |ms| ms * 1000),
        rows: u32::try_from(batch.num_rows()).unwrap_or(u32::MAX),
        checkpoint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{
        DEAD_LETTERS, Fixture, LOGS, LOGS_TABLE, SENT_AT_MS, json_message,
    };
    use super::super::testing::{ints, texts};
    use super::*;
    use crate::lake::{AGENT_COLUMN, SEQ_COLUMN};

    fn logs() -> Partition {
        (LOGS.to_string(), 0)
    }

    /// A message of the JSON topic that fits its columns.
    fn line(offset: i64) -> OwnedMessage {
        json_message(
            offset,
            format!(r#"{{"level":"l{offset}","ms":{offset}}}"#).as_bytes(),
        )
    }

    /// The landed rows of `table`: (`_seq`, `_agent`, `column`), in `_seq` order.
    fn landed(f: &Fixture, table: &str, column: &str) -> Vec<(i64, String, String)> {
        let rows = f.rows(table);
        let mut out: Vec<(i64, String, String)> = ints(&rows, SEQ_COLUMN)
            .into_iter()
            .zip(texts(&rows, AGENT_COLUMN))
            .zip(texts(&rows, column))
            .map(|((s, a), c)| (s, a, c))
            .collect();
        out.sort();
        out
    }

    fn run_len(f: &Fixture) -> Option<usize> {
        f.lp.runs.get(&logs()).map(Run::len)
    }

    #[test]
    fn json_messages_read_one_after_the_other_land_as_one_run_numbered_by_offset() {
        let mut f = Fixture::new();
        f.inflight.assign(logs(), Some(10));
        f.read((10..13).map(line));
        assert_eq!(run_len(&f), Some(3), "gathered, not landed one by one");
        assert!(f.lp.waiting.is_empty());
        f.lp.flush_runs(true);
        assert_eq!(f.lp.waiting.len(), 1, "one batch for the run");
        assert_eq!(f.inflight.settled(), vec![(logs(), 10)], "not yet landed");
        f.settle();
        let agent = "logs-topic-0".to_string();
        assert_eq!(
            landed(&f, LOGS_TABLE, "level"),
            vec![
                (11, agent.clone(), "l10".into()),
                (12, agent.clone(), "l11".into()),
                (13, agent.clone(), "l12".into()),
            ],
            "each row numbered by its offset + 1, as the partition's rows"
        );
        let table = f.rt.block_on(f.lake.table(LOGS_TABLE));
        assert_eq!(table.metadata().snapshots().len(), 1, "one commit");
        assert_eq!(f.inflight.settled(), vec![(logs(), 13)]);

        // Read again from offset 11 (a restart, say): only what the table lacks lands.
        f.read((11..15).map(line));
        f.settle();
        let seqs: Vec<i64> = landed(&f, LOGS_TABLE, "level")
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, [11, 12, 13, 14, 15]);
        assert_eq!(f.inflight.settled(), vec![(logs(), 15)]);
    }

    #[test]
    fn a_seek_back_or_a_new_assignment_starts_another_run() {
        let mut f = Fixture::new();
        f.inflight.assign(logs(), Some(10));
        f.read([line(10), line(11)]);
        // A rewind reads 10 again: what was gathered goes as it is, 10 starts a new run.
        f.read([line(10)]);
        assert_eq!(f.lp.waiting.len(), 1, "the first run handed over");
        assert_eq!(run_len(&f), Some(1));
        f.read([line(11), line(12)]);
        assert_eq!(run_len(&f), Some(3));
        f.settle();
        let seqs: Vec<i64> = landed(&f, LOGS_TABLE, "level")
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, [11, 12, 13], "every message once");

        // The partition was given up and given back meanwhile: the run read under the
        // earlier assignment is dropped, not landed (the group starts the new one afresh).
        f.read([line(13), line(14)]);
        f.inflight.assign(logs(), Some(13));
        f.read([line(13)]);
        assert!(f.lp.waiting.is_empty(), "the old run is not handed over");
        assert_eq!(run_len(&f), Some(1));
        // Given up: a run of a partition no longer held is not landed.
        f.inflight.release(&logs());
        f.lp.flush_runs(true);
        assert!(f.lp.waiting.is_empty() && f.lp.runs.is_empty());
        let seqs: Vec<i64> = landed(&f, LOGS_TABLE, "level")
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, [11, 12, 13]);
    }

    #[test]
    fn a_run_is_handed_over_once_it_holds_8192_messages_or_4_mib_or_is_100_ms_old() {
        let mut f = Fixture::new();
        f.inflight.assign(logs(), Some(0));
        let rows = i64::try_from(RUN_ROWS).expect("rows");
        f.read((0..rows - 1).map(line));
        assert_eq!(run_len(&f), Some(RUN_ROWS - 1));
        assert!(f.lp.waiting.is_empty());
        f.read([line(rows - 1)]);
        assert_eq!(run_len(&f), None, "full at {RUN_ROWS} messages");
        assert_eq!(f.lp.waiting.len(), 1);

        // Bytes: one byte short of 4 MiB waits; the message that reaches it (a misfit,
        // which counts too) sends the run.
        let pad = |len: usize| format!(r#"{{"level":"{}"}}"#, "x".repeat(len - 12));
        let at = rows;
        f.read([json_message(at, pad(RUN_BYTES - 100).as_bytes())]);
        f.read([json_message(at + 1, pad(99).as_bytes())]);
        assert_eq!(run_len(&f), Some(2), "{} bytes", RUN_BYTES - 1);
        f.read([json_message(at + 2, b"1")]);
        assert_eq!(run_len(&f), None, "full at {RUN_BYTES} bytes");
        assert_eq!(
            f.lp.waiting.len(),
            3,
            "its rows, and its misfit as a dead letter"
        );

        // Age: flushed by the loop's regular call once 100 ms old, not before.
        f.read([line(at + 3)]);
        let started = |f: &mut Fixture, ago: Duration| {
            if let Some(run) = f.lp.runs.get_mut(&logs()) {
                run.started = Instant::now() - ago;
            }
        };
        started(&mut f, RUN_AGE - Duration::from_millis(20));
        f.lp.flush_runs(false);
        assert_eq!(run_len(&f), Some(1), "younger than {RUN_AGE:?}");
        started(&mut f, RUN_AGE);
        f.lp.flush_runs(false);
        assert_eq!(run_len(&f), None, "{RUN_AGE:?} old");
        assert_eq!(f.lp.waiting.len(), 4);

        f.settle();
        assert_eq!(
            f.rows(LOGS_TABLE)
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            RUN_ROWS + 3
        );
        assert_eq!(
            f.rows(DEAD_LETTERS)
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            1
        );
        assert_eq!(f.inflight.settled(), vec![(logs(), rows + 4)]);
    }

    #[test]
    fn messages_of_a_run_that_do_not_fit_go_to_the_dead_letters_with_their_reasons() {
        let mut f = Fixture::new();
        f.inflight.assign(logs(), Some(19));
        // A message still in flight holds the partition's mark back: what keeps a run
        // read again from landing twice is its rows' numbering alone.
        f.inflight.read(&logs(), 19);
        let run = || {
            [
                json_message(20, br#"{"level":"a","ms":1}"#),
                json_message(21, b"not json"),
                // A JSON object whose `ms` is text: it parses, and fails only as a row.
                json_message(22, br#"{"level":"b","ms":"slow"}"#),
                json_message(23, br#"{"level":"c","ms":2}"#),
                json_message(24, b"[1]"),
            ]
        };
        f.read(run());
        f.settle();
        let agent = "logs-topic-0".to_string();
        assert_eq!(
            landed(&f, LOGS_TABLE, "level"),
            vec![
                (21, agent.clone(), "a".into()),
                (24, agent.clone(), "c".into())
            ]
        );
        let letters = f.rows(DEAD_LETTERS);
        // Handed over in offset order, as one lane numbered by offset: its mark is the
        // last offset + 1.
        assert_eq!(ints(&letters, "offset"), [21, 22, 24], "as landed");
        let mark =
            f.rt.block_on(f.lp.lander.committed_mark("logs-topic-0", DEAD_LETTERS))
                .expect("mark");
        assert_eq!(mark, (25, None));
        let mut got: Vec<(i64, i64, String, String, String)> = ints(&letters, "offset")
            .into_iter()
            .zip(ints(&letters, SEQ_COLUMN))
            .zip(texts(&letters, AGENT_COLUMN))
            .zip(texts(&letters, "value"))
            .zip(texts(&letters, "reason"))
            .map(|((((o, s), a), v), r)| (o, s, a, v, r))
            .collect();
        got.sort();
        let offsets: Vec<(i64, i64)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(
            offsets,
            [(21, 22), (22, 23), (24, 25)],
            "numbered by offset"
        );
        assert!(got.iter().all(|g| g.2 == agent), "{got:?}");
        let values: Vec<&str> = got.iter().map(|g| g.3.as_str()).collect();
        assert_eq!(
            values,
            ["not json", r#"{"level":"b","ms":"slow"}"#, "[1]"],
            "raw"
        );
        assert!(got[0].4.starts_with("not JSON: "), "{}", got[0].4);
        assert!(
            got[1].4.starts_with("does not fit the columns: "),
            "{}",
            got[1].4
        );
        assert_eq!(got[2].4, "not a JSON object");
        assert_eq!(texts(&letters, "topic"), [LOGS; 3]);
        assert_eq!(ints(&letters, "partition"), [0; 3]);
        assert_eq!(ints(&letters, "timestamp"), [SENT_AT_MS * 1000; 3]);
        assert_eq!(
            f.counter("kafka_dead_letters_total{topic=\"logs-topic\"}"),
            3
        );
        assert_eq!(f.inflight.settled(), vec![(logs(), 19)]);

        // Read again: nothing lands twice, neither rows nor dead letters.
        f.read(run());
        f.settle();
        assert_eq!(landed(&f, LOGS_TABLE, "level").len(), 2);
        assert_eq!(
            f.rows(DEAD_LETTERS)
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>(),
            3
        );
        f.inflight.settle(&logs(), 19);
        assert_eq!(f.inflight.settled(), vec![(logs(), 25)]);

        // A run of which nothing parses: all of it to the dead letters.
        f.read([json_message(25, b"{"), json_message(26, b"}")]);
        f.settle();
        assert_eq!(landed(&f, LOGS_TABLE, "level").len(), 2);
        let mut offsets = ints(&f.rows(DEAD_LETTERS), "offset");
        offsets.sort();
        assert_eq!(offsets, [21, 22, 24, 25, 26]);
        assert_eq!(f.inflight.settled(), vec![(logs(), 27)]);
    }
}

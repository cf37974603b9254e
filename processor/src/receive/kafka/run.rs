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

//! A fuzz harness on the stable toolchain: valid frames, envelopes, Arrow IPC payloads and
//! Kafka headers, mutated by a seeded generator (bit flips, boundary integers, cuts,
//! splices, repeats), fed to every decoder a peer can reach. A decoder may refuse an input;
//! it must not panic, hang, or allocate what the input merely declares.
//!
//! The suite runs a bounded number of cases; `sluice-bench fuzz` runs for as long as asked.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng as _, RngExt as _, SeedableRng};

use crate::kafka::Signature;
use crate::{BatchFrame, Envelope, Frame, Hello};

/// What the decoders a target reaches made of one input.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes {
    /// Inputs accepted.
    pub accepted: u64,
    /// Inputs refused with an error.
    pub refused: u64,
}

/// A place a peer's bytes reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A whole frame, as read from a QUIC lane.
    Frame,
    /// An Arrow IPC payload (a batch frame's, or a Kafka message's value).
    Ipc,
    /// A Kafka message's headers: envelope and signature.
    KafkaHeaders,
}

impl Target {
    /// Every target, in the order reports list them.
    pub const ALL: [Target; 3] = [Target::Frame, Target::Ipc, Target::KafkaHeaders];

    /// The target's label in reports and assertion messages (`"kafka_headers"`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Frame => "frame",
            Target::Ipc => "ipc",
            Target::KafkaHeaders => "kafka_headers",
        }
    }
}

/// Valid inputs to start from.
pub struct Corpus {
    frames: Vec<Vec<u8>>,
    ipc: Vec<Vec<u8>>,
    headers: Vec<Vec<(String, Vec<u8>)>>,
}

fn sample_batches() -> Vec<RecordBatch> {
    let n = 64;
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(crate::UTC.into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", ts, false),
        Field::new("host", DataType::Utf8, true),
        Field::new("v", DataType::Float64, true),
        Field::new("n", DataType::Int64, false),
        Field::new("ok", DataType::Boolean, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..n).map(|i| 1_700_000_000_000_000 + i))
                .with_timezone(crate::UTC),
        ),
        Arc::new(StringArray::from_iter(
            (0..n).map(|i| (i % 7 != 0).then(|| format!("host-{i}"))),
        )),
        Arc::new(Float64Array::from_iter(
            (0..n).map(|i| (i % 5 != 0).then_some(i as f64 / 3.0)),
        )),
        Arc::new(Int64Array::from_iter_values(0..n)),
        Arc::new(BooleanArray::from_iter(
            (0..n).map(|i| (i % 3 != 0).then_some(i % 2 == 0)),
        )),
    ];
    let full = RecordBatch::try_new(schema, columns).expect("a valid sample batch");
    vec![full.slice(0, 1), full.slice(3, 17), full]
}

impl Corpus {
    /// Valid frames of every kind, IPC payloads of a few shapes, and Kafka header sets.
    pub fn new() -> Self {
        let mut frames = Vec::new();
        let mut ipc = Vec::new();
        let mut headers = Vec::new();
        for (i, b) in sample_batches().into_iter().enumerate() {
            let payload = crate::encode_batch(&b).expect("encodes");
            let envelope = Envelope {
                agent: "edge-01".into(),
                stream: "cpu".into(),
                seq: 1 + i as u64,
                schema_fingerprint: crate::schema_fingerprint(&b.schema()),
                created_at_us: 1_700_000_000_000_000,
                rows: b.num_rows() as u32,
                checkpoint: (i % 2 == 0).then(|| format!("{{\"offset\":{i}}}")),
            };
            frames.push(
                Frame::Batch(BatchFrame {
                    envelope: envelope.clone(),
                    ipc: Bytes::from(payload.clone()),
                })
                .to_bytes(),
            );
            let signature = Signature {
                chain: vec![vec![0x30, 0x82, 0x01, 0x0a, i as u8]],
                scheme: "ECDSA_NISTP256_SHA256".into(),
                signature: vec![0x30, 0x45, i as u8],
            };
            headers.push(
                envelope
                    .to_kafka_headers()
                    .into_iter()
                    .chain(signature.to_kafka_headers())
                    .map(|(k, v)| (k.to_string(), v.into_bytes()))
                    .collect(),
            );
            ipc.push(payload);
        }
        frames.push(
            Frame::Hello(Hello {
                agent: "edge-01".into(),
                stream: "cpu".into(),
            })
            .to_bytes(),
        );
        frames.push(
            Frame::Welcome(crate::Welcome {
                stream: "cpu".into(),
                committed_seq: 41,
                checkpoint: Some("c".into()),
            })
            .to_bytes(),
        );
        frames.push(
            Frame::Ack(crate::Ack {
                stream: "cpu".into(),
                seq: 42,
                status: crate::AckStatus::Rejected,
                message: "no".into(),
            })
            .to_bytes(),
        );
        Self {
            frames,
            ipc,
            headers,
        }
    }
}

impl Default for Corpus {
    fn default() -> Self {
        Self::new()
    }
}

/// Integers a decoder is likely to mishandle.
const BOUNDARIES: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// A seeded mutator.
pub struct Mutator {
    rng: Xoshiro256PlusPlus,
}

impl Mutator {
    /// A mutator whose choices depend on `seed` alone, so a failing case can be replayed.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// `input`, changed in one to four ways.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..self.rng.random_range(1..=4) {
            self.once(&mut out);
        }
        out
    }

    fn once(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            out.push(self.rng.next_u32() as u8);
            return;
        }
        let at = self.rng.random_range(0..out.len());
        match self.rng.random_range(0..7) {
            // Flip a bit.
            0 => out[at] ^= 1 << self.rng.random_range(0..8),
            // A random byte.
            1 => out[at] = self.rng.next_u32() as u8,
            // A boundary integer, 4 or 8 bytes, either byte order.
            2 => {
                let v = BOUNDARIES[self.rng.random_range(0..BOUNDARIES.len())];
                let wide = self.rng.random_bool(0.5);
                let bytes: Vec<u8> = match (wide, self.rng.random_bool(0.5)) {
                    (true, true) => v.to_le_bytes().to_vec(),
                    (true, false) => v.to_be_bytes().to_vec(),
                    (false, true) => (v as u32).to_le_bytes().to_vec(),
                    (false, false) => (v as u32).to_be_bytes().to_vec(),
                };
                let end = (at + bytes.len()).min(out.len());
                out[at..end].copy_from_slice(&bytes[..end - at]);
            }
            // Cut the tail.
            3 => out.truncate(at),
            // Cut a piece out.
            4 => {
                let end = self.rng.random_range(at..=out.len());
                out.drain(at..end);
            }
            // Repeat a piece.
            5 => {
                let end = self.rng.random_range(at..=out.len().min(at + 64));
                let piece = out[at..end].to_vec();
                out.splice(at..at, piece);
            }
            // Random bytes in.
            _ => {
                let n = self.rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.next_u32() as u8).collect();
                out.splice(at..at, bytes);
            }
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }
}

/// Run `cases` mutated inputs through `target`; a panic inside escapes to the caller.
pub fn run(target: Target, corpus: &Corpus, mutator: &mut Mutator, cases: u64) -> Outcomes {
    let mut outcomes = Outcomes::default();
    for _ in 0..cases {
        let ok = match target {
            Target::Frame => {
                let base = mutator.pick(&corpus.frames);
                let input = mutator.mutate(base);
                decode_frame(&input)
            }
            Target::Ipc => {
                let base = mutator.pick(&corpus.ipc);
                let input = mutator.mutate(base);
                crate::decode_batch(Bytes::from(input)).is_ok()
            }
            Target::KafkaHeaders => {
                let base = mutator.pick(&corpus.headers).clone();
                let headers = mutate_headers(mutator, base);
                let view = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), Some(v.as_slice())));
                let envelope = Envelope::from_kafka_headers(view.clone());
                let signature = Signature::from_kafka_headers(view);
                envelope.is_ok() && signature.is_ok()
            }
        };
        if ok {
            outcomes.accepted += 1;
        } else {
            outcomes.refused += 1;
        }
    }
    outcomes
}

/// One frame read from the bytes as a lane would, and a batch's payload decoded.
fn decode_frame(input: &[u8]) -> bool {
    let read = futures_lite_block_on(crate::read_frame(&mut &input[..], 1 << 20));
    match read {
        Ok(Some(Frame::Batch(b))) => crate::decode_batch(b.ipc).is_ok(),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Reading a frame from a byte slice never waits, so a no-op waker drives it to the end.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Change a header set: a value mutated, a header dropped, duplicated or renamed.
fn mutate_headers(m: &mut Mutator, mut h: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    if h.is_empty() {
        return h;
    }
    let i = m.rng.random_range(0..h.len());
    match m.rng.random_range(0..4) {
        0 => {
            h.remove(i);
        }
        1 => {
            let dup = h[i].clone();
            h.push(dup);
        }
        2 => {
            let name = m.mutate(h[i].0.as_bytes());
            h[i].0 = String::from_utf8_lossy(&name).into_owned();
        }
        _ => h[i].1 = m.mutate(&h[i].1),
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutated_inputs_are_refused_or_accepted_never_a_panic_or_a_hang() {
        let corpus = Corpus::new();
        for target in Target::ALL {
            let mut m = Mutator::new(0x5eed ^ target as u64);
            let started = std::time::Instant::now();
            let o = run(target, &corpus, &mut m, 20_000);
            assert_eq!(o.accepted + o.refused, 20_000);
            // Mutations that break nothing exist (a flipped bit in a float), but most of
            // these inputs are refused: the decoders check what they read.
            assert!(o.refused > 0, "{}: {o:?}", target.name());
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "{}: {:?}",
                target.name(),
                started.elapsed()
            );
        }
        assert_eq!(
            crate::decoder_panics(),
            0,
            "arrow's decoder panicked on inputs check_stream let through"
        );
    }

    #[test]
    fn the_corpus_itself_is_accepted() {
        let corpus = Corpus::new();
        assert!(corpus.frames.iter().all(|f| decode_frame(f)));
        assert!(
            corpus
                .ipc
                .iter()
                .all(|p| crate::decode_batch(Bytes::from(p.clone())).is_ok())
        );
    }
}

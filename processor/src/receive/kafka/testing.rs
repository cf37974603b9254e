//! Helpers for the Kafka receiver's tests: a consume loop over a lake in a temporary
//! directory, and messages made in memory the way producers write them. There is no
//! broker: the loop's consumer joins no group and is never polled; a test hands messages
//! to the loop as its poll would, and lands them with the lander's flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_protocol::Envelope;
use sluice_protocol::kafka::Signature;

use super::consume::ConsumeLoop;
use super::group::GroupContext;
use super::stall::Stall;
use crate::land::inflight::InFlight;
use crate::receive::AccessConfig;
use crate::receive::access::Access;
use crate::receive::admission::Admission;
use crate::receive::certs;
use crate::receive::json_topic::{JsonTopic, JsonType, declared_schema};
use crate::telemetry::metrics::Metrics;
use crate::testing::TestLake;

/// The topic agents' batches arrive on.
pub(super) const AGENTS: &str = "agents";
/// A plain JSON topic, with columns `level` (text) and `ms` (a double)...
pub(super) const LOGS: &str = "logs-topic";
/// ...landed in this table.
pub(super) const LOGS_TABLE: &str = "logs";
pub(super) const DEAD_LETTERS: &str = "dead_letters";
/// The timestamp of every message made here, in milliseconds since the epoch.
pub(super) const SENT_AT_MS: i64 = 1_767_225_600_000;

/// A consume loop without a broker, landing in a test lake. Agents `edge-01` and `edge-02`
/// hold certificates of the CA in `certs` and may write stream `cpu`, nothing else.
pub(super) struct Fixture {
    pub lp: ConsumeLoop,
    pub inflight: InFlight,
    pub metrics: Arc<Metrics>,
    pub lake: TestLake,
    pub certs: tempfile::TempDir,
    /// Last: the lander's task runs on it until everything else is gone.
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let certs = tempfile::tempdir().expect("tempdir");
        certs::init(
            certs.path(),
            &["localhost".into()],
            &["edge-01".into(), "edge-02".into()],
            certs::DEFAULT_DAYS,
            false,
        )
        .expect("certs");
        let inflight = InFlight::default();
        let (lake, lander) = rt.block_on(async {
            let lake = TestLake::new().await;
            let lander = lake.lander_with(inflight.clone());
            (lake, lander)
        });
        // Ready fails at the first error: nothing needs to last.
        let metrics = Metrics::with_health(sluice_ops::Health::new(Duration::ZERO));
        let access = Access::new(&AccessConfig {
            allow: [
                ("edge-01".to_string(), vec!["cpu".to_string()]),
                ("edge-02".to_string(), vec!["cpu".to_string()]),
            ]
            .into(),
            allow_all: false,
        })
        .expect("access");
        let admission = Admission::new(
            Arc::new(access),
            Some((&certs.path().join(certs::CA_CERT), None)),
            true,
        )
        .expect("admission");
        let health = metrics.health.watch("kafka consumer", "messages");
        let broker_errors = Arc::new(AtomicBool::new(false));
        let ctx = GroupContext {
            lander: lander.clone(),
            inflight: inflight.clone(),
            runtime: rt.handle().clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            broker_errors: broker_errors.clone(),
        };
        // Nothing listens there; the consumer subscribes to nothing and is never polled.
        let consumer: BaseConsumer<GroupContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("group.id", "sluice-test")
            .create_with_context(ctx)
            .expect("consumer");
        let columns: indexmap::IndexMap<String, JsonType> = [
            ("level".to_string(), JsonType::String),
            ("ms".to_string(), JsonType::Double),
        ]
        .into_iter()
        .collect();
        let json = HashMap::from([(
            LOGS.to_string(),
            JsonTopic::new(
                LOGS_TABLE.into(),
                Some(declared_schema(&columns)),
                crate::land::SchemaPolicy::Evolve,
            ),
        )]);
        let lp = ConsumeLoop {
            consumer,
            lander,
            inflight: inflight.clone(),
            metrics: metrics.clone(),
            runtime: rt.handle().clone(),
            stop: Arc::new(AtomicBool::new(false)),
            runs: HashMap::new(),
            waiting: Vec::new(),
            waiting_bytes: 0,
            paused: false,
            rewind_at: None,
            last_commit: Instant::now(),
            topics: vec![AGENTS.into(), LOGS.into()],
            json,
            admission,
            dead_letter_table: DEAD_LETTERS.into(),
            stalled_after: Duration::from_secs(30),
            stall: Stall::default(),
            health,
            broker_errors,
            health_checked: Instant::now(),
        };
        Self {
            lp,
            inflight,
            metrics,
            lake,
            certs,
            rt,
        }
    }

    /// Hand messages to the loop, as its poll would.
    pub fn read(&mut self, messages: impl IntoIterator<Item = OwnedMessage>) {
        for m in messages {
            self.lp.on_message(m);
        }
    }

    /// Commit everything the lander holds now.
    pub fn runtime_flush(&self) {
        self.rt.block_on(self.lp.lander.flush());
    }

    /// Land every run and batch handed over, and collect the verdicts, until nothing waits
    /// (the dead letters of batches the lander refuses are handed over meanwhile).
    pub fn settle(&mut self) {
        self.lp.flush_runs(true);
        for _ in 0..200 {
            if self.lp.waiting.is_empty() {
                return;
            }
            self.runtime_flush();
            self.lp.collect_verdicts();
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} batches still wait for a verdict", self.lp.waiting.len());
    }

    /// `agent`'s signature over `envelope` and `payload`, made as the agent's
    /// `BatchSigner` makes it: with the key of its certificate from the CA.
    pub fn signed(&self, agent: &str, envelope: &Envelope, payload: &[u8]) -> Signature {
        let (cert, key) = certs::agent_files(self.certs.path(), agent);
        let chain = CertificateDer::pem_file_iter(&cert)
            .expect("cert")
            .map(|c| c.expect("cert").to_vec())
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).expect("key");
        use rustls::SignatureScheme as S;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .expect("key type")
            .choose_scheme(&[
                S::ECDSA_NISTP256_SHA256,
                S::ECDSA_NISTP384_SHA384,
                S::ED25519,
                S::RSA_PSS_SHA256,
            ])
            .expect("scheme");
        Signature {
            chain,
            scheme: format!("{:?}", signer.scheme()),
            signature: signer.sign(&envelope.signed_bytes(payload)).expect("sign"),
        }
    }

    /// Batch `seq` of `agent` for stream `cpu`, signed by `agent`, as the message at
    /// `offset` of partition 0: its envelope, rows and message.
    pub fn genuine(
        &self,
        agent: &str,
        seq: u64,
        offset: i64,
    ) -> (Envelope, RecordBatch, OwnedMessage) {
        let batch = cpu_rows(3);
        let env = envelope(agent, "cpu", seq, &batch);
        let payload = sluice_protocol::encode_batch(&batch).expect("ipc");
        let sig = self.signed(agent, &env, &payload);
        let msg = agent_message(&env, payload, Some(&sig), offset);
        (env, batch, msg)
    }

    /// The rows of table `name` of the lander's namespace (none if it does not exist).
    pub fn rows(&self, name: &str) -> Vec<RecordBatch> {
        self.rows_in("bronze", name)
    }

    /// Every row of table `namespace.name` (none if it does not exist).
    pub fn rows_in(&self, namespace: &str, name: &str) -> Vec<RecordBatch> {
        self.rt.block_on(async {
            let Some(table) =
                crate::lake::load_if_exists(self.lake.catalog.as_ref(), namespace, name)
                    .await
                    .expect("catalog")
            else {
                return Vec::new();
            };
            let files = crate::lake::live_files(&table).await.expect("files");
            crate::lake::read_data_files(&table, &files)
                .await
                .expect("read")
        })
    }

    /// The value of counter `line` (`name{label="value"}`) in the processor's metrics.
    pub fn counter(&self, line: &str) -> u64 {
        let text = sluice_ops::ApiMetrics::render(self.metrics.as_ref());
        let want = format!("sluice_processor_{line} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&want))
            .map_or(0, |v| v.trim().parse().expect("a count"))
    }
}

/// `n` rows of stream `cpu`: `host` and `usage`.
pub(super) fn cpu_rows(n: usize) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("usage", DataType::Float64, true),
    ]));
    let hosts: StringArray = (0..n).map(|i| Some(format!("h{i}"))).collect();
    let usage: Float64Array = (0..n).map(|i| Some(i as f64 / 2.0)).collect();
    RecordBatch::try_new(schema, vec![Arc::new(hosts), Arc::new(usage)]).expect("batch")
}

/// The envelope of `batch` as batch `seq` of `agent`'s `stream`.
pub(super) fn envelope(agent: &str, stream: &str, seq: u64, batch: &RecordBatch) -> Envelope {
    Envelope {
        agent: agent.into(),
        stream: stream.into(),
        seq,
        schema_fingerprint: sluice_protocol::schema_fingerprint(&batch.schema()),
        created_at_us: SENT_AT_MS * 1000,
        rows: u32::try_from(batch.num_rows()).expect("rows"),
        checkpoint: Some(format!("ckpt-{seq}")),
    }
}

/// The message an agent's Kafka sink writes: the envelope's headers, then the
/// signature's (if any), keyed by the agent, on partition 0 of [`AGENTS`].
pub(super) fn agent_message(
    envelope: &Envelope,
    payload: Vec<u8>,
    signature: Option<&Signature>,
    offset: i64,
) -> OwnedMessage {
    let mut headers = OwnedHeaders::new();
    for (key, value) in envelope.to_kafka_headers().into_iter().chain(
        signature
            .map(Signature::to_kafka_headers)
            .into_iter()
            .flatten(),
    ) {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    message(
        AGENTS,
        offset,
        Some(envelope.agent.as_bytes().to_vec()),
        payload,
        Some(headers),
    )
}

/// A message of partition 0 of [`LOGS`], as any producer writes it: a value, no headers.
pub(super) fn json_message(offset: i64, payload: &[u8]) -> OwnedMessage {
    message(LOGS, offset, Some(b"k".to_vec()), payload.to_vec(), None)
}

/// The message at `offset` of partition 0 of `topic`.
pub(super) fn message(
    topic: &str,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload),
        key,
        topic.to_string(),
        Timestamp::CreateTime(SENT_AT_MS),
        0,
        offset,
        headers,
    )
}

/// Column `name` of `batches`, cast to `to`, as one array.
pub(super) fn column(batches: &[RecordBatch], name: &str, to: &DataType) -> ArrayRef {
    let parts: Vec<ArrayRef> = batches
        .iter()
        .map(|b| arrow_cast::cast(b.column_by_name(name).expect("column"), to).expect("cast"))
        .collect();
    let refs: Vec<&dyn arrow_array::Array> = parts.iter().map(AsRef::as_ref).collect();
    match refs.is_empty() {
        true => arrow_array::new_empty_array(to),
        false => arrow_select::concat::concat(&refs).expect("concat"),
    }
}

/// Column `name` of `batches` as integers.
pub(super) fn ints(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    use arrow_array::cast::AsArray;
    column(batches, name, &DataType::Int64)
        .as_primitive::<arrow_array::types::Int64Type>()
        .values()
        .to_vec()
}

/// Column `name` of `batches` as text (NULL as "").
pub(super) fn texts(batches: &[RecordBatch], name: &str) -> Vec<String> {
    use arrow_array::cast::AsArray;
    column(batches, name, &DataType::Utf8)
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

/// Column `name` of `batches` as bytes (NULL as none).
pub(super) fn binaries(batches: &[RecordBatch], name: &str) -> Vec<Vec<u8>> {
    use arrow_array::cast::AsArray;
    column(batches, name, &DataType::Binary)
        .as_binary::<i32>()
        .iter()
        .map(|v| v.unwrap_or_default().to_vec())
        .collect()
}

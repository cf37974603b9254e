//! `sluice-bench kafka-json [ROWS]`: how fast the processor lands a plain JSON topic.
//!
//! A producer writes ROWS log lines (one JSON object per message, about 190 bytes) to a
//! tansu topic first; then a processor with that topic declared under `[kafka.json]` is
//! started and timed from ready to the commit of the last row, so the figure is the
//! processor's (consume, parse, land), not the producer's.

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::{TempDir, counter, free_tcp, start_broker, start_processor, wait_committed};

const TOPIC: &str = "app.logs";

pub fn run(processor_bin: &Path, rows: u64, partitions: u32) {
    let dir = TempDir::new();
    let (_broker, brokers) = start_broker(&dir, TOPIC, partitions);
    println!(
        "JSON topic bench: {rows} log lines, one JSON object per message, {partitions} partition(s), tansu -> processor -> bronze"
    );

    let produced = Instant::now();
    let bytes = produce(&brokers, rows);
    let secs = produced.elapsed().as_secs_f64();
    println!(
        "  produced            {rows:>12} messages, {:.1} MB in {secs:.2} s (producer, not timed below)",
        bytes as f64 / 1e6
    );

    let api = free_tcp();
    let config = dir.path().join("processor.toml");
    std::fs::write(
        &config,
        format!(
            r#"[processor]
data_dir = "data"
[api]
listen = "{api}"
# The bench reads /metrics on loopback without credentials.
anonymous = ["metrics"]
[lander]
commit_interval = "1s"
[kafka]
brokers = "{brokers}"
[kafka.json."{TOPIC}".schema]
ts = "timestamp"
level = "string"
host = "string"
service = "string"
msg = "string"
ms = "double"
status = "long"
bytes = "long"
"#
        ),
    )
    .expect("processor config");
    let started = Instant::now();
    let _processor = start_processor(processor_bin, &config, api);
    let committed_rows = "sluice_processor_committed_rows_total{table=\"bronze.app_logs\"}";
    let metrics = wait_committed(api, committed_rows, rows, started);
    let elapsed = started.elapsed().as_secs_f64();
    let committed = counter(&metrics, committed_rows);
    assert_eq!(committed as u64, rows, "every row must be committed once");
    let dead = counter(
        &metrics,
        &format!("sluice_processor_kafka_dead_letters_total{{topic=\"{TOPIC}\"}}"),
    );
    assert_eq!(dead, 0.0, "no line should be dead-lettered");
    println!("  rows committed      {committed:>12.0}");
    println!("  elapsed             {elapsed:>12.2} s (processor start to last commit)");
    println!("  throughput          {:>12.0} rows/s", committed / elapsed);
    println!(
        "  throughput          {:>12.1} MB/s (JSON)",
        bytes as f64 / elapsed / 1e6
    );
}

/// Write `rows` log lines to the topic; returns the bytes of JSON written.
fn produce(brokers: &str, rows: u64) -> u64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    let levels = ["info", "info", "info", "warn", "error"];
    let services = ["checkout", "search", "auth", "cart"];
    let mut bytes = 0u64;
    for i in 0..rows {
        let line = format!(
            r#"{{"ts":"2026-03-01T{:02}:{:02}:{:02}.{:03}Z","level":"{}","host":"web-{:02}","service":"{}","msg":"GET /api/{}/{} {}","ms":{:.3},"status":{},"bytes":{}}}"#,
            (i / 3_600_000) % 24,
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000,
            levels[(i % 5) as usize],
            i % 40,
            services[(i % 4) as usize],
            services[(i % 4) as usize],
            i % 997,
            if i % 50 == 0 { 500 } else { 200 },
            (i % 1000) as f64 / 7.0,
            if i % 50 == 0 { 500 } else { 200 },
            (i * 7919) % 100_000,
        );
        bytes += line.len() as u64;
        let key = (i % 64).to_string();
        loop {
            match producer.send(BaseRecord::to(TOPIC).key(&key).payload(&line)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => panic!("cannot produce: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .expect("every message delivered");
    bytes
}

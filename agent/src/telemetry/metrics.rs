//! The agent's counters, exposed in Prometheus text format on `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginReasonLabels {
    plugin: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginDirectionLabels {
    plugin: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkRefusalLabels {
    plugin: String,
    kind: &'static str,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    stream: String,
    reason: String,
}

/// Every counter the agent keeps.
pub struct Metrics {
    registry: Registry,
    source_rows: Family<SourceLabels, Counter>,
    source_bytes: Family<SourceLabels, Counter>,
    batches_cut: Family<StreamLabels, Counter>,
    rows_batched: Family<StreamLabels, Counter>,
    bytes_batched: Family<StreamLabels, Counter>,
    oldest_unacked_age: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    /// Per stream, when its oldest unacknowledged batch was cut (µs), if any.
    oldest_unacked_us: Mutex<HashMap<String, Option<i64>>>,
    rows_sent: Family<StreamLabels, Counter>,
    bytes_sent: Family<StreamLabels, Counter>,
    rows_acked: Family<StreamLabels, Counter>,
    rows_duplicate: Family<StreamLabels, Counter>,
    rows_quarantined: Family<StreamLabels, Counter>,
    rows_lost: Family<ReasonLabels, Counter>,
    sink_errors: Family<ReasonLabels, Counter>,
    api_refused: Family<RefusalLabels, Counter>,
    inflight: Family<StreamLabels, Gauge>,
    wal_bytes: Family<StreamLabels, Gauge>,
    wal_written_bytes: Family<StreamLabels, Counter>,
    wal_syncs: Family<StreamLabels, Counter>,
    wal_corrupt: Family<StreamLabels, Counter>,
    wal_write_errors: Family<StreamLabels, Counter>,
    reconnects: Counter,
    connected: Gauge,
    plugin_calls: Family<PluginLabels, Histogram, fn() -> Histogram>,
    plugin_failures: Family<PluginReasonLabels, Counter>,
    plugin_restarts: Family<PluginLabels, Counter>,
    plugin_failed: Family<PluginLabels, Gauge>,
    plugin_network_bytes: Family<PluginDirectionLabels, Counter>,
    plugin_network_refused: Family<NetworkRefusalLabels, Counter>,
    plugin_network_timeouts: Family<PluginLabels, Counter>,
    transform_rows_in: Family<PluginLabels, Counter>,
    transform_rows_out: Family<PluginLabels, Counter>,
    /// What `/health` and `/ready` report: plugins given up on, lanes and logs stalled.
    pub health: sluice_ops::Health,
    /// Per stream, the health of its sink lane, fed by the in-flight gauge and the acks.
    sinks: Mutex<HashMap<String, sluice_ops::Watch>>,
}

fn call_histogram() -> Histogram {
    // 10 µs .. ~10 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice_agent");
        let m = Self {
            source_rows: Family::default(),
            source_bytes: Family::default(),
            batches_cut: Family::default(),
            rows_batched: Family::default(),
            bytes_batched: Family::default(),
            oldest_unacked_age: Family::default(),
            oldest_unacked_us: Mutex::default(),
            rows_sent: Family::default(),
            bytes_sent: Family::default(),
            rows_acked: Family::default(),
            rows_duplicate: Family::default(),
            rows_quarantined: Family::default(),
            rows_lost: Family::default(),
            sink_errors: Family::default(),
            api_refused: Family::default(),
            inflight: Family::default(),
            wal_bytes: Family::default(),
            wal_written_bytes: Family::default(),
            wal_syncs: Family::default(),
            wal_corrupt: Family::default(),
            wal_write_errors: Family::default(),
            reconnects: Counter::default(),
            connected: Gauge::default(),
            plugin_calls: Family::new_with_constructor(call_histogram),
            plugin_failures: Family::default(),
            plugin_restarts: Family::default(),
            plugin_failed: Family::default(),
            plugin_network_bytes: Family::default(),
            plugin_network_refused: Family::default(),
            plugin_network_timeouts: Family::default(),
            transform_rows_in: Family::default(),
            transform_rows_out: Family::default(),
            health: sluice_ops::health_for(None),
            sinks: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "source_rows",
            "Rows produced by each source",
            m.source_rows.clone(),
        );
        registry.register(
            "source_bytes",
            "Arrow bytes (in memory) of the rows each source produced",
            m.source_bytes.clone(),
        );
        registry.register("batches", "Batches cut per stream", m.batches_cut.clone());
        registry.register(
            "batched_rows",
            "Rows cut into batches per stream (after transforms)",
            m.rows_batched.clone(),
        );
        registry.register(
            "batched_bytes",
            "Arrow IPC bytes of the batches cut per stream",
            m.bytes_batched.clone(),
        );
        registry.register(
            "oldest_unacked_age_seconds",
            "Age of the oldest batch sent and not yet acknowledged, per stream (0: none)",
            m.oldest_unacked_age.clone(),
        );
        registry.register(
            "sent_rows",
            "Rows sent to the processor (resends included)",
            m.rows_sent.clone(),
        );
        registry.register(
            "sent_bytes",
            "Arrow IPC bytes sent to the processor (resends included)",
            m.bytes_sent.clone(),
        );
        registry.register(
            "acked_rows",
            "Rows the processor confirmed committed",
            m.rows_acked.clone(),
        );
        registry.register(
            "duplicate_rows",
            "Rows the processor already had (redelivery after a reconnect)",
            m.rows_duplicate.clone(),
        );
        registry.register(
            "quarantined_rows",
            "Rows the processor kept in a quarantine table: they did not fit their table",
            m.rows_quarantined.clone(),
        );
        registry.register(
            "lost_rows",
            "Rows that will never land, by reason",
            m.rows_lost.clone(),
        );
        registry.register(
            "sink_errors",
            "Sessions of a stream's sink lane that failed, by reason (the lane retries)",
            m.sink_errors.clone(),
        );
        registry.register(
            "api_refused_requests",
            "HTTP requests refused (no or unknown token, missing role, foreign host or origin, \
             not JSON), by reason",
            m.api_refused.clone(),
        );
        registry.register(
            "inflight_batches",
            "Batches sent and not yet acknowledged",
            m.inflight.clone(),
        );
        registry.register(
            "wal_size_bytes",
            "Bytes the write-ahead log holds on disk",
            m.wal_bytes.clone(),
        );
        registry.register(
            "wal_written_bytes",
            "Bytes appended to the write-ahead log",
            m.wal_written_bytes.clone(),
        );
        registry.register(
            "wal_syncs",
            "Group commits (fsyncs) of the write-ahead log",
            m.wal_syncs.clone(),
        );
        registry.register(
            "wal_corrupt_records",
            "Damaged write-ahead log records found and skipped",
            m.wal_corrupt.clone(),
        );
        registry.register(
            "wal_write_errors",
            "Failed appends to the write-ahead log (a full disk, typically); retried",
            m.wal_write_errors.clone(),
        );
        registry.register(
            "reconnects",
            "Connections (re)established to the processor",
            m.reconnects.clone(),
        );
        registry.register(
            "connected",
            "1 while a connection to the processor is up",
            m.connected.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Duration of each call into a wasm plugin",
            m.plugin_calls.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin failures (trap, timeout, memory, bad batch, ...) by reason",
            m.plugin_failures.clone(),
        );
        registry.register(
            "plugin_restarts",
            "Plugin instances restarted after a failure",
            m.plugin_restarts.clone(),
        );
        registry.register(
            "plugin_failed",
            "1 when a plugin failed too often and is no longer restarted",
            m.plugin_failed.clone(),
        );
        registry.register(
            "plugin_network_bytes",
            "Bytes plugins sent and received over granted TCP connections and HTTP requests (direction in|out)",
            m.plugin_network_bytes.clone(),
        );
        registry.register(
            "plugin_network_refused",
            "Network uses no grant covers, refused (kind tcp|udp|listen|dns|http; target the address or URL, at most 16 per plugin, then other)",
            m.plugin_network_refused.clone(),
        );
        registry.register(
            "plugin_network_timeouts",
            "Network waits of plugins cut off by network_timeout or the call's budget",
            m.plugin_network_timeouts.clone(),
        );
        registry.register(
            "transform_input_rows",
            "Rows handed to each transform (label plugin = source/transform)",
            m.transform_rows_in.clone(),
        );
        registry.register(
            "transform_output_rows",
            "Rows each transform returned (fewer when it filters)",
            m.transform_rows_out.clone(),
        );
        Self { registry, ..m }
    }
}

fn stream(s: &str) -> StreamLabels {
    StreamLabels { stream: s.into() }
}

impl Metrics {
    /// Metrics reporting to `health`.
    pub fn new(health: sluice_ops::Health) -> Arc<Self> {
        Arc::new(Self {
            health,
            ..Self::default()
        })
    }

    /// A source produced `rows` rows taking `bytes` of Arrow memory.
    pub fn source_rows(&self, source: &str, rows: u64, bytes: u64) {
        let l = SourceLabels {
            source: source.into(),
        };
        self.source_rows.get_or_create(&l).inc_by(rows);
        self.source_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Stream `s` cut a batch of `rows` rows, `ipc_bytes` once encoded.
    pub fn batch_cut(&self, s: &str, rows: u32, ipc_bytes: usize) {
        let l = stream(s);
        self.batches_cut.get_or_create(&l).inc();
        self.rows_batched.get_or_create(&l).inc_by(u64::from(rows));
        self.bytes_batched
            .get_or_create(&l)
            .inc_by(ipc_bytes as u64);
    }

    /// A batch of `rows` rows and `bytes` IPC bytes left on stream `s`'s lane; a resend
    /// counts again.
    pub fn sent(&self, s: &str, rows: u32, bytes: usize) {
        let l = stream(s);
        self.rows_sent.get_or_create(&l).inc_by(u64::from(rows));
        self.bytes_sent.get_or_create(&l).inc_by(bytes as u64);
    }

    /// The far side (processor or brokers) has a batch of `rows` rows of stream `s`: the
    /// lane made progress.
    pub fn acked(&self, s: &str, rows: u32) {
        self.rows_acked
            .get_or_create(&stream(s))
            .inc_by(u64::from(rows));
        self.sink(s).progressed();
    }

    /// The processor already had a resent batch of `rows` rows of stream `s`; progress all
    /// the same.
    pub fn duplicate(&self, s: &str, rows: u32) {
        self.rows_duplicate
            .get_or_create(&stream(s))
            .inc_by(u64::from(rows));
        self.sink(s).progressed();
    }

    /// The processor kept a batch of `rows` rows of stream `s` in quarantine (it did not
    /// fit the table): acknowledged, so progress all the same.
    pub fn quarantined(&self, s: &str, rows: u32) {
        self.rows_quarantined
            .get_or_create(&stream(s))
            .inc_by(u64::from(rows));
        self.sink(s).progressed();
    }

    /// The stream's sink lane is retrying after `error`.
    pub fn sink_error(&self, s: &str, reason: &'static str, error: &dyn std::fmt::Display) {
        self.sink_errors
            .get_or_create(&ReasonLabels {
                stream: s.into(),
                reason: reason.into(),
            })
            .inc();
        self.sink(s).error(error);
    }

    /// The stream's sink lane reaches its destination again.
    pub fn sink_recovered(&self, s: &str) {
        self.sink(s).recovered();
    }

    /// The health of stream `s`'s sink lane.
    fn sink(&self, s: &str) -> sluice_ops::Watch {
        let mut sinks = self.sinks.lock().unwrap_or_else(PoisonError::into_inner);
        sinks
            .entry(s.to_string())
            .or_insert_with(|| {
                self.health
                    .watch(format!("sink for stream {s:?}"), "batches")
            })
            .clone()
    }

    /// `rows` rows of stream `s` will never land, for `reason` (`too_large`, `wal_full`,
    /// a transform's failure).
    pub fn lost(&self, s: &str, reason: &str, rows: u64) {
        self.rows_lost
            .get_or_create(&ReasonLabels {
                stream: s.into(),
                reason: reason.into(),
            })
            .inc_by(rows);
    }

    /// Batches sent and not yet acknowledged, oldest first: what the stream's sink lane
    /// has waiting.
    pub fn set_inflight(&self, s: &str, n: usize, oldest: Option<i64>) {
        self.inflight.get_or_create(&stream(s)).set(n as i64);
        self.sink(s).waiting(n as u64);
        self.oldest_unacked_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(s.to_string(), oldest);
    }

    /// Stream `s`'s log now holds `bytes` on disk.
    pub fn set_wal_size(&self, s: &str, bytes: u64) {
        self.wal_bytes
            .get_or_create(&stream(s))
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// A group commit of stream `s`'s log wrote `bytes` and synced once.
    pub fn wal_synced(&self, s: &str, bytes: u64) {
        let l = stream(s);
        self.wal_written_bytes.get_or_create(&l).inc_by(bytes);
        self.wal_syncs.get_or_create(&l).inc();
    }

    /// `records` damaged records of stream `s`'s log were found and skipped.
    pub fn wal_corrupt(&self, s: &str, records: u64) {
        self.wal_corrupt.get_or_create(&stream(s)).inc_by(records);
    }

    /// An append to stream `s`'s log failed (a full disk, typically); it is retried.
    pub fn wal_write_error(&self, s: &str) {
        self.wal_write_errors.get_or_create(&stream(s)).inc();
    }

    /// A call into `plugin` (a source's name, or `SOURCE/TRANSFORM`) took `seconds`.
    pub fn plugin_call(&self, plugin: &str, seconds: f64) {
        self.plugin_calls
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .observe(seconds);
    }

    /// A call into `plugin` failed for `reason` (`trap`, `timeout`, `memory`, ...).
    pub fn plugin_failure(&self, plugin: &str, reason: &str) {
        self.plugin_failures
            .get_or_create(&PluginReasonLabels {
                plugin: plugin.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The counters of the bytes `plugin` moves over the network, `in` and `out`: taken
    /// once, since every read and write of a connection adds to them.
    pub fn plugin_network_bytes(&self, plugin: &str) -> (Counter, Counter) {
        let counter = |direction| {
            self.plugin_network_bytes
                .get_or_create(&PluginDirectionLabels {
                    plugin: plugin.into(),
                    direction,
                })
                .clone()
        };
        (counter("in"), counter("out"))
    }

    /// A network use of `plugin` that no grant covers was refused.
    pub fn plugin_network_refused(&self, plugin: &str, kind: &'static str, target: &str) {
        self.plugin_network_refused
            .get_or_create(&NetworkRefusalLabels {
                plugin: plugin.into(),
                kind,
                target: target.into(),
            })
            .inc();
    }

    /// A network wait of `plugin` was cut off.
    pub fn plugin_network_timeout(&self, plugin: &str) {
        self.plugin_network_timeouts
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc();
    }

    /// Transform `plugin` was handed `rows_in` rows and returned `rows_out`.
    pub fn transform_rows(&self, plugin: &str, rows_in: u64, rows_out: u64) {
        let l = PluginLabels {
            plugin: plugin.into(),
        };
        self.transform_rows_in.get_or_create(&l).inc_by(rows_in);
        self.transform_rows_out.get_or_create(&l).inc_by(rows_out);
    }

    /// An instance of `plugin` is restarted after a failure.
    pub fn plugin_restart(&self, plugin: &str) {
        self.plugin_restarts
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .inc();
    }

    /// The plugin is given up on; `/health` reports it until the agent restarts.
    pub fn plugin_failed(&self, plugin: &str, reason: &str) {
        self.plugin_failed
            .get_or_create(&PluginLabels {
                plugin: plugin.into(),
            })
            .set(1);
        self.health
            .watch(format!("plugin {plugin:?}"), "calls")
            .failed(reason);
    }

    /// A connection to the processor was established (again).
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Whether a connection to the processor is up now.
    pub fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
    }
}

impl sluice_ops::ApiMetrics for Metrics {
    fn refused(&self, reason: &'static str) {
        self.api_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Prometheus text exposition of every metric.
    fn render(&self) -> String {
        // Ages move with the clock: set them as of this scrape.
        let now = chrono::Utc::now().timestamp_micros();
        let oldest = self
            .oldest_unacked_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (s, created) in oldest {
            let age = created.map_or(0.0, |us| (now - us).max(0) as f64 / 1e6);
            self.oldest_unacked_age.get_or_create(&stream(&s)).set(age);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

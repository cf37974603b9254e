//! Helpers for tests of every stage: a lake in a temporary directory and batches landed in
//! it. They live at the crate root, above the stages, so that a stage's tests can land
//! batches without the stage depending on `land/`.

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use iceberg::Catalog;
use iceberg::table::Table;
use sluice_protocol::Envelope;
use tokio::sync::oneshot;

use crate::lake::locks::CommitLocks;
use crate::lake::{self, CatalogSwap};
use crate::land::inflight::InFlight;
use crate::land::lander::{LandRequest, Lander, Verdict};
use crate::land::{LanderConfig, Streams};
use crate::telemetry::metrics::Metrics;

/// A SQLite catalog over a local warehouse in a temporary directory.
pub(crate) struct TestLake {
    pub catalog: Arc<dyn Catalog>,
    pub swap: CatalogSwap,
    _dir: tempfile::TempDir,
}

impl TestLake {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::config::ProcessorConfig::parse(&format!(
            "[processor]\ndata_dir = {:?}\n",
            dir.path().display().to_string()
        ))
        .expect("config");
        let catalog = lake::open(&cfg.catalog_settings()).await.expect("catalog");
        lake::ensure_namespace(catalog.as_ref(), "bronze")
            .await
            .expect("namespace");
        let swap = CatalogSwap::open(&cfg.catalog_settings())
            .await
            .expect("swap");
        Self {
            catalog,
            swap,
            _dir: dir,
        }
    }

    pub fn lander(&self) -> Lander {
        self.lander_with(InFlight::default())
    }

    pub fn lander_with(&self, inflight: InFlight) -> Lander {
        self.lander_for(Streams::default(), inflight)
    }

    /// A lander that keeps streams as `streams` says.
    pub fn lander_for(&self, streams: Streams, inflight: InFlight) -> Lander {
        Lander::start(
            self.catalog.clone(),
            self.swap.clone(),
            LanderConfig::default(),
            streams,
            Metrics::new(),
            CommitLocks::default(),
            inflight,
        )
    }

    /// Create `bronze.events` (one `id` column) with these table properties.
    pub async fn create_events(&self, properties: &[(&str, &str)]) {
        let user = ArrowSchema::new(vec![Field::new("id", DataType::Int64, true)]);
        lake::create_if_missing(
            self.catalog.as_ref(),
            "bronze",
            "events",
            &lake::bronze_arrow_schema(&user),
            &[],
            properties,
        )
        .await
        .expect("table");
    }

    pub async fn table(&self, name: &str) -> Table {
        let ident = iceberg::TableIdent::from_strs(["bronze", name]).expect("ident");
        self.catalog.load_table(&ident).await.expect("table")
    }
}

/// The `id` column of `files`, in file and row order.
pub(crate) async fn ids_in(table: &Table, files: &[iceberg::spec::DataFile]) -> Vec<i64> {
    use arrow_array::cast::AsArray;
    lake::read_data_files(table, files)
        .await
        .expect("read")
        .iter()
        .flat_map(|b| {
            b.column_by_name("id")
                .expect("id")
                .as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Wait for a verdict and require the batch committed (so a stage's tests need not name
/// `land/`'s types).
pub(crate) async fn expect_committed(verdict: oneshot::Receiver<Verdict>, what: &str) {
    assert_eq!(verdict.await, Ok(Verdict::Committed), "{what}");
}

/// Hand over batch `seq` of `agent` (one row, `id` = seq) for table `events`, as a
/// QUIC receiver would; the verdict to come.
pub(crate) async fn land_batch(
    lander: &Lander,
    agent: &str,
    seq: u64,
) -> oneshot::Receiver<Verdict> {
    let schema = Arc::new(ArrowSchema::new(vec![Field::new(
        "id",
        DataType::Int64,
        true,
    )]));
    let id = i64::try_from(seq).expect("seq");
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![id]))])
        .expect("batch");
    land(lander, agent, "events", seq, batch).await
}

/// Hand `batch` to the lander as `agent`'s batch `seq` of `stream`.
pub(crate) async fn land(
    lander: &Lander,
    agent: &str,
    stream: &str,
    seq: u64,
    batch: RecordBatch,
) -> oneshot::Receiver<Verdict> {
    let (reply, verdict) = oneshot::channel();
    let req = LandRequest {
        envelope: Envelope {
            agent: agent.into(),
            stream: stream.into(),
            seq,
            schema_fingerprint: sluice_protocol::schema_fingerprint(&batch.schema()),
            created_at_us: 0,
            rows: u32::try_from(batch.num_rows()).expect("rows"),
            checkpoint: Some(format!("ckpt-{seq}")),
        },
        batch,
        wire_bytes: 8,
        received_at_us: 0,
        origin: None,
        quarantine: true,
        reply,
    };
    assert!(lander.land(req).await.is_ok(), "lander running");
    verdict
}

/// Files under the table's `metadata/` folder whose names end with `suffix`.
pub(crate) fn metadata_files(table: &Table, suffix: &str) -> Vec<std::path::PathBuf> {
    let dir = format!("{}/metadata", table.metadata().location());
    let dir = dir.strip_prefix("file://").expect("local warehouse");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("metadata dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

/// A bronze table's Arrow schema for rows shaped like `user`, as the lake has it: with
/// Iceberg's names for list items and map entries, and field ids.
pub fn bronze_table_schema(user: &ArrowSchema) -> arrow_schema::SchemaRef {
    let iceberg =
        iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&lake::bronze_arrow_schema(user))
            .expect("iceberg schema");
    Arc::new(iceberg::arrow::schema_to_arrow_schema(&iceberg).expect("arrow schema"))
}

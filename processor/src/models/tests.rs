//! The model runner end to end: bronze batches landed in a lake in a temporary directory,
//! models run over them, and their tables, quarantines and watermarks read back.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use iceberg::spec::Operation;
use iceberg::table::Table;

use super::run::{SEQUENCE_PREFIX, WATERMARK_PREFIX};
use super::{Model, ModelConfig, ModelError, ModelGraph, ModelSettings, Runner, Watermark};
use crate::lake::Compression;
use crate::lake::locks::CommitLocks;
use crate::land::lander::{Lander, Verdict};
use crate::telemetry::metrics::Metrics;
use crate::testing::{TestLake, land, land_batch};

/// The models of `toml` (`["silver.x"]` sections), checked.
fn models(toml: &str) -> ModelGraph {
    let cfgs: BTreeMap<String, ModelConfig> = toml::from_str(toml).expect("models");
    ModelGraph::build(&cfgs, "bronze").expect("graph")
}

/// What each test starts from: an empty lake, its lander, a runner over it, and the model
/// `name` of the models in `toml`.
async fn setup(toml: &str, name: &str) -> (TestLake, Lander, Runner, Model) {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let runner = runner(&lake);
    let m = models(toml).get(name).cloned().expect("model");
    (lake, lander, runner, m)
}

fn runner(lake: &TestLake) -> Runner {
    Runner::new(
        ModelSettings {
            catalog_name: "sluice".into(),
            bronze: "bronze".into(),
            compression: Compression::Zstd,
        },
        lake.catalog.clone(),
        lake.swap.clone(),
        CommitLocks::default(),
        Metrics::new(),
    )
}

/// Land batches `seqs` of `events` (one row each, `id` = seq), each in a commit of its own.
async fn land_events(lander: &Lander, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let v = land_batch(lander, "edge", seq).await;
        lander.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed), "batch {seq}");
    }
}

/// Land batch `seq` of stream `metrics`: one row, `id` = `id`.
async fn land_metric(lander: &Lander, seq: u64, id: i64) {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![id]))]).expect("batch");
    let v = land(lander, "edge", "metrics", seq, batch).await;
    lander.flush().await;
    assert_eq!(v.await, Ok(Verdict::Committed), "metric {seq}");
}

async fn load(lake: &TestLake, name: &str) -> Option<Table> {
    let (ns, table) = name.split_once('.').expect("namespace.table");
    crate::lake::load_if_exists(lake.catalog.as_ref(), ns, table)
        .await
        .expect("catalog")
}

async fn table(lake: &TestLake, name: &str) -> Table {
    load(lake, name).await.expect("table exists")
}

/// Every row of table `name`.
async fn rows(lake: &TestLake, name: &str) -> Vec<RecordBatch> {
    let t = table(lake, name).await;
    let files = crate::lake::live_files(&t).await.expect("files");
    crate::lake::read_data_files(&t, &files)
        .await
        .expect("read")
}

/// Column `name` as integers, in the order read.
fn ints(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow_cast::cast(b.column_by_name(name).expect("column"), &DataType::Int64)
                .expect("cast");
            c.as_primitive::<arrow_array::types::Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Column `name` as text, in the order read.
fn texts(batches: &[RecordBatch], name: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name(name)
                .expect("column")
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn sorted(mut v: Vec<i64>) -> Vec<i64> {
    v.sort_unstable();
    v
}

/// The current snapshot's summary property `key`.
fn property(t: &Table, key: &str) -> Option<String> {
    t.metadata()
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get(key).cloned())
}

/// Where `t` stands now, as a model's watermark of it.
fn head(t: &Table) -> Watermark {
    Watermark::of(t.metadata().current_snapshot().expect("snapshot"))
}

fn render(runner: &Runner) -> String {
    sluice_ops::ApiMetrics::render(runner.metrics.as_ref())
}

#[tokio::test]
async fn an_incremental_model_reads_only_the_snapshots_after_its_watermark() {
    let (lake, lander, runner, m) = setup(
        r#"
        ["silver.events"]
        sql = "SELECT id, id * 10 AS tenfold FROM events"
        "#,
        "silver.events",
    )
    .await;
    land_events(&lander, 1..=3).await;

    let first = runner.run(&m).await.expect("first run");
    assert_eq!(first.outcome, "ran");
    assert_eq!((first.snapshots_read, first.input_rows), (3, 3));
    assert_eq!(first.output_rows, 3);
    let target = table(&lake, "silver.events").await;
    assert_eq!(
        sorted(ints(&rows(&lake, "silver.events").await, "id")),
        [1, 2, 3]
    );
    assert_eq!(
        super::watermarks(Some(&target)),
        BTreeMap::from([(
            "bronze.events".to_string(),
            head(&lake.table("events").await)
        )])
    );

    // Nothing new: nothing read, nothing committed.
    let second = runner.run(&m).await.expect("second run");
    assert_eq!(second.outcome, "up_to_date");
    assert_eq!((second.snapshots_read, second.input_rows), (0, 0));
    let unchanged = table(&lake, "silver.events").await;
    assert_eq!(unchanged.metadata_location(), target.metadata_location());
    assert_eq!(unchanged.metadata().snapshots().len(), 1);

    // Two more bronze commits: only they are read.
    land_events(&lander, 4..=5).await;
    let third = runner.run(&m).await.expect("third run");
    assert_eq!(third.outcome, "ran");
    assert_eq!((third.snapshots_read, third.input_rows), (2, 2));
    assert_eq!(third.output_rows, 2);
    let target = table(&lake, "silver.events").await;
    assert_eq!(target.metadata().snapshots().len(), 2);
    assert_eq!(property(&target, "added-records").as_deref(), Some("2"));
    let out = rows(&lake, "silver.events").await;
    assert_eq!(sorted(ints(&out, "id")), [1, 2, 3, 4, 5], "every row once");
    assert_eq!(sorted(ints(&out, "tenfold")), [10, 20, 30, 40, 50]);
    assert_eq!(
        super::watermarks(Some(&target)),
        BTreeMap::from([(
            "bronze.events".to_string(),
            head(&lake.table("events").await)
        )])
    );
}

#[tokio::test]
async fn each_run_records_its_inputs_watermarks_in_the_snapshot_that_adds_its_rows() {
    let (lake, lander, runner, m) = setup(
        r#"
        ["silver.ids"]
        sql = "SELECT id FROM events UNION ALL SELECT id FROM metrics"
        "#,
        "silver.ids",
    )
    .await;
    land_events(&lander, 1..=2).await;
    land_metric(&lander, 1, 100).await;
    runner.run(&m).await.expect("first run");
    let events_at = head(&lake.table("events").await);
    let metrics_at = head(&lake.table("metrics").await);
    let target = table(&lake, "silver.ids").await;
    let snapshot = target.metadata().current_snapshot().expect("snapshot");
    assert_eq!(snapshot.summary().operation, Operation::Append);
    assert_eq!(property(&target, "added-records").as_deref(), Some("3"));
    for (input, at) in [("bronze.events", events_at), ("bronze.metrics", metrics_at)] {
        assert_eq!(
            property(&target, &format!("{WATERMARK_PREFIX}{input}")),
            Some(at.snapshot.to_string()),
            "{input}"
        );
        assert_eq!(
            property(&target, &format!("{SEQUENCE_PREFIX}{input}")),
            Some(at.sequence.to_string()),
            "{input}"
        );
    }

    // Only `metrics` moves: its watermark moves with the rows it gave, `events`' stays.
    land_metric(&lander, 2, 200).await;
    let r = runner.run(&m).await.expect("second run");
    assert_eq!((r.snapshots_read, r.input_rows, r.output_rows), (1, 1, 1));
    let target = table(&lake, "silver.ids").await;
    assert_eq!(property(&target, "added-records").as_deref(), Some("1"));
    assert_eq!(
        super::watermarks(Some(&target)),
        BTreeMap::from([
            ("bronze.events".to_string(), events_at),
            (
                "bronze.metrics".to_string(),
                head(&lake.table("metrics").await)
            ),
        ])
    );
    assert_eq!(
        sorted(ints(&rows(&lake, "silver.ids").await, "id")),
        [1, 2, 100, 200]
    );
}

#[tokio::test]
async fn rows_failing_an_expectation_go_to_the_quarantine_table_with_the_rules_they_failed() {
    let (lake, lander, runner, m) = setup(
        r#"
        ["silver.events"]
        sql = "SELECT id FROM events"
        expect = { even = "id % 2 = 0", small = "id < 3" }
        "#,
        "silver.events",
    )
    .await;
    assert_eq!(m.quarantine, "quarantine.silver_events");
    land_events(&lander, 1..=4).await;
    let r = runner.run(&m).await.expect("run");
    assert_eq!((r.output_rows, r.quarantined_rows), (1, 3));
    assert_eq!(
        r.failed_rules,
        BTreeMap::from([("even".to_string(), 2), ("small".to_string(), 2)])
    );
    assert_eq!(ints(&rows(&lake, "silver.events").await, "id"), [2]);
    let q = rows(&lake, "quarantine.silver_events").await;
    let mut failed: Vec<(i64, String)> = ints(&q, "id")
        .into_iter()
        .zip(texts(&q, super::expect::RULE_COLUMN))
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        [
            (1, "even".to_string()),
            (3, "even,small".to_string()),
            (4, "small".to_string()),
        ]
    );
    // The quarantine records the same watermarks as the target.
    let target = table(&lake, "silver.events").await;
    let quarantine = table(&lake, "quarantine.silver_events").await;
    assert_eq!(
        super::watermarks(Some(&quarantine)),
        super::watermarks(Some(&target))
    );
    let metrics = render(&runner);
    assert!(
        metrics.contains(
            "sluice_processor_model_quarantined_rows_total{model=\"silver.events\",rule=\"small\"} 2"
        ),
        "{metrics}"
    );

    // A run with nothing new quarantines nothing again.
    let again = runner.run(&m).await.expect("again");
    assert_eq!(again.outcome, "up_to_date");
    assert_eq!(rows(&lake, "quarantine.silver_events").await.len(), q.len());
    assert_eq!(
        table(&lake, "quarantine.silver_events")
            .await
            .metadata()
            .snapshots()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_recompute_model_replaces_its_table_in_one_overwrite_snapshot() {
    let (lake, lander, runner, m) = setup(
        r#"
        ["gold.totals"]
        sql = "SELECT count(*) AS n, sum(id) AS total FROM events"
        mode = "recompute"
        "#,
        "gold.totals",
    )
    .await;
    land_events(&lander, 1..=2).await;
    let r = runner.run(&m).await.expect("first run");
    assert_eq!((r.outcome, r.output_rows), ("ran", 1));
    let out = rows(&lake, "gold.totals").await;
    assert_eq!((ints(&out, "n"), ints(&out, "total")), (vec![2], vec![3]));

    land_events(&lander, 3..=3).await;
    let r = runner.run(&m).await.expect("second run");
    assert_eq!((r.outcome, r.snapshots_read, r.input_rows), ("ran", 1, 3));
    let target = table(&lake, "gold.totals").await;
    assert_eq!(target.metadata().snapshots().len(), 2, "one snapshot a run");
    let current = target.metadata().current_snapshot().expect("snapshot");
    assert_eq!(current.summary().operation, Operation::Overwrite);
    for (key, value) in [
        ("deleted-data-files", "1"),
        ("deleted-records", "1"),
        ("added-data-files", "1"),
        ("added-records", "1"),
        ("total-data-files", "1"),
        ("total-records", "1"),
    ] {
        assert_eq!(property(&target, key).as_deref(), Some(value), "{key}");
    }
    let out = rows(&lake, "gold.totals").await;
    assert_eq!(
        (ints(&out, "n"), ints(&out, "total")),
        (vec![3], vec![6]),
        "replaced, not added to"
    );
    assert_eq!(
        super::watermarks(Some(&target)),
        BTreeMap::from([(
            "bronze.events".to_string(),
            head(&lake.table("events").await)
        )])
    );

    // Its inputs have not moved: nothing to recompute.
    let r = runner.run(&m).await.expect("third run");
    assert_eq!(r.outcome, "up_to_date");
    let again = table(&lake, "gold.totals").await;
    assert_eq!(again.metadata_location(), target.metadata_location());
}

#[tokio::test]
async fn a_model_whose_sql_fails_leaves_its_target_untouched_and_reports_the_error() {
    let (lake, lander, runner, good) = setup(
        r#"
        ["silver.events"]
        sql = "SELECT id FROM events"
        expect = { positive = "id > 0" }
        "#,
        "silver.events",
    )
    .await;
    land_events(&lander, 1..=2).await;
    runner.run(&good).await.expect("good run");
    let before = table(&lake, "silver.events").await;
    land_events(&lander, 3..=3).await;

    for (sql, why) in [
        // Fails when planned.
        ("SELECT id, no_such_column FROM events", "no_such_column"),
        // Fails when run, with the target's very columns.
        ("SELECT id / (id - id) AS id FROM events", "Divide by zero"),
    ] {
        let mut bad = good.clone();
        bad.cfg.sql = sql.into();
        let err = runner.run(&bad).await.expect_err(sql);
        match &err {
            ModelError::Sql(msg) => assert!(msg.contains(why), "{sql}: {msg}"),
            other => panic!("{sql}: expected a SQL error, got {other:?}"),
        }
        let after = table(&lake, "silver.events").await;
        assert_eq!(
            after.metadata_location(),
            before.metadata_location(),
            "{sql}"
        );
        assert!(
            load(&lake, "quarantine.silver_events").await.is_none(),
            "{sql}"
        );
    }
    assert!(render(&runner).contains(
        "sluice_processor_model_runs_total{model=\"silver.events\",outcome=\"error\"} 2"
    ));
    assert_eq!(
        sorted(ints(&rows(&lake, "silver.events").await, "id")),
        [1, 2]
    );

    // The watermark did not move: the good model, back, reads exactly what it had not.
    let r = runner.run(&good).await.expect("good again");
    assert_eq!((r.snapshots_read, r.input_rows), (1, 1));
    assert_eq!(
        sorted(ints(&rows(&lake, "silver.events").await, "id")),
        [1, 2, 3]
    );
}

#[tokio::test]
async fn a_model_target_is_created_with_its_declared_partitioning_and_written_by_partition() {
    let (lake, lander, runner, m) = setup(
        r#"
        ["silver.events"]
        sql = "SELECT id, id % 3 AS bucket FROM events"
        partition = ["bucket", "truncate(10, id)"]
        "#,
        "silver.events",
    )
    .await;
    land_events(&lander, 1..=12).await;
    let r = runner.run(&m).await.expect("run");
    assert_eq!((r.outcome, r.output_rows), ("ran", 12));
    let target = table(&lake, "silver.events").await;
    let spec = target.metadata().default_partition_spec();
    let names: Vec<&str> = spec.fields().iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["bucket", "id_trunc_10"]);
    // One file per partition: 3 buckets x ids 1-9 and 10-12.
    let files = crate::lake::live_files(&target).await.expect("files");
    assert_eq!(files.len(), 6, "{files:?}");
    assert_eq!(
        sorted(ints(&rows(&lake, "silver.events").await, "id")),
        (1..=12).collect::<Vec<_>>()
    );
}

//! The lander end to end: batches landed in a lake in a temporary directory, committed,
//! deduplicated and read back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema as ArrowSchema};
use iceberg::Catalog;
use sluice_protocol::Envelope;
use tokio::sync::oneshot;

use super::inflight::InFlight;
use super::lander::{LandRequest, Lander, Origin, Verdict};
use crate::lake::marks::Partition;
use crate::lake::{self, Change, CommitError, Head};
use crate::testing::{TestLake, land, land_batch, metadata_files};

#[tokio::test]
async fn a_commit_stores_a_mark_past_the_commit_before_it() {
    // The receiver settles offsets when it next reads the verdicts, which may be after
    // the lander has started its next commit; it never does here. The mark stored with
    // the second commit must still be past both commits' messages.
    let lake = TestLake::new().await;
    let inflight = InFlight::default();
    let partition: Partition = ("events".into(), 0);
    inflight.assign(partition.clone(), Some(0));
    for o in 0..10 {
        inflight.read(&partition, o);
    }
    let lander = lake.lander_with(inflight.clone());
    let first = land_run(&lander, &[0, 1, 2, 3, 4]).await;
    lander.flush().await;
    assert_eq!(first.await, Ok(Verdict::Committed));
    let second = land_run(&lander, &[5, 6, 7, 8, 9]).await;
    lander.flush().await;
    assert_eq!(second.await, Ok(Verdict::Committed));
    let marks = lander.kafka_marks().await.expect("marks");
    assert_eq!(marks.offset("events", 0), Some(10));
    assert_eq!(inflight.settled(), vec![(partition, 10)]);
}

/// Hand over a run of JSON rows of partition 0 (`id` = offset); the verdict to come.
async fn land_run(lander: &Lander, offsets: &[i64]) -> oneshot::Receiver<Verdict> {
    let schema = Arc::new(ArrowSchema::new(vec![Field::new(
        "id",
        DataType::Int64,
        true,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(offsets.to_vec()))],
    )
    .expect("batch");
    let (reply, verdict) = oneshot::channel();
    let last = offsets.last().copied().expect("a run has rows");
    let req = LandRequest {
        envelope: Envelope {
            agent: "events-0".into(),
            stream: "events".into(),
            seq: u64::try_from(last).expect("offset") + 1,
            schema_fingerprint: sluice_protocol::schema_fingerprint(&schema),
            created_at_us: 0,
            rows: u32::try_from(offsets.len()).expect("rows"),
            checkpoint: None,
        },
        batch,
        wire_bytes: 8 * offsets.len(),
        received_at_us: 0,
        origin: Some(Origin::Rows {
            partition: ("events".into(), 0),
            offsets: offsets.to_vec(),
        }),
        quarantine: true,
        reply,
    };
    assert!(lander.land(req).await.is_ok(), "lander running");
    verdict
}

#[tokio::test]
async fn a_batch_that_cannot_make_a_table_is_quarantined_not_retried() {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let one = |name: &str| {
        RecordBatch::try_new(
            Arc::new(ArrowSchema::new(vec![
                Field::new("v", DataType::Int64, true),
                Field::new(name, DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![2])),
            ],
        )
        .expect("batch")
    };
    for (stream, column, why) in [
        ("a", "_seq", "reserved for the lake"),
        ("b", "v", "given twice"),
    ] {
        let v = land(&lander, "edge", stream, 1, one(column)).await;
        lander.flush().await;
        match tokio::time::timeout(Duration::from_secs(20), v).await {
            Ok(Ok(Verdict::Quarantined(reason))) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("{stream}: expected quarantine, got {other:?}"),
        }
        assert_eq!(quarantined(&lake, stream).await.len(), 1);
    }
    // The lane is not blocked: the agent's next batch of the stream lands.
    let v = land(&lander, "edge", "a", 2, one("w")).await;
    lander.flush().await;
    assert_eq!(v.await, Ok(Verdict::Committed));
}

#[tokio::test]
async fn a_table_committed_to_hundreds_of_times_keeps_its_manifests_and_metadata_bounded() {
    let lake = TestLake::new().await;
    // Small limits, to show in 300 commits what the defaults show in thousands.
    lake.create_events(&[
        (lake::manifests::MERGE_MIN_COUNT, "10"),
        (
            iceberg::spec::TableProperties::PROPERTY_METADATA_PREVIOUS_VERSIONS_MAX,
            "3",
        ),
    ])
    .await;
    let lander = lake.lander();
    for seq in 1..=300 {
        let v = land_batch(&lander, "edge", seq).await;
        lander.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed), "batch {seq}");
        if seq % 50 == 0 {
            let table = lake.table("events").await;
            let current = table.metadata().current_snapshot().expect("snapshot");
            let manifests = lake::manifest_list(&table, current).await.expect("list");
            assert!(
                manifests.entries().len() <= 10,
                "{} manifests after {seq} commits",
                manifests.entries().len()
            );
            let json = metadata_files(&table, ".metadata.json");
            assert!(
                json.len() <= 4,
                "{} metadata files after {seq} commits",
                json.len()
            );
        }
    }
    let table = lake.table("events").await;
    assert_eq!(table.metadata().snapshots().len(), 300);
    let want: Vec<(i64, i64)> = (1..=300).map(|s| (s, s)).collect();
    assert_eq!(landed_ids(&lake.catalog).await, want, "every row once");
    // A processor started now reads the marks back.
    let again = lake.lander();
    assert_eq!(
        again.committed_mark("edge", "events").await.expect("mark"),
        (300, Some("ckpt-300".to_string()))
    );
    assert_eq!(
        land_batch(&again, "edge", 300).await.await,
        Ok(Verdict::Duplicate)
    );
}

#[tokio::test]
async fn a_merge_takes_the_manifests_the_lander_wrote_from_memory_not_storage() {
    let lake = TestLake::new().await;
    lake.create_events(&[(lake::manifests::MERGE_MIN_COUNT, "10")])
        .await;
    let lander = lake.lander();
    for seq in 1..=9 {
        let v = land_batch(&lander, "edge", seq).await;
        lander.flush().await;
        assert_eq!(v.await, Ok(Verdict::Committed), "batch {seq}");
    }
    // Another writer's commit (adding nothing) makes the lander load the table again;
    // what it knows of the manifests must survive that.
    let table = lake.table("events").await;
    let props = [("note".to_string(), "other writer".to_string())].into();
    lake::snapshot::commit(
        &lake.swap,
        &Head::new(table),
        &Change::append(vec![], 0, props),
    )
    .await
    .expect("other writer's commit");
    // The next commit merges the 9 manifests into its own. Take them away: the merge
    // must not need to read them.
    let table = lake.table("events").await;
    let current = table.metadata().current_snapshot().expect("snapshot");
    let list = lake::manifest_list(&table, current).await.expect("list");
    assert_eq!(list.entries().len(), 9);
    for m in list.entries() {
        let path = m.manifest_path.strip_prefix("file://").expect("local");
        std::fs::remove_file(path).expect("remove manifest");
    }
    let v = land_batch(&lander, "edge", 10).await;
    let verdict = tokio::time::timeout(Duration::from_secs(20), async {
        lander.flush().await;
        v.await
    })
    .await;
    assert_eq!(
        verdict.map_err(|_| "no verdict in 20 s: the commit kept failing"),
        Ok(Ok(Verdict::Committed))
    );
    let table = lake.table("events").await;
    let current = table.metadata().current_snapshot().expect("snapshot");
    let list = lake::manifest_list(&table, current).await.expect("list");
    assert_eq!(list.entries().len(), 1, "merged into one manifest");
    let want: Vec<(i64, i64)> = (1..=10).map(|s| (s, s)).collect();
    assert_eq!(landed_ids(&lake.catalog).await, want, "every row once");
}

#[tokio::test]
async fn marks_of_a_thousand_agents_stay_out_of_the_snapshot_summary() {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let agent = |a: usize| format!("agent-with-a-rather-long-name-{a:04}");
    // 150 commits, each of 50 agents' batches: 1,000 agents in all, each sending in
    // 7 or 8 commits; the deltas are files, and a base is written every 100 commits.
    let mut last = vec![0u64; 1000];
    for round in 0..150usize {
        let mut verdicts = Vec::new();
        for k in 0..50 {
            let a = (round * 50 + k * 7) % 1000;
            last[a] += 1;
            verdicts.push(land_batch(&lander, &agent(a), last[a]).await);
        }
        lander.flush().await;
        for v in verdicts {
            assert_eq!(v.await, Ok(Verdict::Committed));
        }
        let table = lake.table("events").await;
        let summary = &table
            .metadata()
            .current_snapshot()
            .expect("snapshot")
            .summary();
        let bytes: usize = summary
            .additional_properties
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert!(bytes < 2048, "summary of {bytes} bytes after round {round}");
    }
    let table = lake.table("events").await;
    assert!(
        !metadata_files(&table, ".json")
            .iter()
            .filter(|p| p.to_string_lossy().contains("/marks-"))
            .collect::<Vec<_>>()
            .is_empty()
    );
    let again = lake.lander();
    for (a, seq) in last.iter().enumerate() {
        let mark = again
            .committed_mark(&agent(a), "events")
            .await
            .expect("mark");
        assert_eq!(mark.0, *seq, "agent {a}");
        if *seq > 0 {
            assert_eq!(mark.1, Some(format!("ckpt-{seq}")));
        }
    }
}

/// Every `id` in the table and its `_seq`, in id order.
async fn landed_ids(catalog: &Arc<dyn Catalog>) -> Vec<(i64, i64)> {
    let ident = iceberg::TableIdent::from_strs(["bronze", "events"]).expect("ident");
    let table = catalog.load_table(&ident).await.expect("table");
    let files = lake::live_files(&table).await.expect("files");
    let mut ids = Vec::new();
    for b in lake::read_data_files(&table, &files).await.expect("read") {
        use arrow_array::cast::AsArray;
        let id = b
            .column_by_name("id")
            .expect("id")
            .as_primitive::<arrow_array::types::Int64Type>();
        let seq = b
            .column_by_name(lake::SEQ_COLUMN)
            .expect("_seq")
            .as_primitive::<arrow_array::types::Int64Type>();
        ids.extend(
            id.values()
                .iter()
                .copied()
                .zip(seq.values().iter().copied()),
        );
    }
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn runs_read_again_land_only_the_rows_the_table_lacks() {
    let lake = TestLake::new().await;
    let catalog = &lake.catalog;
    let a = lake.lander();
    let skip_4 = |r: std::ops::Range<i64>| r.filter(|o| *o != 4).collect::<Vec<_>>();
    let v = land_run(&a, &skip_4(0..10)).await;
    a.flush().await;
    assert_eq!(v.await, Ok(Verdict::Committed));
    // Read again from offset 2 (after a restart, say): only 10..15 are new.
    let v = land_run(&a, &skip_4(2..15)).await;
    a.flush().await;
    assert_eq!(v.await, Ok(Verdict::Committed));
    let v = land_run(&a, &[5, 6]).await;
    assert_eq!(v.await, Ok(Verdict::Duplicate));

    // The partition moves to a second processor while the first still holds 15..40:
    // the second starts where the table ends and reads further. Whichever commits
    // second lands only what the other did not.
    let b = lake.lander();
    let va = land_run(&a, &(15..40).collect::<Vec<_>>()).await;
    let vb = land_run(&b, &(15..60).collect::<Vec<_>>()).await;
    tokio::join!(a.flush(), b.flush());
    let verdicts = [va.await.expect("verdict"), vb.await.expect("verdict")];
    assert!(verdicts.contains(&Verdict::Committed), "{verdicts:?}");

    let want: Vec<(i64, i64)> = skip_4(0..60).into_iter().map(|o| (o, o + 1)).collect();
    assert_eq!(
        landed_ids(catalog).await,
        want,
        "every row once, numbered by offset"
    );

    // A commit from a head another commit has moved past changes nothing.
    let stale = Head::new(lake.table("events").await);
    drop(land_run(&a, &[60]).await);
    a.flush().await;
    let before = lake.table("events").await;
    let err = lake::snapshot::commit(
        &lake.swap,
        &stale,
        &Change::append(vec![], 0, HashMap::new()),
    )
    .await
    .expect_err("moved since");
    assert!(matches!(err, CommitError::Conflict), "{err}");
    assert_eq!(
        lake.table("events").await.metadata_location(),
        before.metadata_location()
    );
}

/// A batch of `ids` (as Int32 or Int64) and, if given, a `site` column.
fn evolving_batch(ids: &[i64], wide: bool, site: Option<&[&str]>) -> RecordBatch {
    let mut columns: Vec<(&str, arrow_array::ArrayRef)> = vec![(
        "id",
        if wide {
            Arc::new(Int64Array::from(ids.to_vec()))
        } else {
            Arc::new(arrow_array::Int32Array::from(
                ids.iter().map(|&i| i as i32).collect::<Vec<_>>(),
            ))
        },
    )];
    if let Some(site) = site {
        columns.push((
            "site",
            Arc::new(arrow_array::StringArray::from(site.to_vec())),
        ));
    }
    RecordBatch::try_from_iter(columns).expect("batch")
}

/// Every row of table `events` as (id, site), read back from its data files, sorted.
async fn ids_and_sites(lake: &TestLake) -> Vec<(i64, Option<String>)> {
    use arrow_array::cast::AsArray;
    let table = lake.table("events").await;
    let files = lake::live_files(&table).await.expect("files");
    let mut rows: Vec<(i64, Option<String>)> = lake::read_data_files(&table, &files)
        .await
        .expect("read")
        .iter()
        .flat_map(|b| {
            let ids = b
                .column_by_name("id")
                .expect("id")
                .as_primitive::<arrow_array::types::Int64Type>()
                .clone();
            let sites = b
                .column_by_name("site")
                .expect("site")
                .as_string::<i32>()
                .clone();
            (0..b.num_rows())
                .map(|i| {
                    let site = (!arrow_array::Array::is_null(&sites, i))
                        .then(|| sites.value(i).to_string());
                    (ids.value(i), site)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn new_columns_and_a_wider_type_evolve_the_table_and_earlier_rows_read_null() {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let first = land(&lander, "a", "events", 1, evolving_batch(&[1], false, None)).await;
    lander.flush().await;
    assert_eq!(first.await, Ok(Verdict::Committed));
    let before = lake.table("events").await;
    let old_schema = before.metadata().current_schema_id();

    let wider = evolving_batch(&[2, 3_000_000_000], true, Some(&["berlin", "oslo"]));
    let second = land(&lander, "a", "events", 2, wider).await;
    lander.flush().await;
    assert_eq!(second.await, Ok(Verdict::Committed));

    let table = lake.table("events").await;
    let meta = table.metadata();
    let schema = meta.current_schema();
    assert_ne!(meta.current_schema_id(), old_schema);
    assert_eq!(
        *schema.field_by_name("id").expect("id").field_type,
        iceberg::spec::Type::Primitive(iceberg::spec::PrimitiveType::Long)
    );
    assert!(!schema.field_by_name("site").expect("site").required);
    // The snapshot before the change still names the schema it was written with.
    let first_snapshot = meta
        .snapshots()
        .min_by_key(|s| s.sequence_number())
        .expect("snapshot");
    assert_eq!(first_snapshot.schema_id(), Some(old_schema));
    assert_eq!(
        ids_and_sites(&lake).await,
        [
            (1, None),
            (2, Some("berlin".into())),
            (3_000_000_000, Some("oslo".into()))
        ]
    );
}

#[tokio::test]
async fn batches_waiting_for_a_commit_are_reshaped_when_the_table_evolves() {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let create = land(&lander, "a", "events", 1, evolving_batch(&[1], false, None)).await;
    lander.flush().await;
    assert_eq!(create.await, Ok(Verdict::Committed));
    // Both wait for the next commit: the second evolves the table under the first.
    let waiting = land(&lander, "a", "events", 2, evolving_batch(&[2], false, None)).await;
    let new = land(
        &lander,
        "b",
        "events",
        1,
        evolving_batch(&[3], true, Some(&["x"])),
    )
    .await;
    lander.flush().await;
    assert_eq!(waiting.await, Ok(Verdict::Committed));
    assert_eq!(new.await, Ok(Verdict::Committed));
    assert_eq!(
        ids_and_sites(&lake).await,
        [(1, None), (2, None), (3, Some("x".into()))]
    );
}

#[tokio::test]
async fn a_strict_stream_refuses_new_columns_and_keeps_its_own() {
    let lake = TestLake::new().await;
    let strict = events_kept_so(super::StreamConfig {
        schema: super::SchemaPolicy::Strict,
        ..Default::default()
    });
    let lander = lake.lander_for(strict, InFlight::default());
    let first = land(&lander, "a", "events", 1, evolving_batch(&[1], true, None)).await;
    lander.flush().await;
    assert_eq!(first.await, Ok(Verdict::Committed));
    let new = land(
        &lander,
        "a",
        "events",
        2,
        evolving_batch(&[2], true, Some(&["x"])),
    )
    .await;
    lander.flush().await;
    match new.await {
        Ok(Verdict::Quarantined(reason)) => {
            assert!(
                reason.contains("strict") && reason.contains("site"),
                "{reason}"
            )
        }
        other => panic!("expected quarantine, got {other:?}"),
    }
    assert_eq!(quarantined(&lake, "events").await.len(), 1);
    let table = lake.table("events").await;
    assert!(
        table
            .metadata()
            .current_schema()
            .field_by_name("site")
            .is_none()
    );
    assert_eq!(table.metadata().schemas_iter().count(), 1);
}

#[tokio::test]
async fn two_processors_adding_the_same_column_at_once_make_one_schema_change() {
    let lake = TestLake::new().await;
    // Two landers with their own commit locks: two processors on one catalog.
    let (one, two) = (lake.lander(), lake.lander());
    let create = land(&one, "a", "events", 1, evolving_batch(&[1], true, None)).await;
    one.flush().await;
    assert_eq!(create.await, Ok(Verdict::Committed));
    let (x, y) = tokio::join!(
        land(
            &one,
            "a",
            "events",
            2,
            evolving_batch(&[2], true, Some(&["x"]))
        ),
        land(
            &two,
            "b",
            "events",
            1,
            evolving_batch(&[3], true, Some(&["y"]))
        ),
    );
    tokio::join!(one.flush(), two.flush());
    assert_eq!(x.await, Ok(Verdict::Committed));
    assert_eq!(y.await, Ok(Verdict::Committed));
    let table = lake.table("events").await;
    assert_eq!(
        table.metadata().schemas_iter().count(),
        2,
        "one change, made once"
    );
    assert_eq!(
        ids_and_sites(&lake).await,
        [(1, None), (2, Some("x".into())), (3, Some("y".into()))]
    );
}

/// The batches kept in `stream`'s quarantine table.
async fn quarantined(lake: &TestLake, stream: &str) -> Vec<super::quarantine::Quarantined> {
    let ident = iceberg::TableIdent::from_strs([
        super::quarantine::NAMESPACE,
        &super::quarantine::table_name(stream),
    ])
    .expect("ident");
    let table = lake
        .catalog
        .load_table(&ident)
        .await
        .expect("quarantine table");
    let files = lake::live_files(&table).await.expect("files");
    lake::read_data_files(&table, &files)
        .await
        .expect("read")
        .iter()
        .flat_map(|b| super::quarantine::read(b).expect("quarantine rows"))
        .collect()
}

#[tokio::test]
async fn a_batch_of_an_incompatible_type_is_quarantined_acknowledged_and_marked_once() {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let first = land(&lander, "a", "events", 1, evolving_batch(&[1], true, None)).await;
    lander.flush().await;
    assert_eq!(first.await, Ok(Verdict::Committed));
    let text = RecordBatch::try_from_iter(vec![(
        "id",
        Arc::new(arrow_array::StringArray::from(vec!["two", "three"])) as arrow_array::ArrayRef,
    )])
    .expect("batch");
    let v = land(&lander, "a", "events", 2, text.clone()).await;
    lander.flush().await;
    match v.await {
        Ok(Verdict::Quarantined(reason)) => assert!(reason.contains("\"id\""), "{reason}"),
        other => panic!("expected quarantine, got {other:?}"),
    }
    let kept = quarantined(&lake, "events").await;
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].agent.as_str(), kept[0].seq), ("a", 2));
    assert_eq!(
        kept[0].batch().expect("decodes"),
        text,
        "the rows as they arrived"
    );
    assert_eq!(kept[0].checkpoint.as_deref(), Some("ckpt-2"));
    // The bronze table records the batch as taken, with its checkpoint: the agent resumes
    // after it, and a resend is a duplicate that is not quarantined twice.
    lander.flush().await;
    assert_eq!(
        lander.committed_mark("a", "events").await.expect("mark"),
        (2, Some("ckpt-2".to_string()))
    );
    let again = land(&lander, "a", "events", 2, text).await;
    lander.flush().await;
    assert_eq!(again.await, Ok(Verdict::Duplicate));
    assert_eq!(quarantined(&lake, "events").await.len(), 1);
    // Later batches land, with no sequence gap reported.
    let next = land(&lander, "a", "events", 3, evolving_batch(&[3], true, None)).await;
    lander.flush().await;
    assert_eq!(next.await, Ok(Verdict::Committed));
    assert_eq!(sorted_ids(&lake).await, [1, 3]);
}

/// The `id`s of table `events`, sorted.
async fn sorted_ids(lake: &TestLake) -> Vec<i64> {
    let table = lake.table("events").await;
    let files = lake::live_files(&table).await.expect("files");
    let mut ids = crate::testing::ids_in(&table, &files).await;
    ids.sort();
    ids
}

#[tokio::test]
async fn replay_after_a_config_change_lands_quarantined_rows_once_and_in_order() {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    let text = |values: &[&str]| {
        RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(arrow_array::StringArray::from(values.to_vec())) as arrow_array::ArrayRef,
        )])
        .expect("batch")
    };
    let first = land(&lander, "a", "events", 1, evolving_batch(&[1], true, None)).await;
    lander.flush().await;
    assert_eq!(first.await, Ok(Verdict::Committed));
    let mut verdicts = Vec::new();
    for (seq, values) in [(2, &["2", "3"][..]), (3, &["x"][..]), (4, &["4"][..])] {
        verdicts.push(land(&lander, "a", "events", seq, text(values)).await);
    }
    lander.flush().await;
    for v in verdicts {
        assert!(matches!(v.await, Ok(Verdict::Quarantined(_))));
    }
    // Nothing fits yet: the first is refused, the rest wait behind it.
    let report = super::replay::replay(lake.catalog.as_ref(), &lander, "events")
        .await
        .expect("replay");
    assert_eq!((report.batches, report.replayed), (3, 0));
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.held_back, 2);
    assert_eq!(sorted_ids(&lake).await, [1]);

    // The config now converts text: "2" and "3" land; "x" still does not, and holds "4".
    let coerce = events_kept_so(super::StreamConfig {
        coerce: true,
        ..Default::default()
    });
    for run in 0..2 {
        let fixed = lake.lander_for(coerce.clone(), InFlight::default());
        let report = super::replay::replay(lake.catalog.as_ref(), &fixed, "events")
            .await
            .expect("replay");
        assert_eq!(
            (report.replayed, report.already, report.held_back),
            if run == 0 { (1, 0, 1) } else { (0, 1, 1) },
            "run {run}: {report:?}"
        );
        assert_eq!(report.refused.len(), 1);
        assert_eq!(report.refused[0].1, 3);
        assert_eq!(sorted_ids(&lake).await, [1, 2, 3], "run {run}");
    }
}

#[tokio::test]
async fn a_configured_partitioning_moves_an_existing_table_even_when_an_agent_asks_its_mark_first()
{
    let lake = TestLake::new().await;
    let ts = |day: i64| {
        RecordBatch::try_from_iter(vec![(
            "ts",
            Arc::new(
                arrow_array::TimestampMicrosecondArray::from(vec![day * 86_400_000_000])
                    .with_timezone("UTC"),
            ) as arrow_array::ArrayRef,
        )])
        .expect("batch")
    };
    let first = lake.lander();
    let v = land(&first, "a", "events", 1, ts(1)).await;
    first.flush().await;
    assert_eq!(v.await, Ok(Verdict::Committed));
    let spec = |t: &iceberg::table::Table| {
        t.metadata()
            .default_partition_spec()
            .fields()
            .iter()
            .map(|f| f.transform)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        spec(&lake.table("events").await),
        [iceberg::spec::Transform::Day]
    );

    let hourly = events_kept_so(super::StreamConfig {
        partition: Some(vec![
            crate::lake::partition::PartitionField::try_from("hour(ts)".to_string())
                .expect("field"),
        ]),
        ..Default::default()
    });
    let second = lake.lander_for(hourly, InFlight::default());
    assert_eq!(
        second.committed_mark("a", "events").await.expect("mark").0,
        1
    );
    let v = land(&second, "a", "events", 2, ts(2)).await;
    second.flush().await;
    assert_eq!(v.await, Ok(Verdict::Committed));
    let table = lake.table("events").await;
    assert_eq!(spec(&table), [iceberg::spec::Transform::Hour]);
    assert_eq!(table.metadata().partition_specs_iter().count(), 2);
    let files = lake::live_files_by_spec(&table).await.expect("files");
    let mut specs: Vec<i32> = files.iter().map(|(s, _)| *s).collect();
    specs.sort();
    assert_eq!(
        specs,
        [0, 1],
        "the old file keeps its spec, the new one has the new"
    );
}

/// The streams of a lander whose `events` stream is kept as `cfg` says.
fn events_kept_so(cfg: super::StreamConfig) -> super::Streams {
    super::Streams(Arc::new([("events".to_string(), cfg)].into()))
}

//! Commits on a lake in a temporary directory: appends, rewrites, merges, conflicts.

use super::*;

fn props(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn what_a_snapshot_carries_forward() {
    let prev = props(&[
        (MARKS_KEY, "{\"seq\":{\"a\":1}}"),
        (MARKS_DELTA_KEY, "{\"seq\":{\"a\":1}}"),
        (COMMIT_ID_KEY, "c1"),
        ("sluice.compaction", "compact-1"),
        ("sluice.seq.a", "1"),
        ("sluice.model.watermark.bronze.x", "7"),
        ("added-records", "10"),
    ]);
    let compaction = carried(&prev, &props(&[("sluice.compaction", "compact-2")]));
    assert_eq!(
        compaction,
        props(&[
            (MARKS_KEY, "{\"seq\":{\"a\":1}}"),
            ("sluice.model.watermark.bronze.x", "7")
        ]),
        "the base and watermarks are carried; per-commit keys and the earlier layout are not"
    );
    let model = carried(&prev, &props(&[("sluice.model.run", "r")]));
    assert!(!model.keys().any(|k| k.starts_with(MODEL_PREFIX)));
    // A table of the earlier layout keeps its marks until the lander writes a base.
    let legacy = props(&[("sluice.seq.a", "1"), ("sluice.ckpt.a", "x")]);
    assert_eq!(carried(&legacy, &HashMap::new()), legacy);
}

use crate::testing::{TestLake, expect_committed, ids_in, land_batch, metadata_files};

/// `bronze.events` after `n` one-row commits (`id` 1 to `n`), one data file each.
async fn events(n: u64) -> TestLake {
    let lake = TestLake::new().await;
    let lander = lake.lander();
    for seq in 1..=n {
        let v = land_batch(&lander, "edge", seq).await;
        lander.flush().await;
        expect_committed(v, &format!("batch {seq}")).await;
    }
    lake
}

/// The live files of `table` that hold one row, by its `id`.
async fn files_by_id(table: &Table) -> std::collections::BTreeMap<i64, DataFile> {
    let mut out = std::collections::BTreeMap::new();
    for f in crate::lake::live_files(table).await.expect("files") {
        if let [id] = ids_in(table, std::slice::from_ref(&f)).await[..] {
            out.insert(id, f);
        }
    }
    out
}

/// Every `id` in the table, sorted.
async fn all_ids(table: &Table) -> Vec<i64> {
    let files = crate::lake::live_files(table).await.expect("files");
    let mut ids = ids_in(table, &files).await;
    ids.sort_unstable();
    ids
}

fn paths(files: &[DataFile]) -> HashSet<String> {
    files.iter().map(|f| f.file_path().to_string()).collect()
}

/// The rewrite compaction makes of `files`: their rows in one new file, replacing them.
async fn rewrite(table: &Table, files: &[DataFile]) -> Change {
    let batches = crate::lake::read_data_files(table, files)
        .await
        .expect("read");
    let merged = crate::lake::write_data_files(
        table,
        &batches,
        &format!("rewrite-{}", uuid::Uuid::now_v7()),
        crate::lake::Compression::Zstd,
        None,
    )
    .await
    .expect("write");
    assert_eq!(merged.len(), 1);
    Change {
        operation: Operation::Replace,
        add: merged,
        spec_id: table.metadata().default_partition_spec_id(),
        remove: paths(files),
        properties: props(&[("sluice.compaction", "rewrite-test")]),
    }
}

/// A new data file of `table` holding one row, `id`.
async fn one_row(table: &Table, id: i64) -> Vec<DataFile> {
    let schema = crate::lake::table_arrow_schema(table).expect("schema");
    let ids = arrow_array::Int64Array::from(vec![id]);
    let columns = schema
        .fields()
        .iter()
        .map(|f| arrow_cast::cast(&ids, f.data_type()).expect("cast"))
        .collect();
    let batch = arrow_array::RecordBatch::try_new(schema, columns).expect("batch");
    crate::lake::write_data_files(
        table,
        &[batch],
        &format!("other-{}", uuid::Uuid::now_v7()),
        crate::lake::Compression::Zstd,
        None,
    )
    .await
    .expect("write")
}

fn summary_of(table: &Table) -> HashMap<String, String> {
    table
        .metadata()
        .current_snapshot()
        .expect("snapshot")
        .summary()
        .additional_properties
        .clone()
}

#[tokio::test]
async fn a_replace_keeps_the_rows_lists_exactly_the_live_files_and_updates_the_totals() {
    let lake = events(4).await;
    let table = lake.table("events").await;
    let before = summary_of(&table);
    let by_id = files_by_id(&table).await;
    let gone = [by_id[&1].clone(), by_id[&2].clone()];
    let change = rewrite(&table, &gone).await;
    let done = commit(&lake.swap, &Head::new(table.clone()), &change)
        .await
        .expect("replace");

    let after = lake.table("events").await;
    assert_eq!(after.metadata_location(), done.head.location());
    let current = after.metadata().current_snapshot().expect("snapshot");
    assert_eq!(current.summary().operation, Operation::Replace);
    assert_eq!(
        current.parent_snapshot_id(),
        table.metadata().current_snapshot_id()
    );
    let live = crate::lake::live_files(&after).await.expect("files");
    let mut want = paths(&[by_id[&3].clone(), by_id[&4].clone()]);
    want.extend(paths(&change.add));
    assert_eq!(paths(&live), want, "exactly the kept files and the new one");
    assert_eq!(live.len(), 3);
    assert_eq!(all_ids(&after).await, [1, 2, 3, 4], "every row once");

    let summary = summary_of(&after);
    let n = |s: &HashMap<String, String>, k: &str| -> i64 {
        s.get(k).and_then(|v| v.parse().ok()).expect(k)
    };
    let size =
        |files: &[DataFile]| -> i64 { files.iter().map(|f| f.file_size_in_bytes() as i64).sum() };
    assert_eq!(n(&summary, "added-data-files"), 1);
    assert_eq!(n(&summary, "deleted-data-files"), 2);
    assert_eq!(n(&summary, "added-records"), 2);
    assert_eq!(n(&summary, "deleted-records"), 2);
    assert_eq!(n(&summary, "total-records"), 4, "as many rows as before");
    assert_eq!(n(&before, "total-records"), 4);
    assert_eq!(n(&summary, "total-data-files"), 3);
    assert_eq!(n(&summary, "added-files-size"), size(&change.add));
    assert_eq!(n(&summary, "removed-files-size"), size(&gone));
    assert_eq!(
        n(&summary, "total-files-size"),
        n(&before, "total-files-size") - size(&gone) + size(&change.add)
    );
    assert_eq!(n(&summary, "total-files-size"), size(&live));
    // The lander's marks are carried past a rewrite; the rewrite's own key is there.
    assert!(before.contains_key(MARKS_KEY));
    assert_eq!(summary.get(MARKS_KEY), before.get(MARKS_KEY));
    assert_eq!(
        summary.get("sluice.compaction").map(String::as_str),
        Some("rewrite-test")
    );
}

#[tokio::test]
async fn a_replace_of_a_file_no_longer_live_fails_and_leaves_the_table_as_it_was() {
    let lake = events(4).await;
    let first = lake.table("events").await;
    let by_id = files_by_id(&first).await;
    let stale = Head::new(first.clone());
    let change = rewrite(&first, &[by_id[&1].clone(), by_id[&2].clone()]).await;
    commit(&lake.swap, &stale, &change)
        .await
        .expect("first rewrite");
    let table = lake.table("events").await;
    let manifests = metadata_files(&table, ".avro");

    // Another rewrite got to file 2 first: seen from the table as it is now.
    let late = rewrite(&table, &[by_id[&2].clone(), by_id[&3].clone()]).await;
    let err = commit(&lake.swap, &Head::new(table.clone()), &late)
        .await
        .expect_err("file 2 is gone");
    match &err {
        CommitError::Missing(path) => assert_eq!(path, by_id[&2].file_path()),
        other => panic!("expected Missing, got {other:?}"),
    }
    assert!(
        err.retryable(),
        "planned again on the new state, it may pass"
    );
    assert_eq!(err.reason(), "conflict");
    let now = lake.table("events").await;
    assert_eq!(now.metadata_location(), table.metadata_location());
    assert_eq!(
        metadata_files(&now, ".avro"),
        manifests,
        "nothing left behind"
    );

    // Seen from a stale head, file 1 still looks live: the swap refuses it.
    let stale_change = rewrite(&first, &[by_id[&1].clone(), by_id[&3].clone()]).await;
    let err = commit(&lake.swap, &stale, &stale_change)
        .await
        .expect_err("the head is stale");
    assert!(matches!(err, CommitError::Conflict), "{err:?}");
    assert!(err.retryable());
    assert_eq!(err.reason(), "conflict");
    let now = lake.table("events").await;
    assert_eq!(now.metadata_location(), table.metadata_location());
    assert_eq!(
        metadata_files(&now, ".avro"),
        manifests,
        "nothing left behind"
    );
    assert_eq!(all_ids(&now).await, [1, 2, 3, 4]);
    assert_eq!(crate::lake::live_files(&now).await.expect("files").len(), 3);
}

#[tokio::test]
async fn an_append_racing_a_replace_is_not_lost() {
    let lake = events(4).await;
    let table = lake.table("events").await;
    let by_id = files_by_id(&table).await;
    // Compaction plans on this head; meanwhile the lander appends row 5.
    let planned = Head::new(table.clone());
    let change = rewrite(&table, &[by_id[&1].clone(), by_id[&2].clone()]).await;
    let lander = lake.lander();
    let v = land_batch(&lander, "edge", 5).await;
    lander.flush().await;
    expect_committed(v, "row 5").await;
    let err = commit(&lake.swap, &planned, &change)
        .await
        .expect_err("the append went first");
    assert!(matches!(err, CommitError::Conflict), "{err:?}");
    assert_eq!(all_ids(&lake.table("events").await).await, [1, 2, 3, 4, 5]);
    // Retried on the table as it is now: the rewrite and the append both stand.
    let reloaded = planned.reloaded(lake.table("events").await);
    let done = commit(&lake.swap, &reloaded, &change)
        .await
        .expect("retried rewrite");
    let now = lake.table("events").await;
    assert_eq!(all_ids(&now).await, [1, 2, 3, 4, 5]);
    let live = paths(&crate::lake::live_files(&now).await.expect("files"));
    assert!(!live.contains(by_id[&1].file_path()) && !live.contains(by_id[&2].file_path()));
    assert_eq!(live.len(), 4, "3, 4, 5 and the rewrite");

    // The other way round: an append planned on a head a rewrite has moved past.
    let by_id = files_by_id(&now).await;
    let second = rewrite(&now, &[by_id[&3].clone(), by_id[&4].clone()]).await;
    commit(&lake.swap, &done.head, &second)
        .await
        .expect("second rewrite");
    let six = one_row(&now, 6).await;
    let append = Change::append(six, 0, HashMap::new());
    let err = commit(&lake.swap, &done.head, &append)
        .await
        .expect_err("the rewrite went first");
    assert!(matches!(err, CommitError::Conflict), "{err:?}");
    let reloaded = done.head.reloaded(lake.table("events").await);
    commit(&lake.swap, &reloaded, &append)
        .await
        .expect("retried append");
    let now = lake.table("events").await;
    assert_eq!(all_ids(&now).await, [1, 2, 3, 4, 5, 6]);
    let live = paths(&crate::lake::live_files(&now).await.expect("files"));
    assert!(!live.contains(by_id[&3].file_path()) && !live.contains(by_id[&4].file_path()));
    assert_eq!(live.len(), 4, "the two rewrites, 5 and 6");
}

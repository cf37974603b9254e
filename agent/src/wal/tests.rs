use std::io::Write;

use bytes::Bytes;

use super::record::{BODY_FIXED, RECORD_HEADER};
use super::*;

fn batch(i: u32, checkpoint: Option<&str>) -> ReadyBatch {
    ReadyBatch {
        ipc: Bytes::from(vec![i as u8; 1000 + i as usize]),
        rows: i,
        schema_fingerprint: 42,
        created_at_us: i64::from(i),
        checkpoint: checkpoint.map(str::to_string),
    }
}

fn opts(segment_size: u64, max_size: u64, when_full: WhenFull) -> WalOptions {
    WalOptions {
        segment_size,
        max_size,
        when_full,
    }
}

async fn read_all(reader: &mut WalReader, n: usize) -> Vec<WalRecord> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .expect("record in time")
            .expect("readable")
            .expect("a record");
        out.push(r);
    }
    out
}

#[tokio::test]
async fn appends_are_read_back_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(8 * 1024, 1 << 30, WhenFull::Block);
    {
        let (w, h, mut r, rec) = open(dir.path(), o.clone(), Default::default()).unwrap();
        assert!(rec.checkpoint.is_none() && rec.base.is_none());
        for i in 1..=20 {
            let cp = format!("cp{i}");
            assert_eq!(w.append(batch(i, Some(&cp))).await.unwrap(), u64::from(i));
        }
        let got = read_all(&mut r, 20).await;
        assert_eq!(
            got.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(got[4].batch.ipc, batch(5, None).ipc);
        assert_eq!(got[4].batch.checkpoint.as_deref(), Some("cp5"));
        assert!(
            fs::read_dir(dir.path()).unwrap().count() > 3,
            "several segments"
        );
        h.set_base(100, false).unwrap();
        h.ack(12).unwrap();
    }
    // Reopened: the unacknowledged records are still there, numbering continues.
    let (w, h, mut r, rec) = open(dir.path(), o, Default::default()).unwrap();
    assert_eq!(rec.base, Some(100));
    assert_eq!(rec.checkpoint, Some(Some("cp20".into())));
    assert_eq!(rec.pending_records, 8);
    assert_eq!(rec.pending_rows, (13..=20).sum::<u64>());
    let got = read_all(&mut r, 8).await;
    assert_eq!(got.first().unwrap().lsn, 13);
    assert_eq!(w.append(batch(21, None)).await.unwrap(), 21);
    assert_eq!(read_all(&mut r, 1).await[0].lsn, 21);
    // Everything acknowledged: only the newest segment stays, and the state keeps the
    // checkpoint for a restart.
    h.ack(21).unwrap();
    drop((w, h, r));
    let (_w, _h, _r, rec) = open(
        dir.path(),
        opts(8 * 1024, 1 << 30, WhenFull::Block),
        Default::default(),
    )
    .unwrap();
    assert_eq!(rec.pending_records, 0);
    assert_eq!(rec.checkpoint, Some(Some("cp20".into())));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_a_damaged_segment_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(4 * 1024, 1 << 30, WhenFull::Block);
    {
        let (w, _h, _r, _) = open(dir.path(), o.clone(), Default::default()).unwrap();
        for i in 1..=12 {
            w.append(batch(i, None)).await.unwrap();
        }
    }
    let mut segs: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3);
    // Flip a byte inside the first segment's second record; leave half a record at the end.
    let mut first = fs::read(&segs[0]).unwrap();
    let second_record = SEGMENT_MAGIC.len() + RECORD_HEADER + BODY_FIXED + 1001 + 20;
    first[second_record] ^= 0xff;
    fs::write(&segs[0], first).unwrap();
    let last = segs.last().unwrap();
    let mut f = OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&[7u8; 50]).unwrap();
    drop(f);

    let (w, _h, mut r, rec) = open(dir.path(), o, Default::default()).unwrap();
    assert_eq!(rec.corrupt_records, 1);
    assert_eq!(rec.torn_bytes, 50);
    let first_seg_records = {
        let mut n = 0;
        let mut lsns = Vec::new();
        for rcd in read_all(&mut r, 1).await {
            lsns.push(rcd.lsn);
            n += 1;
        }
        assert_eq!(lsns, vec![1]);
        n
    };
    assert_eq!(first_seg_records, 1);
    // The next record read is the first of the second segment (lsn 2 is lost).
    let next = read_all(&mut r, 1).await[0].lsn;
    assert!(next > 2);
    // Appends continue after the cut tail.
    assert_eq!(w.append(batch(13, None)).await.unwrap(), 13);
}

#[tokio::test]
async fn drop_oldest_frees_space_and_counts_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let d = dropped.clone();
    let metrics = WalMetricsSink {
        on_dropped: Some(Arc::new(move |n| {
            d.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })),
        ..Default::default()
    };
    let (w, h, mut r, _) = open(
        dir.path(),
        opts(4 * 1024, 12 * 1024, WhenFull::DropOldest),
        metrics,
    )
    .unwrap();
    for i in 1..=40 {
        w.append(batch(i, None)).await.unwrap();
        assert!(h.size() <= 12 * 1024, "cap kept: {}", h.size());
    }
    let lost = dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(lost > 0);
    // The reader skips what was dropped and reads the rest, up to the newest.
    let mut rows = 0u64;
    let mut last = 0;
    while last < 40 {
        let rec = read_all(&mut r, 1).await.remove(0);
        rows += u64::from(rec.batch.rows);
        last = rec.lsn;
    }
    assert_eq!(rows + lost, (1..=40).sum::<u64>());
}

#[tokio::test]
async fn block_waits_for_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h, mut r, _) = open(
        dir.path(),
        opts(4 * 1024, 12 * 1024, WhenFull::Block),
        Default::default(),
    )
    .unwrap();
    let writer = tokio::spawn(async move {
        for i in 1..=40 {
            w.append(batch(i, None)).await.unwrap();
        }
    });
    // Without acks the writer stalls under the cap.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!writer.is_finished());
    assert!(h.size() <= 12 * 1024);
    for i in 1..=40u64 {
        let rec = read_all(&mut r, 1).await.remove(0);
        assert_eq!(rec.lsn, i);
        h.ack(i).unwrap();
    }
    writer.await.unwrap();
}

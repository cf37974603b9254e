//! `sluice-agent bench-wal`: the write-ahead log's append throughput with group-committed
//! fsyncs, as the agent uses it (a writer per stream feeding one log, a reader acking what
//! it reads so segments are deleted as they would be after the processor's acks).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;

use crate::pipeline::ReadyBatch;
use crate::wal::{self, WalMetricsSink, WalOptions, WhenFull};

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct WalBenchArgs {
    /// Directory for the log (on the disk to measure); a temporary directory under it is
    /// used and removed.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Total MiB to append.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Size of one batch, KiB.
    #[arg(long, default_value_t = 1024)]
    pub batch_kib: u64,
    /// Concurrent appenders (a group commit takes what they queued meanwhile).
    #[arg(long, default_value_t = 4)]
    pub writers: u64,
}

pub async fn run(args: WalBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile_dir(&args.dir)?;
    let opts = WalOptions {
        segment_size: 64 << 20,
        max_size: 4 << 30,
        when_full: WhenFull::Block,
    };
    let syncs = Arc::new(AtomicU64::new(0));
    let s = syncs.clone();
    let sink = WalMetricsSink {
        on_sync: Some(Arc::new(move |_, _| {
            s.fetch_add(1, Ordering::Relaxed);
        })),
        ..Default::default()
    };
    let (writer, handle, reader, _) = wal::open(&tmp, opts, sink)?;
    let batch_bytes = (args.batch_kib << 10) as usize;
    // Random-looking bytes: the log does not compress, but the page cache should not see
    // one repeated page either.
    let payload: Vec<u8> = (0..batch_bytes)
        .map(|i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes()[7])
        .collect();
    let payload = Bytes::from(payload);
    let batches = (args.mib << 20) / batch_bytes as u64;
    let per_writer = batches / args.writers.max(1);
    let total = per_writer * args.writers.max(1);

    let mut records = reader.spawn(16)?;
    let acker = tokio::spawn(async move {
        let mut n = 0u64;
        while n < total {
            match records.recv().await {
                Some(Ok(r)) => {
                    n += 1;
                    let h = handle.clone();
                    tokio::task::spawn_blocking(move || h.ack(r.lsn));
                }
                Some(Err(e)) => return Err(anyhow::Error::from(e)),
                None => break,
            }
        }
        Ok(n)
    });

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers.max(1) {
        let writer = writer.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                writer
                    .append(ReadyBatch {
                        ipc: payload.clone(),
                        rows: 1,
                        schema_fingerprint: 0,
                        created_at_us: (w * per_writer + i) as i64,
                        checkpoint: None,
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("appender panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(writer);
    let read = acker.await.context("reader panicked")??;
    let bytes = total * batch_bytes as u64;
    let syncs = syncs.load(Ordering::Relaxed);
    println!(
        "wal append: {} MiB in {total} batches of {} KiB by {} writers: {:.2} s, {:.0} MB/s, {syncs} fsyncs ({:.1} batches per group commit); {read} read back",
        bytes >> 20,
        args.batch_kib,
        args.writers,
        elapsed,
        bytes as f64 / elapsed / 1e6,
        total as f64 / syncs.max(1) as f64,
    );
    std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    Ok(())
}

fn tempfile_dir(parent: &std::path::Path) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!("sluice-wal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

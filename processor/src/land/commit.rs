//! One commit of a table's buffered batches, detached from the lander task: write the data
//! files, then commit them with the marks under the table's lock, and retry until the
//! commit is known to be in the table. Each attempt leaves out what the table's marks show
//! is landed already, so nothing is ever appended twice.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use iceberg::table::Table;
use tokio::time::Instant;

use super::pending::{Landed, Pending};
use crate::lake::conform::conform_batch;
use crate::lake::locks::CommitLocks;
use crate::lake::marks::{self, COMMIT_ID_KEY, Marks, Stored};
use crate::lake::{self, CatalogSwap, Change, CommitError, Compression, Head};
use crate::telemetry::metrics::Metrics;

/// Everything a commit needs, detached from the lander task.
pub(super) struct CommitJob {
    pub(super) swap: CatalogSwap,
    /// The table as the lander last saw it, and its marks.
    pub(super) head: Head,
    pub(super) committed: Stored,
    pub(super) name: String,
    pub(super) compression: Compression,
    pub(super) metrics: Arc<Metrics>,
    pub(super) locks: CommitLocks,
    pub(super) health: sluice_ops::Watch,
}

/// The data files an attempt wrote: what the table held of each batch when it did, the
/// table's layout they were written in, and the files.
type Written = Option<(Vec<Landed>, Layout, Vec<iceberg::spec::DataFile>)>;

/// A table's schema and default partition spec (ids): files are written for one.
type Layout = (i32, i32);

fn layout(table: &Table) -> Layout {
    let meta = table.metadata();
    (meta.current_schema_id(), meta.default_partition_spec_id())
}

impl CommitJob {
    /// Write the data files and commit them; retry until the commit is known to be in the
    /// table. Returns the table and its marks as of the commit, and per batch what the
    /// table held of it before (this commit holds the rest).
    pub(super) async fn commit_until_done(
        &self,
        batches: &[Pending],
        marks: &Marks,
    ) -> (Head, Stored, Vec<Landed>) {
        let commit_id = uuid::Uuid::now_v7();
        let mut head = self.head.clone();
        let mut committed = self.committed.clone();
        let mut files: Written = None;
        let mut attempt = 0u32;
        let mut backoff = Duration::from_millis(100);
        loop {
            attempt += 1;
            let tried = self
                .try_commit(
                    &mut head,
                    &mut committed,
                    &mut files,
                    batches,
                    marks,
                    commit_id,
                    attempt,
                )
                .await;
            match tried {
                Ok(landed) => return (head, committed, landed),
                Err(e) => {
                    self.metrics.commit_failed(&self.name, e.reason());
                    if matches!(e, CommitError::Conflict) {
                        tracing::info!(table = %self.name, attempt, "commit conflict; retrying on the new table state");
                    } else {
                        tracing::error!(table = %self.name, attempt, retry_in = ?backoff, "commit failed: {e}");
                        if e.retryable() {
                            self.health.error(format!("commit failed: {e}"));
                        } else {
                            // Retried still (nothing is acknowledged before it is in), but
                            // only an operator can fix this.
                            self.health.failed(format!("commit failed: {e}"));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                    // The next attempt loads the table under the lock, which also shows
                    // whether this failed attempt did in fact commit.
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_commit(
        &self,
        head: &mut Head,
        committed: &mut Stored,
        files: &mut Written,
        batches: &[Pending],
        marks: &Marks,
        commit_id: uuid::Uuid,
        attempt: u32,
    ) -> Result<Vec<Landed>, CommitError> {
        let held = |m: &Marks| batches.iter().map(|p| p.landed(m)).collect::<Vec<Landed>>();
        let nothing_new = |landed: &[Landed]| landed.iter().all(|l| *l == Landed::All);
        // The files are written before taking the lock (it holds back compaction and
        // models), from what the table lacked when last seen.
        let t0 = Instant::now();
        let mut landed = held(&committed.marks);
        let written_for = layout(head.table());
        if !nothing_new(&landed)
            && files
                .as_ref()
                .is_none_or(|(l, at, _)| *l != landed || *at != written_for)
        {
            // Batches are shaped for the table as the lander saw it; a table that evolved
            // since (another processor added a column) gets them reshaped, so every file
            // is written in the schema it is committed under.
            let schema = lake::table_arrow_schema(head.table())?;
            let data = batches
                .iter()
                .zip(&landed)
                .filter(|(p, _)| p.batch.num_rows() > 0)
                .filter_map(|(p, l)| match l {
                    Landed::All => None,
                    Landed::Leading(0) => Some(p.batch.clone()),
                    Landed::Leading(n) => Some(p.batch.slice(*n, p.batch.num_rows() - n)),
                })
                .map(|b| conform_batch(&b, &schema))
                .collect::<Result<Vec<RecordBatch>, _>>()
                .map_err(|e| {
                    CommitError::Unsupported(format!(
                        "the batches do not fit the table's current schema: {e}"
                    ))
                })?;
            let written = self
                .write_files(head.table(), &data, commit_id, attempt)
                .await?;
            *files = Some((landed.clone(), written_for, written));
        }
        // Compaction and model commits of this process wait while the lander commits.
        let t1 = Instant::now();
        let mut locked = self.locks.lock(&self.name).await;
        let t2 = Instant::now();
        // Under the lock the table cannot move in this process. Whether it moved since the
        // head is one indexed read; only then (and after a failed attempt, which may have
        // gone in) is the table loaded again.
        let ident = head.table().identifier().clone();
        let now_at = self
            .swap
            .location(&ident)
            .await
            .map_err(CommitError::Read)?;
        if attempt > 1 || now_at.as_deref() != head.location() {
            // The metadata file just read from the catalog, not a second lookup.
            let location = now_at.ok_or_else(|| {
                iceberg::Error::new(
                    iceberg::ErrorKind::TableNotFound,
                    format!("table {ident} is no longer in the catalog"),
                )
            })?;
            // Maintenance and models of this process leave the table they committed with the
            // lock: parsed already.
            let now = match locked.head_at(&location) {
                Some(now) => now,
                None => {
                    let metadata =
                        iceberg::spec::TableMetadata::read_from(head.table().file_io(), &location)
                            .await?;
                    head.reloaded(lake::snapshot::head_table(
                        head.table(),
                        metadata,
                        location,
                    )?)
                }
            };
            let same_snapshot = now.table().metadata().current_snapshot_id()
                == head.table().metadata().current_snapshot_id();
            // A commit that changed only the metadata (expiry) leaves the marks as they were.
            if !same_snapshot {
                *committed = marks::load(now.table()).await?;
            }
            *head = now;
            if attempt > 1 && holds_commit(head.table(), commit_id) {
                // An earlier attempt reported failure but did commit.
                tracing::warn!(table = %self.name, attempt, "an earlier attempt of this commit had succeeded; not repeating it");
                return Ok(landed);
            }
            if layout(head.table()) != written_for {
                tracing::info!(table = %self.name, attempt, "the table's schema or partitioning changed; writing the files again");
                return Err(CommitError::Conflict);
            }
            let now = held(&committed.marks);
            if now != landed {
                // The table moved: an earlier attempt that reported failure did commit, or
                // another processor landed some of these rows. Never append them twice.
                landed = now;
                if nothing_new(&landed) {
                    tracing::warn!(table = %self.name, attempt, "the table already holds every batch of this commit; not repeating it");
                    return Ok(landed);
                }
                tracing::info!(table = %self.name, attempt, "the table already holds some rows of this commit; writing the rest again");
                return Err(CommitError::Conflict);
            }
        }
        if nothing_new(&landed) {
            tracing::debug!(table = %self.name, "the table already holds every batch of this commit");
            return Ok(landed);
        }
        let data_files = files
            .as_ref()
            .map(|(_, _, f)| f.clone())
            .unwrap_or_default();
        let spec_id = files.as_ref().map_or(written_for.1, |(_, at, _)| at.1);
        let t3 = Instant::now();
        let staged = marks::stage(head.table(), committed, marks, &commit_id.to_string()).await?;
        let t4 = Instant::now();
        let mut props = staged.properties;
        props.insert(COMMIT_ID_KEY.to_string(), commit_id.to_string());
        match lake::snapshot::commit(
            &self.swap,
            head,
            &Change::append(data_files, spec_id, props),
        )
        .await
        {
            Ok(done) => {
                locked.committed(&done.head);
                let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
                tracing::debug!(
                    table = %self.name,
                    write_ms = ms(t0, t1),
                    lock_ms = ms(t1, t2),
                    reload_ms = ms(t2, t3),
                    marks_ms = ms(t3, t4),
                    commit_ms = ms(t4, Instant::now()),
                    "commit timings"
                );
                *head = done.head;
                *committed = staged.stored;
                if done.merged > 0 {
                    self.metrics.manifests_merged(&self.name, done.merged);
                }
                Ok(landed)
            }
            Err(e) => {
                if !matches!(e, CommitError::Unknown(_)) {
                    for path in &staged.files {
                        if let Err(e) = head.table().file_io().delete(path).await {
                            tracing::warn!(%path, "cannot remove the marks of a failed commit: {e}");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    async fn write_files(
        &self,
        table: &Table,
        batches: &[RecordBatch],
        commit_id: uuid::Uuid,
        attempt: u32,
    ) -> Result<Vec<iceberg::spec::DataFile>, iceberg::Error> {
        lake::write_data_files(
            table,
            batches,
            &format!("{commit_id}-{attempt}"),
            self.compression,
            None,
        )
        .await
    }
}

/// True if `commit_id` is the id of one of the table's recent snapshots.
fn holds_commit(table: &Table, commit_id: uuid::Uuid) -> bool {
    let meta = table.metadata();
    let id = commit_id.to_string();
    let mut next = meta.current_snapshot();
    // Other commits may have followed it; a few hundred covers any retry's window.
    for _ in 0..256 {
        let Some(snap) = next else { break };
        if snap.summary().additional_properties.get(COMMIT_ID_KEY) == Some(&id) {
            return true;
        }
        next = snap
            .parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id));
    }
    false
}

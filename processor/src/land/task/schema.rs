//! The lander's side of schema and partition evolution: a table evolved so a batch fits
//! it, taken as the catalog has it, and moved to its stream's configured partitioning.

use iceberg::table::Table;
use tokio::time::Instant;

use super::super::columns::{Plan, plan};
use super::LanderTask;
use crate::lake::marks;
use crate::lake::{self, CommitError, Head};

impl LanderTask {
    /// Keep `table` as the one under `key`, moved to its stream's configured partitioning
    /// if it has another.
    pub(super) async fn keep_table(&mut self, key: &str, table: Table) -> Result<(), CommitError> {
        let state = self.new_state(key, table).await?;
        self.tables.insert(key.to_string(), state);
        if let Some(fields) = self.streams.get(key).partition
            && let Err(e) = self.repartition(key, &fields).await
        {
            self.tables.remove(key);
            return Err(e);
        }
        Ok(())
    }

    /// Move the table under `key` to partition spec `fields` if its default is another;
    /// its files keep the spec they were written under.
    pub(super) async fn repartition(
        &mut self,
        key: &str,
        fields: &[lake::partition::PartitionField],
    ) -> Result<(), CommitError> {
        let Some(state) = self.tables.get(key) else {
            return Ok(());
        };
        if lake::partition::same(state.head.table(), fields) {
            return Ok(());
        }
        let (name, ident) = (state.name.clone(), state.head.table().identifier().clone());
        let locked = self.locks.lock(&name).await;
        let mut attempts = 0;
        let head = loop {
            let head = locked
                .head(&self.swap, self.catalog.as_ref(), &ident)
                .await?;
            if lake::partition::same(head.table(), fields) {
                break head;
            }
            let spec = lake::partition::unbound(head.table().metadata().current_schema(), fields)
                .map_err(CommitError::Unsupported)?;
            match lake::evolve::commit_spec(&self.swap, &head, spec).await {
                Ok(done) => {
                    tracing::info!(table = %name, spec = %lake::partition::describe(fields), "table partitioning changed");
                    break done;
                }
                Err(CommitError::Conflict) if attempts < 20 => attempts += 1,
                Err(e) => return Err(e),
            }
        };
        drop(locked);
        self.adopt(key, head).await
    }

    /// Evolve `stream`'s table so that batches of `batch` schema fit it, as the catalog has
    /// the table now: another processor may have done it already, or changed it otherwise
    /// (then the batch is planned again on the table as it is). A conflicting commit is
    /// retried on the new table state. The lander adopts the table either way.
    pub(super) async fn evolve(
        &mut self,
        stream: &str,
        batch: &arrow_schema::Schema,
    ) -> Result<(), CommitError> {
        let Some(state) = self.tables.get(stream) else {
            return Ok(());
        };
        let name = state.name.clone();
        let ident = state.head.table().identifier().clone();
        let started = Instant::now();
        let mut locked = self.locks.lock(&name).await;
        let mut backoff = std::time::Duration::from_millis(20);
        let head = loop {
            let head = locked
                .head(&self.swap, self.catalog.as_ref(), &ident)
                .await?;
            let schema = lake::table_arrow_schema(head.table())?;
            let Ok(Plan::Evolve(change)) = plan(batch, &schema, false) else {
                // It fits now, or it never will: planned again on this table.
                break head;
            };
            let meta = head.table().metadata();
            let next = lake::evolve::evolved_schema(
                meta.current_schema(),
                meta.last_column_id(),
                &change,
            )?;
            match lake::evolve::commit_schema(&self.swap, &head, next).await {
                Ok(done) => {
                    locked.committed(&done);
                    tracing::info!(table = %name, %change, ms = started.elapsed().as_millis() as u64, "table schema evolved");
                    self.metrics.schema_evolved(&name);
                    break done;
                }
                Err(CommitError::Conflict) => {
                    // Another writer moved the table first: plan again on what it made.
                    self.metrics.commit_failed(&name, "conflict");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        drop(locked);
        self.adopt(stream, head).await
    }

    /// Take `head` (read from the catalog just now) as `stream`'s table: its marks, if it
    /// has commits this lander has not seen, and its schema, if that changed.
    pub(super) async fn adopt(&mut self, stream: &str, head: Head) -> Result<(), CommitError> {
        let Some(state) = self.tables.get_mut(stream) else {
            return Ok(());
        };
        if head.table().metadata().current_snapshot_id()
            != state.head.table().metadata().current_snapshot_id()
        {
            let stored = marks::load(head.table()).await?;
            let seen = std::mem::replace(&mut state.committed, stored);
            state.committed.marks.merge(&seen.marks);
            state.accepted.merge(&state.committed.marks);
        }
        state.adopt_schema(head)?;
        Ok(())
    }
}

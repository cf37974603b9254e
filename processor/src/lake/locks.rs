//! Per-table locks of one processor.
//! - Commit locks: the lander, model runs and maintenance take a table's lock around their
//!   commit, so they queue instead of losing compare-and-swap races to each other. Commits
//!   from other processes are still caught by the catalog's compare-and-swap. The lock
//!   holds the table as the last commit under it left it, so that the next holder does not
//!   parse the table's metadata again when the catalog still points there.
//! - Upkeep locks: snapshot expiry and orphan cleanup of a table take turns, since expiry
//!   removes files that orphan cleanup may be reading the references of.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use iceberg::{Catalog, TableIdent};
use tokio::sync::OwnedMutexGuard;

use crate::lake::{CatalogSwap, CommitError, Head};

/// One async lock per table name (`namespace.table`), created on first use.
#[derive(Clone, Default)]
pub struct CommitLocks {
    tables: Arc<Locks<Option<Head>>>,
    upkeep: Arc<Locks<()>>,
}

type Locks<T> = Mutex<HashMap<String, Arc<tokio::sync::Mutex<T>>>>;

/// `table`'s lock in `locks`, made on first use.
async fn take<T: Default>(locks: &Locks<T>, table: &str) -> OwnedMutexGuard<T> {
    let lock = {
        let mut tables = locks.lock().unwrap_or_else(|e| e.into_inner());
        tables.entry(table.to_string()).or_default().clone()
    };
    lock.lock_owned().await
}

/// A table's commit lock, held: committing is safe from this process until it drops.
pub struct Locked(OwnedMutexGuard<Option<Head>>);

impl Locked {
    /// The table as this process last committed it under this lock, if the catalog still
    /// points at `location`.
    pub fn head_at(&self, location: &str) -> Option<Head> {
        self.0
            .as_ref()
            .filter(|h| h.location() == Some(location))
            .cloned()
    }

    /// The table as the catalog has it now: one indexed read when the last commit under
    /// this lock left it there, else loaded (keeping what the last head knew of its
    /// manifests).
    pub async fn head(
        &self,
        swap: &CatalogSwap,
        catalog: &dyn Catalog,
        ident: &TableIdent,
    ) -> Result<Head, CommitError> {
        let at = swap.location(ident).await.map_err(CommitError::Read)?;
        if let Some(head) = at.as_deref().and_then(|at| self.head_at(at)) {
            return Ok(head);
        }
        let table = catalog.load_table(ident).await?;
        Ok(match self.0.as_ref() {
            Some(last) => last.reloaded(table),
            None => Head::new(table),
        })
    }

    /// Record the table as a commit under this lock left it.
    pub fn committed(&mut self, head: &Head) {
        *self.0 = Some(head.clone());
    }
}

impl CommitLocks {
    /// Wait for `table`'s lock; committing is safe from this process until it drops.
    pub async fn lock(&self, table: &str) -> Locked {
        Locked(take(&self.tables, table).await)
    }

    /// Wait for `table`'s upkeep lock (expiry and orphan cleanup).
    pub async fn upkeep(&self, table: &str) -> OwnedMutexGuard<()> {
        take(&self.upkeep, table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::{self, Change};

    #[tokio::test]
    async fn the_next_holder_gets_the_table_as_the_last_commit_left_it_without_reading_it() {
        let lake = crate::testing::TestLake::new().await;
        lake.create_events(&[]).await;
        let ident = TableIdent::from_strs(["bronze", "events"]).expect("ident");
        let locks = CommitLocks::default();
        let mut locked = locks.lock("bronze.events").await;
        let head = locked
            .head(&lake.swap, lake.catalog.as_ref(), &ident)
            .await
            .expect("loaded");
        let change = Change::append(vec![], 0, [("note".into(), "one".into())].into());
        let done = lake::snapshot::commit(&lake.swap, &head, &change)
            .await
            .expect("commit");
        locked.committed(&done.head);
        drop(locked);
        // The catalog points at the metadata file just written. Take it away: the next
        // holder must not need to read it.
        let at = done.head.location().expect("location").to_string();
        std::fs::remove_file(at.strip_prefix("file://").expect("local")).expect("remove");
        let locked = locks.lock("bronze.events").await;
        let next = locked
            .head(&lake.swap, lake.catalog.as_ref(), &ident)
            .await
            .expect("the table as committed");
        assert_eq!(next.location(), Some(at.as_str()));
        assert!(locked.head_at("elsewhere").is_none());
        // Once another process moves the table, the held head is not used.
        drop(locked);
        let stale = locks.lock("bronze.events").await;
        assert!(
            lake.swap
                .compare_and_swap(&ident, &at, "file:///moved.metadata.json")
                .await
                .expect("swap")
        );
        assert!(
            stale
                .head(&lake.swap, lake.catalog.as_ref(), &ident)
                .await
                .is_err(),
            "the catalog's new location is read"
        );
    }

    #[tokio::test]
    async fn one_holder_per_table() {
        let locks = CommitLocks::default();
        let a = locks.lock("bronze.cpu").await;
        // Another table is free while bronze.cpu is held.
        let _b = locks.lock("silver.cpu").await;
        let second = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            locks.lock("bronze.cpu"),
        )
        .await;
        assert!(second.is_err(), "a second holder got bronze.cpu");
        drop(a);
        let again = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            locks.lock("bronze.cpu"),
        )
        .await;
        assert!(again.is_ok());
    }
}

//! Per-table locks of one processor.
//! - Commit locks: the lander, model runs and maintenance take a table's lock around their
//!   commit, so they queue instead of losing compare-and-swap races to each other. Commits
//!   from other processes are still caught by the catalog's compare-and-swap.
//! - Upkeep locks: snapshot expiry and orphan cleanup of a table take turns, since expiry
//!   removes files that orphan cleanup may be reading the references of.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// One async lock per table name (`namespace.table`), created on first use.
#[derive(Clone, Default)]
pub struct CommitLocks {
    tables: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    upkeep: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

type Locks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

/// `table`'s lock in `locks`, made on first use.
async fn take(locks: &Locks, table: &str) -> OwnedMutexGuard<()> {
    let lock = {
        let mut tables = locks.lock().unwrap_or_else(|e| e.into_inner());
        tables.entry(table.to_string()).or_default().clone()
    };
    lock.lock_owned().await
}

impl CommitLocks {
    /// Wait for `table`'s lock; committing is safe from this process until the guard drops.
    pub async fn lock(&self, table: &str) -> OwnedMutexGuard<()> {
        take(&self.tables, table).await
    }

    /// Wait for `table`'s upkeep lock (expiry and orphan cleanup).
    pub async fn upkeep(&self, table: &str) -> OwnedMutexGuard<()> {
        take(&self.upkeep, table).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

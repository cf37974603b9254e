//! What an input table appended after a watermark snapshot: the data files an incremental
//! run reads. Only `append` snapshots add rows; `replace` snapshots (compaction) rewrite
//! rows already seen and are skipped; anything that deletes rows cannot be followed
//! incrementally.

use iceberg::spec::{DataFile, ManifestStatus, Operation, Snapshot};
use iceberg::table::Table;

use super::ModelError;
use super::run::Watermark;

/// New data files of one input, oldest snapshot first.
#[derive(Debug, Default)]
pub struct Delta {
    /// The last snapshot included: the input's watermark once the run commits.
    pub end: Option<Watermark>,
    pub files: Vec<DataFile>,
    pub snapshots: usize,
    /// False when `max_files` stopped the walk before the current snapshot.
    pub complete: bool,
}

/// The snapshots after `after` (exclusive) up to the current one, oldest first. The
/// watermark's own snapshot may have been expired: the chain is still complete when it
/// reaches the snapshot whose parent it was. A table dropped and recreated under the same
/// name never reaches it, and is reported as a lost watermark.
pub fn snapshots_after<'a>(
    table: &'a Table,
    input: &str,
    after: Option<Watermark>,
) -> Result<Vec<&'a Snapshot>, ModelError> {
    let meta = table.metadata();
    let reached = |s: &Snapshot| after.is_some_and(|w| s.snapshot_id() == w.snapshot);
    let mut chain = Vec::new();
    let mut at = meta.current_snapshot().map(|s| &**s);
    while let Some(s) = at {
        if reached(s) {
            chain.reverse();
            return Ok(chain);
        }
        chain.push(s);
        at = match s.parent_snapshot_id() {
            None => None,
            Some(p) => match meta.snapshot_by_id(p) {
                Some(parent) => Some(&**parent),
                // The parent was expired: the history before it is gone.
                None => match after {
                    None => {
                        return Err(ModelError::HistoryIncomplete {
                            input: input.to_string(),
                        });
                    }
                    Some(w) if p == w.snapshot => {
                        chain.reverse();
                        return Ok(chain);
                    }
                    Some(_) => break,
                },
            },
        };
    }
    match after {
        None => {
            chain.reverse();
            Ok(chain)
        }
        Some(w) => Err(ModelError::WatermarkLost {
            input: input.to_string(),
            snapshot: w.snapshot,
        }),
    }
}

/// New files of `table` after `after`: up to `stop_at` if given (inclusive; the range an
/// earlier, interrupted run read, so it is repeated exactly), else at most `max_files` of
/// them unless one snapshot alone has more.
pub async fn added_since(
    table: &Table,
    input: &str,
    after: Option<Watermark>,
    stop_at: Option<i64>,
    max_files: usize,
) -> Result<Delta, ModelError> {
    let mut delta = Delta {
        end: after,
        complete: true,
        ..Default::default()
    };
    for snapshot in snapshots_after(table, input, after)? {
        let id = snapshot.snapshot_id();
        let files = match snapshot.summary().operation {
            Operation::Append => appended_files(table, snapshot).await?,
            Operation::Replace => Vec::new(),
            Operation::Overwrite | Operation::Delete => {
                return Err(ModelError::NotAppendOnly {
                    input: input.to_string(),
                    snapshot: id,
                });
            }
        };
        if stop_at.is_none()
            && !delta.files.is_empty()
            && delta.files.len() + files.len() > max_files
        {
            delta.complete = false;
            break;
        }
        delta.files.extend(files);
        delta.snapshots += 1;
        delta.end = Some(Watermark::of(snapshot));
        if stop_at == Some(id) {
            break;
        }
    }
    Ok(delta)
}

/// The data files one append snapshot added.
async fn appended_files(table: &Table, snapshot: &Snapshot) -> Result<Vec<DataFile>, ModelError> {
    let id = snapshot.snapshot_id();
    let list = crate::lake::manifest_list(table, snapshot).await?;
    let mut out = Vec::new();
    for mf in list.entries() {
        if mf.added_snapshot_id != id || mf.content != iceberg::spec::ManifestContentType::Data {
            continue;
        }
        for e in mf.load_manifest(table.file_io()).await?.entries() {
            if e.status() == ManifestStatus::Added && e.snapshot_id() == Some(id) {
                out.push(e.data_file().clone());
            }
        }
    }
    Ok(out)
}

//! Manifests: reading a snapshot's manifest list and live files, keeping the live files of
//! the manifests a table's commits rewrite or merge, and deciding which small manifests a
//! commit merges, as Iceberg's merge-append does, so that the manifest list of a table
//! committed to every second stays short.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use iceberg::io::FileIO;
use iceberg::spec::{DataFile, ManifestContentType, ManifestFile, ManifestList, Snapshot};
use iceberg::table::Table;

/// Table property: merge small manifests on commit (Iceberg's name and default, true).
pub const MERGE_ENABLED: &str = "commit.manifest-merge.enabled";
/// Table property: merge once this many manifests would fit one (Iceberg's default, 100).
pub const MERGE_MIN_COUNT: &str = "commit.manifest.min-count-to-merge";
/// Table property: merged manifests grow up to this size (Iceberg's default, 8 MiB).
pub const MANIFEST_TARGET_BYTES: &str = "commit.manifest.target-size-bytes";

/// When a commit merges manifests, read from the table's properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergePolicy {
    pub(super) enabled: bool,
    pub(super) min_count: usize,
    pub(super) target_bytes: u64,
}

impl Default for MergePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            min_count: 100,
            target_bytes: 8 << 20,
        }
    }
}

impl MergePolicy {
    /// The policy a table's properties set (Iceberg's defaults for those they do not).
    pub fn of(props: &HashMap<String, String>) -> Self {
        let d = Self::default();
        let get = |k: &str| props.get(k).map(|v| v.trim());
        Self {
            enabled: get(MERGE_ENABLED)
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.enabled),
            min_count: get(MERGE_MIN_COUNT)
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.min_count)
                .max(2),
            target_bytes: get(MANIFEST_TARGET_BYTES)
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.target_bytes),
        }
    }

    /// Which of `manifests` a commit that adds a manifest of its own merges into it.
    /// Data manifests of `spec_id` are packed newest first, while they fit the target
    /// size; the pack is merged once it holds `min_count` manifests with the new one.
    /// Older manifests (and full ones) are left as they are, so each merge rewrites at
    /// most a target's worth, once every `min_count` commits or so.
    pub fn pick<'a>(&self, manifests: &'a [ManifestFile], spec_id: i32) -> Vec<&'a ManifestFile> {
        if !self.enabled {
            return Vec::new();
        }
        let mut candidates: Vec<&ManifestFile> = manifests
            .iter()
            .filter(|m| m.content == ManifestContentType::Data && m.partition_spec_id == spec_id)
            .collect();
        candidates.sort_by_key(|m| std::cmp::Reverse(m.sequence_number));
        let mut pack = Vec::new();
        let mut bytes = 0u64;
        for m in candidates {
            let len = u64::try_from(m.manifest_length).unwrap_or(u64::MAX);
            if bytes.saturating_add(len) > self.target_bytes {
                break;
            }
            bytes += len;
            pack.push(m);
        }
        if pack.len() + 1 >= self.min_count {
            pack
        } else {
            Vec::new()
        }
    }
}

/// The manifest list of one of the table's snapshots.
pub async fn manifest_list(
    table: &Table,
    snapshot: &Snapshot,
) -> Result<ManifestList, iceberg::Error> {
    let bytes = table
        .file_io()
        .new_input(snapshot.manifest_list())?
        .read()
        .await?;
    ManifestList::parse_with_version(&bytes, table.metadata().format_version())
}

/// A live data file of a manifest, with the snapshot and sequence numbers it was added
/// with (as inherited from the manifest, which a rewrite must keep).
#[derive(Debug, Clone)]
pub struct LiveFile {
    pub(super) file: DataFile,
    pub(super) snapshot_id: i64,
    pub(super) sequence_number: i64,
    pub(super) file_sequence_number: Option<i64>,
}

impl LiveFile {
    /// A file added by the commit of `snapshot_id` with sequence number `seq`.
    pub fn added(file: DataFile, snapshot_id: i64, seq: i64) -> Self {
        Self {
            file,
            snapshot_id,
            sequence_number: seq,
            file_sequence_number: Some(seq),
        }
    }
}

/// The live files of manifests, by manifest path, for the commits of one table.
///
/// A commit that merges small manifests or removes files needs the entries of every
/// manifest it rewrites. Reading them back cost the lander ~1 ms per manifest, and a merge
/// of 100 manifests every 100 commits was its slowest commit by far. A commit now records
/// the files of the manifests it writes, and reads only manifests written elsewhere (by
/// another process, or before a restart), once. A manifest's content never changes after
/// it is written, so an entry stays true for every later version of the table; each
/// commit drops the manifests that left its list, which bounds this by the table's live
/// files.
#[derive(Debug, Clone, Default)]
pub struct ManifestCache(Arc<Mutex<HashMap<String, Arc<Vec<LiveFile>>>>>);

impl ManifestCache {
    /// The live files of `manifest`, read from storage unless known.
    pub async fn live(
        &self,
        manifest: &ManifestFile,
        io: &FileIO,
    ) -> Result<Arc<Vec<LiveFile>>, iceberg::Error> {
        if let Some(known) = self.lock().get(&manifest.manifest_path) {
            return Ok(known.clone());
        }
        // load_manifest fills in the ids entries inherit from the manifest.
        let loaded = manifest.load_manifest(io).await?;
        let live: Arc<Vec<LiveFile>> = Arc::new(
            loaded
                .entries()
                .iter()
                .filter(|e| e.is_alive())
                .map(|e| LiveFile {
                    file: e.data_file().clone(),
                    snapshot_id: e.snapshot_id().unwrap_or(manifest.added_snapshot_id),
                    sequence_number: e.sequence_number.unwrap_or(manifest.sequence_number),
                    file_sequence_number: e.file_sequence_number.or(Some(manifest.sequence_number)),
                })
                .collect(),
        );
        self.lock()
            .insert(manifest.manifest_path.clone(), live.clone());
        Ok(live)
    }

    /// Record the live files of a manifest just written.
    pub fn insert(&self, path: &str, live: Vec<LiveFile>) {
        self.lock().insert(path.to_string(), Arc::new(live));
    }

    /// Forget every manifest but those of `list`.
    pub fn keep_only(&self, list: &[ManifestFile]) {
        let keep: HashSet<&str> = list.iter().map(|m| m.manifest_path.as_str()).collect();
        self.lock().retain(|path, _| keep.contains(path.as_str()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<LiveFile>>>> {
        // The map is valid after any panic: every change is a single insert or retain.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The live data files of the table's current snapshot.
pub async fn live_files(table: &Table) -> Result<Vec<DataFile>, iceberg::Error> {
    Ok(live_files_by_spec(table)
        .await?
        .into_iter()
        .map(|(_, f)| f)
        .collect())
}

/// The live data files of the table's current snapshot, each with the id of the partition
/// spec it was written under (its manifest's).
pub async fn live_files_by_spec(table: &Table) -> Result<Vec<(i32, DataFile)>, iceberg::Error> {
    let Some(current) = table.metadata().current_snapshot() else {
        return Ok(Vec::new());
    };
    let list = manifest_list(table, current).await?;
    let mut out = Vec::new();
    for mf in list.entries() {
        if mf.content != ManifestContentType::Data {
            continue;
        }
        for e in mf.load_manifest(table.file_io()).await?.entries() {
            if e.is_alive() {
                out.push((mf.partition_spec_id, e.data_file().clone()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(seq: i64, len: i64) -> ManifestFile {
        ManifestFile {
            manifest_path: format!("m{seq}"),
            manifest_length: len,
            partition_spec_id: 0,
            content: ManifestContentType::Data,
            sequence_number: seq,
            min_sequence_number: seq,
            added_snapshot_id: seq,
            added_files_count: Some(1),
            existing_files_count: Some(0),
            deleted_files_count: Some(0),
            added_rows_count: Some(1),
            existing_rows_count: Some(0),
            deleted_rows_count: Some(0),
            partitions: None,
            key_metadata: None,
            first_row_id: None,
        }
    }

    #[test]
    fn small_manifests_merge_once_there_are_enough_of_them() {
        let policy = MergePolicy {
            enabled: true,
            min_count: 4,
            target_bytes: 100,
        };
        let two: Vec<ManifestFile> = (1..=2).map(|s| manifest(s, 10)).collect();
        assert!(
            policy.pick(&two, 0).is_empty(),
            "3 with the new one: not yet"
        );
        let three: Vec<ManifestFile> = (1..=3).map(|s| manifest(s, 10)).collect();
        let picked: Vec<i64> = policy
            .pick(&three, 0)
            .iter()
            .map(|m| m.sequence_number)
            .collect();
        assert_eq!(picked, vec![3, 2, 1], "newest first");

        // A full manifest stops the pack; the small ones after it still merge.
        let mut list = vec![manifest(1, 95)];
        list.extend((2..=5).map(|s| manifest(s, 10)));
        let picked: Vec<i64> = policy
            .pick(&list, 0)
            .iter()
            .map(|m| m.sequence_number)
            .collect();
        assert_eq!(picked, vec![5, 4, 3, 2]);

        // Manifests of another spec, and delete manifests, are never merged here.
        let mut other = manifest(9, 10);
        other.partition_spec_id = 1;
        let mut deletes = manifest(8, 10);
        deletes.content = ManifestContentType::Deletes;
        assert!(
            policy
                .pick(&[other, deletes, manifest(1, 10)], 0)
                .is_empty()
        );

        let off = MergePolicy {
            enabled: false,
            ..policy
        };
        assert!(off.pick(&list, 0).is_empty());
    }

    #[test]
    fn the_policy_comes_from_table_properties() {
        let props: HashMap<String, String> = [
            (MERGE_MIN_COUNT.to_string(), "20".to_string()),
            (MERGE_ENABLED.to_string(), "false".to_string()),
        ]
        .into_iter()
        .collect();
        let p = MergePolicy::of(&props);
        assert_eq!(
            (p.enabled, p.min_count, p.target_bytes),
            (false, 20, 8 << 20)
        );
        assert_eq!(MergePolicy::of(&HashMap::new()), MergePolicy::default());
    }
}

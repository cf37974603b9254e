//! Why a maintenance task failed: one error for compaction, expiry and orphan removal.

use crate::lake::{CommitError, ReadError};

/// Why compaction, snapshot expiry or orphan removal failed. Nothing half done is left
/// visible: a failed task changed no table (its stray files are orphans for the next pass).
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// Compaction could not read a file back as its manifest describes it.
    #[error("not compacting: {0}")]
    Read(#[from] ReadError),
    /// Compaction wrote another number of rows than it read.
    #[error("wrote {written} rows for {read} read; not committing")]
    WriteMismatch {
        /// Rows in the files written.
        written: u64,
        /// Rows in the bin's files.
        read: u64,
    },
    /// Other writers kept committing first.
    #[error("gave up after {0} conflicting commits")]
    TooManyConflicts(u32),
    /// The task's commit failed; [`CommitError::retryable`] says whether the next pass may
    /// do better.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The catalog or storage failed: a table, a manifest or a file could not be loaded,
    /// listed, written or deleted. The next pass may succeed.
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    /// A bin's rows could not be re-encoded into the table's schema.
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
    /// A data file's Parquet could not be decoded, or the merged file not encoded.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

impl MaintenanceError {
    /// Whether the next pass may succeed where this one failed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Read(ReadError::Iceberg(_)) | Self::TooManyConflicts(_) | Self::Iceberg(_) => {
                true
            }
            Self::Read(_) | Self::WriteMismatch { .. } | Self::Arrow(_) | Self::Parquet(_) => false,
            Self::Commit(e) => e.retryable(),
        }
    }

    /// The metric reason of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Commit(e) => e.reason(),
            Self::Iceberg(_) | Self::Read(ReadError::Iceberg(_)) => "storage",
            Self::Read(ReadError::CountMismatch { .. }) => "count_mismatch",
            Self::Read(_) | Self::Arrow(_) | Self::Parquet(_) => "data",
            Self::WriteMismatch { .. } => "write_mismatch",
            Self::TooManyConflicts(_) => "conflict",
        }
    }
}

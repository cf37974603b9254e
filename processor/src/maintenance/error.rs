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
    WriteMismatch { written: u64, read: u64 },
    /// Other writers kept committing first.
    #[error("gave up after {0} conflicting commits")]
    TooManyConflicts(u32),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Iceberg(#[from] iceberg::Error),
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
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

//! `[catalog]` and the Parquet compression every writer of the lake uses, and the catalog
//! settings in effect once the defaults are resolved.

use serde::Deserialize;

use crate::lake::storage::S3Config;

/// `[catalog]`: the Iceberg catalog and warehouse.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// Catalog name recorded in the catalog database; readers must use it.
    ///
    /// Default: `"sluice"`.
    pub name: Option<String>,
    /// SQL catalog database: `sqlite:PATH?mode=rwc` (a relative `PATH` is relative to the
    /// working directory, not this file) or `postgres://user@host:port/db` (password from
    /// `PGPASSWORD` or `~/.pgpass` if not in the URI; no TLS).
    ///
    /// Default: `sqlite:<data_dir>/catalog.db?mode=rwc`.
    pub uri: Option<String>,
    /// Where new tables are created: a directory (created if missing) or
    /// `s3://bucket/prefix` (see `[catalog.s3]`).
    ///
    /// Default: `<data_dir>/warehouse`.
    pub warehouse: Option<String>,
    /// How to reach the object store of `s3://` locations (`[catalog.s3]`).
    pub s3: S3Config,
}

impl std::fmt::Debug for CatalogConfig {
    /// The URI without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogConfig")
            .field("name", &self.name)
            .field("uri", &self.uri.as_deref().map(sluice_ops::redact_uri))
            .field("warehouse", &self.warehouse)
            .field("s3", &self.s3)
            .finish()
    }
}

/// Parquet compression of the data files the lake writes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// `zstd` at level 1: the smallest files for little CPU.
    Zstd,
    /// `snappy`: larger files, a little cheaper to write and read.
    Snappy,
    /// `lz4` (Parquet's `LZ4_RAW`): about as fast and as large as `snappy`.
    Lz4,
    /// `none`: uncompressed.
    None,
}

/// The catalog a processor opens, with the defaults of `[catalog]` resolved: what
/// [`crate::lake::open`] and [`crate::lake::CatalogSwap::open`] need, and nothing else.
#[derive(Clone)]
pub struct CatalogSettings {
    /// Catalog name recorded in the catalog database.
    pub name: String,
    /// SQL catalog database URI (may hold a password).
    pub uri: String,
    /// Warehouse root: a local directory or an `s3://` URL.
    pub warehouse: String,
    /// How to reach the object store of an `s3://` warehouse.
    pub s3: S3Config,
}

impl std::fmt::Debug for CatalogSettings {
    /// The URI without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogSettings")
            .field("name", &self.name)
            .field("uri", &sluice_ops::redact_uri(&self.uri))
            .field("warehouse", &self.warehouse)
            .field("s3", &self.s3)
            .finish()
    }
}

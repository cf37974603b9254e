//! Iceberg file I/O on `object_store`: one `Storage` for the local filesystem (`file://`
//! and absolute paths) and S3-compatible object stores (`s3://bucket/key`), so the lander,
//! models, compaction and queries work the same on either warehouse.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use iceberg::{Error, ErrorKind};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// Bytes this process read from and wrote to the warehouse (data and metadata files), for
/// `/metrics`: what a commit or a maintenance pass costs in I/O.
pub static READ_BYTES: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);
/// The written half of [`READ_BYTES`]: bytes handed to the store, counted before the write
/// completes (a failed write counts too).
pub static WRITTEN_BYTES: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// Parquet data files this process opened for reading: queries, models and compaction.
/// A quiet processor's count before and after a query says how many files it scanned.
pub static DATA_FILES_OPENED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

fn read_bytes(b: &Bytes) {
    READ_BYTES.inc_by(b.len() as u64);
}

/// `[catalog.s3]`: how to reach an S3-compatible object store. Unset keys fall back to the
/// usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// URL of an S3-compatible server (MinIO, Garage, Ceph, s3s, …).
    ///
    /// Default: AWS.
    pub endpoint: Option<String>,
    /// Region of the bucket.
    ///
    /// Default: `us-east-1`.
    pub region: Option<String>,
    /// Static credentials: the access key id (with `secret_access_key`).
    pub access_key_id: Option<String>,
    /// Static credentials: the secret access key (with `access_key_id`).
    pub secret_access_key: Option<sluice_ops::Secret>,
    /// Allow an `http://` endpoint (test servers on loopback). Always taken from here
    /// (`AWS_ALLOW_HTTP` is ignored).
    pub allow_http: bool,
    /// Address buckets as `bucket.host` instead of `host/bucket`. Always taken from here.
    pub virtual_hosted_style: bool,
}

/// Builds [`ObjectStorage`] for the catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStoreFactory {
    pub(super) s3: S3Config,
}

#[typetag::serde(name = "sluice_object_store")]
impl StorageFactory for ObjectStoreFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::new(self.s3.clone())))
    }
}

/// Iceberg `Storage` over `object_store`; one client per bucket, made on first use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectStorage {
    s3: S3Config,
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
}

fn store_err(location: &str, e: object_store::Error) -> Error {
    let kind = match e {
        object_store::Error::NotFound { .. } => ErrorKind::DataInvalid,
        _ => ErrorKind::Unexpected,
    };
    err(kind, format!("{location}: {e}")).with_source(e)
}

impl ObjectStorage {
    /// Storage reaching `s3://` locations as `s3` says; local paths need nothing.
    pub fn new(s3: S3Config) -> Self {
        Self {
            s3,
            stores: Arc::default(),
        }
    }

    /// The store holding `location` and the object's path in it.
    fn resolve(&self, location: &str) -> iceberg::Result<(Arc<dyn ObjectStore>, Path)> {
        let (key, path) = if let Some(p) = location.strip_prefix("file://") {
            ("file".to_string(), p)
        } else if location.starts_with('/') {
            ("file".to_string(), location)
        } else if let Some(rest) = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
        {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            (format!("s3://{bucket}"), key)
        } else {
            return Err(err(
                ErrorKind::FeatureUnsupported,
                format!("{location}: only file:// and s3:// locations are supported"),
            ));
        };
        let path = Path::parse(path.trim_start_matches('/'))
            .map_err(|e| err(ErrorKind::DataInvalid, format!("{location}: {e}")))?;
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = stores.get(&key) {
            return Ok((store.clone(), path));
        }
        let store: Arc<dyn ObjectStore> = match key.strip_prefix("s3://") {
            None => Arc::new(LocalFileSystem::new()),
            Some(bucket) => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(self.s3.allow_http)
                    .with_virtual_hosted_style_request(self.s3.virtual_hosted_style);
                if let Some(v) = &self.s3.endpoint {
                    b = b.with_endpoint(v);
                }
                if let Some(v) = &self.s3.region {
                    b = b.with_region(v);
                }
                if let Some(v) = &self.s3.access_key_id {
                    b = b.with_access_key_id(v);
                }
                if let Some(v) = &self.s3.secret_access_key {
                    b = b.with_secret_access_key(v.expose());
                }
                Arc::new(b.build().map_err(|e| store_err(location, e))?)
            }
        };
        stores.insert(key, store.clone());
        Ok((store, path))
    }
}

#[async_trait]
#[typetag::serde(name = "sluice_object_storage")]
impl Storage for ObjectStorage {
    async fn exists(&self, location: &str) -> iceberg::Result<bool> {
        let (store, path) = self.resolve(location)?;
        match store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(location, e)),
        }
    }

    async fn metadata(&self, location: &str) -> iceberg::Result<FileMetadata> {
        let (store, path) = self.resolve(location)?;
        let meta = store
            .head(&path)
            .await
            .map_err(|e| store_err(location, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, location: &str) -> iceberg::Result<Bytes> {
        let (store, path) = self.resolve(location)?;
        let bytes = store
            .get(&path)
            .await
            .map_err(|e| store_err(location, e))?
            .bytes()
            .await
            .map_err(|e| store_err(location, e))?;
        read_bytes(&bytes);
        Ok(bytes)
    }

    async fn reader(&self, location: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (store, path) = self.resolve(location)?;
        if location.ends_with(".parquet") {
            DATA_FILES_OPENED.inc();
        }
        Ok(Box::new(ObjectRead {
            store,
            path,
            location: location.to_string(),
        }))
    }

    async fn write(&self, location: &str, bs: Bytes) -> iceberg::Result<()> {
        let (store, path) = self.resolve(location)?;
        WRITTEN_BYTES.inc_by(bs.len() as u64);
        store
            .put(&path, PutPayload::from(bs))
            .await
            .map(|_| ())
            .map_err(|e| store_err(location, e))
    }

    async fn writer(&self, location: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (store, path) = self.resolve(location)?;
        Ok(Box::new(ObjectWrite {
            writer: BufWriter::new(store, path),
            location: location.to_string(),
        }))
    }

    async fn delete(&self, location: &str) -> iceberg::Result<()> {
        let (store, path) = self.resolve(location)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(location, e)),
        }
    }

    async fn delete_prefix(&self, location: &str) -> iceberg::Result<()> {
        let (store, path) = self.resolve(location)?;
        let mut listed = store.list(Some(&path));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| store_err(location, e))?;
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(location, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Ranged reads of one object.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    location: String,
}

#[async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        let bytes = self
            .store
            .get_range(&self.path, range)
            .await
            .map_err(|e| store_err(&self.location, e))?;
        read_bytes(&bytes);
        Ok(bytes)
    }
}

/// A buffered upload (multipart on object stores once it outgrows one part); nothing is
/// visible at the location until `close`.
struct ObjectWrite {
    writer: BufWriter,
    location: String,
}

#[async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        WRITTEN_BYTES.inc_by(bs.len() as u64);
        self.writer
            .put(bs)
            .await
            .map_err(|e| store_err(&self.location, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.writer.shutdown().await.map_err(|e| {
            err(ErrorKind::Unexpected, format!("{}: {e}", self.location)).with_source(e)
        })
    }
}

/// List every object under `location` (a directory URL), with sizes and modification
/// times: what orphan cleanup compares against the table's references.
pub async fn list(
    storage: &ObjectStorage,
    location: &str,
) -> iceberg::Result<Vec<(String, u64, chrono::DateTime<chrono::Utc>)>> {
    let (store, path) = storage.resolve(location)?;
    let base = location.trim_end_matches('/');
    let prefix = path.as_ref().trim_end_matches('/').to_string();
    let mut out = Vec::new();
    let mut listed = store.list(Some(&path));
    while let Some(meta) = listed.next().await {
        let meta = meta.map_err(|e| store_err(location, e))?;
        let rel = meta
            .location
            .as_ref()
            .strip_prefix(&prefix)
            .unwrap_or(meta.location.as_ref())
            .trim_start_matches('/')
            .to_string();
        out.push((format!("{base}/{rel}"), meta.size, meta.last_modified));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_files_round_trip_through_object_store() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStorage::new(S3Config::default());
        let url = format!("file://{}/t/data/a.bin", dir.path().display());
        assert!(!storage.exists(&url).await.unwrap());
        let mut w = storage.writer(&url).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"world")).await.unwrap();
        // Not there until closed.
        assert!(!storage.exists(&url).await.unwrap());
        w.close().await.unwrap();
        assert_eq!(storage.metadata(&url).await.unwrap().size, 11);
        assert_eq!(storage.read(&url).await.unwrap(), "hello world");
        let r = storage.reader(&url).await.unwrap();
        assert_eq!(r.read(6..11).await.unwrap(), "world");
        let plain = format!("{}/t/data/b.bin", dir.path().display());
        storage
            .write(&plain, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let listed = list(&storage, &format!("file://{}/t", dir.path().display()))
            .await
            .unwrap();
        let names: Vec<&str> = listed.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("file://{}/t/data/a.bin", dir.path().display()),
                format!("file://{}/t/data/b.bin", dir.path().display())
            ]
        );
        storage
            .delete_prefix(&format!("file://{}/t/data", dir.path().display()))
            .await
            .unwrap();
        assert!(!storage.exists(&url).await.unwrap());
        // Deleting what is gone is not an error (a retried cleanup).
        storage.delete(&url).await.unwrap();
        assert!(storage.read("gs://bucket/x").await.is_err());
    }
}

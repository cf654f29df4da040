//! Outputs in object storage through `object_store`: deterministic keys under
//! `<prefix>/<job_id>/`, content types on every object, create-only writes for the commit point
//! (the manifest) and the attempt markers, SHA-256 of what was written, and transient errors
//! retried in place with exponential backoff and jitter (`backon`).

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use sha2::{Digest, Sha256};

use crate::config::JobsConfig;

/// Objects at or above this size are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

/// A storage failure, sorted by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage.url {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    /// A create-only write found the object already there.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Still failing after the retries in place; retrying the job later may succeed.
    #[error("object store unavailable at {location}: {source} — check the endpoint, credentials and bucket")]
    Unavailable {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

/// The SHA-256 of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An object store plus the key prefix of this fleet's outputs.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// `s3://bucket` or `file://` + root: joined with a key, the URI reported in events.
    base_uri: String,
    /// Whether the store keeps content types (S3 does; the local filesystem cannot).
    content_types: bool,
    retry: ExponentialBuilder,
}

fn is_transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

impl Storage {
    /// `s3://bucket[/prefix]` (endpoint, region and credentials from the `AWS_*` environment,
    /// e.g. `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`) or `file:///dir`.
    pub fn from_url(url: &str, jobs: &JobsConfig) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let content_types = url.starts_with("s3://");
        let (store, prefix, base_uri): (Arc<dyn ObjectStore>, &str, String) = if let Some(rest) =
            url.strip_prefix("s3://")
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name".into()));
            }
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| bad(e.to_string()))?;
            (Arc::new(store), prefix, format!("s3://{bucket}"))
        } else if let Some(dir) = url.strip_prefix("file://") {
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {dir}: {e}")))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| bad(e.to_string()))?;
            (
                Arc::new(store),
                "",
                format!("file://{}", dir.trim_end_matches('/')),
            )
        } else {
            return Err(bad("use s3://bucket/prefix or file:///absolute/dir".into()));
        };
        let retry = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(jobs.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(jobs.retry_max_delay_ms))
            .with_max_times(jobs.retry_times);
        Ok(Self {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            base_uri,
            content_types,
            retry,
        })
    }

    /// The key of `name` among the outputs of `job_id`.
    pub fn job_path(&self, job_id: &str, name: &str) -> Path {
        self.prefix.clone().join(job_id).join(name)
    }

    /// The key `name` directly under the prefix (doctor probes).
    pub fn path(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// The URI of `path` as reported in events.
    pub fn uri(&self, path: &Path) -> String {
        format!("{}/{}", self.base_uri, path)
    }

    fn unavailable(path: &Path, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => {
                StorageError::AlreadyExists(path.to_string())
            }
            source => StorageError::Unavailable {
                location: path.to_string(),
                source,
            },
        }
    }

    /// Writes `bytes` with `content_type`; `create_only` fails with
    /// [`StorageError::AlreadyExists`] when the object is there. Large objects go in parts.
    pub async fn put(
        &self,
        path: &Path,
        bytes: Bytes,
        content_type: &str,
        create_only: bool,
    ) -> Result<(), StorageError> {
        let attributes = if self.content_types {
            Attributes::from_iter([(Attribute::ContentType, content_type.to_string())])
        } else {
            Attributes::new()
        };
        let attempt = || async {
            if bytes.len() >= MULTIPART_THRESHOLD && !create_only {
                let mut writer =
                    object_store::buffered::BufWriter::new(self.store.clone(), path.clone())
                        .with_attributes(attributes.clone());
                writer.put(bytes.clone()).await?;
                tokio::io::AsyncWriteExt::shutdown(&mut writer)
                    .await
                    .map_err(|e| object_store::Error::Generic {
                        store: "multipart",
                        source: Box::new(e),
                    })?;
                Ok(())
            } else {
                let opts = PutOptions {
                    mode: if create_only {
                        PutMode::Create
                    } else {
                        PutMode::Overwrite
                    },
                    attributes: attributes.clone(),
                    ..Default::default()
                };
                self.store
                    .put_opts(path, PutPayload::from_bytes(bytes.clone()), opts)
                    .await
                    .map(|_| ())
            }
        };
        attempt
            .retry(self.retry)
            .when(is_transient)
            .notify(|e, delay| tracing::warn!(%path, error = %e, ?delay, "object store write failed; retrying"))
            .await
            .map_err(|e| Self::unavailable(path, e))
    }

    /// The object's bytes, or `None` when it does not exist.
    pub async fn get(&self, path: &Path) -> Result<Option<Bytes>, StorageError> {
        let attempt = || async { self.store.get(path).await?.bytes().await };
        match attempt
            .retry(self.retry)
            .when(is_transient)
            .notify(|e, delay| tracing::warn!(%path, error = %e, ?delay, "object store read failed; retrying"))
            .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::unavailable(path, e)),
        }
    }

    /// Deletes an object; a missing object is fine.
    pub async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        let attempt = || async { self.store.delete(path).await };
        match attempt.retry(self.retry).when(is_transient).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::unavailable(path, e)),
        }
    }

    /// Keys under `dir`.
    pub async fn list(&self, dir: &Path) -> Result<Vec<Path>, StorageError> {
        let attempt = || async {
            self.store
                .list(Some(dir))
                .map_ok(|meta| meta.location)
                .try_collect::<Vec<_>>()
                .await
        };
        attempt
            .retry(self.retry)
            .when(is_transient)
            .await
            .map_err(|e| Self::unavailable(dir, e))
    }

    /// Creates the next attempt marker `<job>/attempts/<n>` (create-only, so two workers never
    /// claim the same number) and returns `(n, its key)`: `n` attempts started before this one.
    pub async fn claim_attempt(
        &self,
        job_id: &str,
        worker_id: &str,
    ) -> Result<(u32, Path), StorageError> {
        let dir = self.job_path(job_id, "attempts");
        let mut n = self.list(&dir).await?.len() as u32;
        loop {
            let key = dir.clone().join(format!("{n:04}"));
            match self
                .put(&key, Bytes::from(worker_id.to_string()), "text/plain", true)
                .await
            {
                Ok(()) => return Ok((n, key)),
                Err(StorageError::AlreadyExists(_)) => n += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn create_only_writes_and_attempt_markers_on_the_local_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let storage = Storage::from_url(&url, &JobsConfig::default()).unwrap();
        let key = storage.job_path("job-1", "manifest.json");
        assert_eq!(storage.uri(&key), format!("{url}/job-1/manifest.json"));
        storage
            .put(&key, Bytes::from_static(b"{}"), "application/json", true)
            .await
            .unwrap();
        let again = storage
            .put(&key, Bytes::from_static(b"[]"), "application/json", true)
            .await;
        assert!(
            matches!(again, Err(StorageError::AlreadyExists(_))),
            "{again:?}"
        );
        assert_eq!(
            storage.get(&key).await.unwrap().unwrap(),
            Bytes::from_static(b"{}")
        );
        assert_eq!(
            storage
                .get(&storage.job_path("job-1", "nope"))
                .await
                .unwrap(),
            None
        );

        assert_eq!(storage.claim_attempt("job-1", "w1").await.unwrap().0, 0);
        let (n, marker) = storage.claim_attempt("job-1", "w2").await.unwrap();
        assert_eq!(n, 1);
        storage.delete(&marker).await.unwrap();
        assert_eq!(storage.claim_attempt("job-1", "w3").await.unwrap().0, 1);
    }
}

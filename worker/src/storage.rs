//! Outputs in object storage through `object_store`: keys under `<prefix>/<job_id>/` (the layout
//! inside — manifest, runs, attempts, checkpoints — is the job's, see `crate::job::manifest`),
//! content types on every object, create-only writes for the commit point (the manifest) and the
//! attempt markers, and transient errors retried in place with exponential backoff and jitter
//! (`backon`, the policy of `crate::retry`).
//!
//! Backends, by `storage.url` scheme: `s3://` (AWS S3 and S3-compatible servers), `gs://`
//! (Google Cloud Storage), `az://` / `azure://` / `abfs://` / `abfss://` (Azure Blob Storage) and
//! `file://` (the local filesystem). Endpoints and credentials come from the environment, read
//! the way object_store reads it (`AWS_*`, `GOOGLE_*`, `AZURE_*`). The URIs in events keep the
//! scheme and bucket/container the operator wrote in `storage.url`, followed by the object's key
//! (`gs://bucket/outputs/<job>/runs/0.0000/video.mp4`, `az://container/outputs/<job>/…`), so they
//! read the same way as the configuration and as the URLs of the clouds' own tools.
//!
//! Create-only writes (`PutMode::Create`) are conditional requests on every cloud backend, so
//! two workers can never both win: S3 sends `If-None-Match: *` (AWS S3, MinIO, R2 and VersityGW
//! honour it; Garage 2.5 ignores it and overwrites), GCS `x-goog-if-generation-match: 0`, Azure
//! `If-None-Match: *` (a 409 from Azurite or a 412 from Azure both come back as
//! `AlreadyExists`); the local filesystem creates the file exclusively.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use crate::config::JobsConfig;

/// Objects at or above this size are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

/// The `storage.url` forms [`Storage::from_url`] accepts, for error messages.
pub const SUPPORTED_URLS: &str = "s3://bucket/prefix, gs://bucket/prefix, \
     az://container/prefix (also azure://, abfs://, abfss://) or file:///absolute/dir";

/// Time to establish a connection to the object store. A host that drops packets fails within
/// this instead of the kernel's minutes-long SYN retries; AWS recommends 3.1 s.
/// `AWS_CONNECT_TIMEOUT` / `GOOGLE_CONNECT_TIMEOUT` / `AZURE_CONNECT_TIMEOUT` override it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time for one whole request, body included. A request carries at most 16 MiB
/// (`MULTIPART_THRESHOLD`; larger objects go up as 10 MiB parts, at most 8 in flight), so
/// 60 s asks for about 11 Mbit/s at worst — far below any cloud link — while a server that
/// accepts connections and then hangs still fails each attempt in bounded time.
/// `AWS_TIMEOUT` / `GOOGLE_TIMEOUT` / `AZURE_TIMEOUT` override it (e.g. `180s` over a slow link).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// object_store's own retry loop, switched off. Its default (10 retries, backoff up to 15 s,
/// within 3 minutes) ran *inside* each of our `backon` retries, so with the endpoint down a
/// put took 13–22 s to give up instead of ~0.2 s, and `[jobs] retry_times` /
/// `retry_min_delay_ms` / `retry_max_delay_ms` no longer described what happened. With no
/// retries in object_store, every failed request comes straight back to [`Storage`], whose
/// backon policy (logged, jittered, bounded by the job settings) is the only one that decides.
fn object_store_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        retry_timeout: REQUEST_TIMEOUT,
        ..RetryConfig::default()
    }
}

/// What [`Storage::get_at_most`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRead {
    Found(Bytes),
    Missing,
    /// Larger than the limit: `size` is what the store announced, or what had arrived when the
    /// read stopped.
    TooLarge {
        size: u64,
    },
    /// The credentials may not read it; the store's words.
    Denied(String),
}

/// A storage failure, sorted by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage.url {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: BadUrlReason },
    /// A create-only write found the object already there.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// Still failing after the retries in place; retrying the job later may succeed.
    /// `location` is the object's URI; the source names the endpoint it tried.
    #[error("object store unavailable at {location}: {source} — check the endpoint, credentials and bucket or container")]
    Unavailable {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

/// What is wrong with the form of a `storage.url`, found without the network or the
/// environment ([`check_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("no scheme — use {urls}", urls = SUPPORTED_URLS)]
    NoScheme,
    /// A `file://` URL whose path is relative.
    #[error("{path:?} is not an absolute path — use file:///absolute/dir")]
    RelativePath { path: String },
    #[error("unsupported scheme {scheme}:// — use {urls}", urls = SUPPORTED_URLS)]
    UnsupportedScheme { scheme: String },
    #[error("no bucket or container name — use {urls}", urls = SUPPORTED_URLS)]
    NoBucket,
}

/// Why the store of a `storage.url` cannot be opened ([`StorageError::BadUrl`]).
#[derive(Debug, thiserror::Error)]
pub enum BadUrlReason {
    /// The URL's form.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A `file://` directory that cannot be created.
    #[error("cannot create {dir}: {source}")]
    CreateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// object_store refused the local directory.
    #[error(transparent)]
    Local(object_store::Error),
    /// A setting that is not one of the backend's config keys.
    #[error("{name} is not a setting of this object store — use {env_prefix}_* names as object_store reads them")]
    UnknownSetting {
        name: String,
        env_prefix: &'static str,
    },
    /// The cloud client could not be built; `hint` says where its settings come from.
    #[error("{source} — {hint}")]
    Build {
        #[source]
        source: object_store::Error,
        hint: &'static str,
    },
}

/// A cloud backend a `storage.url` scheme names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    S3,
    Gcs,
    Azure,
}

impl Cloud {
    /// Where this backend's settings come from, for errors about them.
    fn env_hint(self) -> &'static str {
        match self {
            Self::S3 => "set AWS_REGION, AWS_ENDPOINT_URL (S3-compatible servers; AWS_ALLOW_HTTP=true for http://) and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use the pod's IAM role",
            Self::Gcs => "set GOOGLE_SERVICE_ACCOUNT (key file), GOOGLE_SERVICE_ACCOUNT_KEY (key JSON) or GOOGLE_APPLICATION_CREDENTIALS, or use GKE Workload Identity",
            Self::Azure => "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a SAS token, or Azure Workload Identity), or AZURE_STORAGE_USE_EMULATOR=true for Azurite",
        }
    }

    /// The object_store client for `<scheme>://<bucket>`: environment, then our timeouts and
    /// retry policy, then `settings`.
    fn store(
        self,
        scheme: &str,
        bucket: &str,
        settings: &[(&str, &str)],
    ) -> Result<Arc<dyn ObjectStore>, BadUrlReason> {
        let built = |source| BadUrlReason::Build {
            source,
            hint: self.env_hint(),
        };
        Ok(match self {
            Self::S3 => {
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(object_store_retry());
                for (key, value) in builder_settings::<AmazonS3ConfigKey>("AWS", settings)? {
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(built)?)
            }
            Self::Gcs => {
                let mut builder = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(object_store_retry());
                for (key, value) in builder_settings::<GoogleConfigKey>("GOOGLE", settings)? {
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(built)?)
            }
            Self::Azure => {
                // `with_url` also understands `abfss://<container>@<account>.dfs.core.windows.net`.
                let mut builder = MicrosoftAzureBuilder::from_env()
                    .with_url(format!("{scheme}://{bucket}"))
                    .with_retry(object_store_retry());
                for (key, value) in builder_settings::<AzureConfigKey>("AZURE", settings)? {
                    builder = builder.with_config(key, value);
                }
                Arc::new(builder.build().map_err(built)?)
            }
        })
    }
}

/// Where a `storage.url` points.
#[derive(Debug, PartialEq, Eq)]
enum Location<'a> {
    Cloud {
        cloud: Cloud,
        scheme: &'a str,
        bucket: &'a str,
        prefix: &'a str,
    },
    Local {
        dir: &'a str,
    },
}

/// Splits a `storage.url` into backend, bucket (or container) and prefix, or says in one line
/// what is wrong with it.
fn parse_url(url: &str) -> Result<Location<'_>, UrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(UrlError::NoScheme);
    };
    let cloud = match scheme {
        "s3" => Cloud::S3,
        "gs" => Cloud::Gcs,
        "az" | "azure" | "abfs" | "abfss" => Cloud::Azure,
        "file" if rest.starts_with('/') => return Ok(Location::Local { dir: rest }),
        "file" => {
            return Err(UrlError::RelativePath {
                path: rest.to_string(),
            })
        }
        _ => {
            return Err(UrlError::UnsupportedScheme {
                scheme: scheme.to_string(),
            })
        }
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(UrlError::NoBucket);
    }
    Ok(Location::Cloud {
        cloud,
        scheme,
        bucket,
        prefix,
    })
}

/// Checks the form of a `storage.url` without touching the network or the environment
/// (config validation at start); [`Storage::from_url`] checks the rest.
pub fn check_url(url: &str) -> Result<(), UrlError> {
    parse_url(url).map(|_| ())
}

/// The builder settings for a cloud backend whose environment variables start with
/// `env_prefix`: our client timeouts where the environment does not set its own, then
/// `settings`, each parsed as the backend's config key the way object_store parses the
/// environment (`AWS_ENDPOINT_URL` → `aws_endpoint_url`).
fn builder_settings<K: FromStr>(
    env_prefix: &'static str,
    settings: &[(&str, &str)],
) -> Result<Vec<(K, String)>, BadUrlReason> {
    let mut named: Vec<(String, String)> = Vec::new();
    for (suffix, value) in [
        ("CONNECT_TIMEOUT", CONNECT_TIMEOUT),
        ("TIMEOUT", REQUEST_TIMEOUT),
    ] {
        let name = format!("{env_prefix}_{suffix}");
        if std::env::var_os(&name).is_none() {
            named.push((name, format!("{}s", value.as_secs())));
        }
    }
    named.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    named
        .into_iter()
        .map(
            |(name, value)| match name.to_ascii_lowercase().parse::<K>() {
                Ok(key) => Ok((key, value)),
                Err(_) => Err(BadUrlReason::UnknownSetting { name, env_prefix }),
            },
        )
        .collect()
}

/// An object store plus the key prefix of this fleet's outputs.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// `<scheme>://<bucket or container>` as written in `storage.url`, or `file://` + root:
    /// joined with a key, the URI reported in events.
    base_uri: String,
    /// Whether the store keeps content types (the clouds do; the local filesystem cannot).
    content_types: bool,
    retry: ExponentialBuilder,
}

fn is_transient(e: &object_store::Error) -> bool {
    // A wrong key or a missing permission does not heal within our retry budget.
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
            | object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
    )
}

impl Storage {
    /// Opens the store of `url` (one of [`SUPPORTED_URLS`]) with endpoint, region and
    /// credentials from the environment: `AWS_*` for `s3://` (e.g. `AWS_ENDPOINT_URL`,
    /// `AWS_ALLOW_HTTP`), `GOOGLE_*` for `gs://`, `AZURE_*` for `az://` and its aliases.
    pub fn from_url(url: &str, jobs: &JobsConfig) -> Result<Self, StorageError> {
        Self::from_url_with(url, jobs, &[])
    }

    /// [`Storage::from_url`] with `settings` — environment-style names such as
    /// `("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:10000/devstoreaccount1")` — applied over
    /// the environment's: how a caller (or a test) points one store at a particular endpoint
    /// without changing the process environment. Ignored for `file://`.
    pub fn from_url_with(
        url: &str,
        jobs: &JobsConfig,
        settings: &[(&str, &str)],
    ) -> Result<Self, StorageError> {
        let bad = |reason: BadUrlReason| StorageError::BadUrl {
            url: url.to_string(),
            reason,
        };
        // The clouds keep content types; the local filesystem cannot.
        let (store, prefix, base_uri, content_types): (Arc<dyn ObjectStore>, &str, String, bool) =
            match parse_url(url).map_err(|e| bad(e.into()))? {
                Location::Local { dir } => {
                    std::fs::create_dir_all(dir).map_err(|source| {
                        bad(BadUrlReason::CreateDir {
                            dir: dir.to_string(),
                            source,
                        })
                    })?;
                    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| bad(BadUrlReason::Local(e)))?;
                    (
                        Arc::new(store),
                        "",
                        format!("file://{}", dir.trim_end_matches('/')),
                        false,
                    )
                }
                Location::Cloud {
                    cloud,
                    scheme,
                    bucket,
                    prefix,
                } => (
                    cloud.store(scheme, bucket, settings).map_err(bad)?,
                    prefix,
                    format!("{scheme}://{bucket}"),
                    true,
                ),
            };
        let retry = crate::retry::policy(jobs);
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

    fn unavailable(&self, path: &Path, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => {
                StorageError::AlreadyExists(self.uri(path))
            }
            source => StorageError::Unavailable {
                location: self.uri(path),
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
            .map_err(|e| self.unavailable(path, e))
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
            Err(e) => Err(self.unavailable(path, e)),
        }
    }

    /// The object's bytes when it holds at most `limit` bytes. The size is checked from the
    /// object's metadata before the body is read and again while reading (a server that
    /// sends more than it announced is cut off), so at most `limit` bytes are ever buffered.
    /// Outages are retried like [`Storage::get`]; what retrying cannot change — a missing
    /// object, refused credentials, an object too large — comes back as an [`ObjectRead`].
    pub async fn get_at_most(&self, path: &Path, limit: u64) -> Result<ObjectRead, StorageError> {
        let attempt = || async {
            let found = self.store.get(path).await?;
            if found.meta.size > limit {
                return Ok(ObjectRead::TooLarge {
                    size: found.meta.size,
                });
            }
            let mut body = bytes::BytesMut::with_capacity(found.meta.size as usize);
            let mut chunks = found.into_stream();
            while let Some(chunk) = chunks.try_next().await? {
                if (body.len() + chunk.len()) as u64 > limit {
                    return Ok(ObjectRead::TooLarge {
                        size: (body.len() + chunk.len()) as u64,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(ObjectRead::Found(body.freeze()))
        };
        match attempt
            .retry(self.retry)
            .when(is_transient)
            .notify(|e, delay| tracing::warn!(%path, error = %e, ?delay, "object store read failed; retrying"))
            .await
        {
            Ok(read) => Ok(read),
            Err(object_store::Error::NotFound { .. }) => Ok(ObjectRead::Missing),
            Err(
                e @ (object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => Ok(ObjectRead::Denied(e.to_string())),
            Err(e) => Err(self.unavailable(path, e)),
        }
    }

    /// Deletes an object; a missing object is fine.
    pub async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        let attempt = || async { self.store.delete(path).await };
        match attempt.retry(self.retry).when(is_transient).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.unavailable(path, e)),
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
            .map_err(|e| self.unavailable(dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A loopback address where nothing listens: bound to a free port, then released.
    fn dead_endpoint() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        format!("http://127.0.0.1:{port}")
    }

    #[tokio::test]
    async fn an_endpoint_with_nothing_listening_fails_within_our_retry_budget() {
        let endpoint = dead_endpoint();
        let jobs = JobsConfig {
            retry_times: 2,
            retry_min_delay_ms: 50,
            retry_max_delay_ms: 200,
            ..JobsConfig::default()
        };
        let storage = Storage::from_url_with(
            "s3://t2v-down/outputs",
            &jobs,
            &[
                ("AWS_ENDPOINT_URL", &endpoint),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "t2v-test"),
                ("AWS_SECRET_ACCESS_KEY", "t2v-test"),
            ],
        )
        .unwrap();
        let key = storage.job_path("job-1", "video.mp4");
        let started = Instant::now();
        let err = storage
            .put(&key, Bytes::from_static(b"mp4"), "video/mp4", false)
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        eprintln!("gave up after {elapsed:?}: {err}");
        assert!(matches!(err, StorageError::Unavailable { .. }), "{err:?}");
        // With object_store's own retries (10, backoff up to 15 s) left on, this took 13 s.
        assert!(
            elapsed < Duration::from_secs(5),
            "took {elapsed:?} to give up"
        );
        let message = err.to_string();
        assert!(
            message.contains("s3://t2v-down/outputs/job-1/video.mp4"),
            "{message}"
        );
        assert!(message.contains(&endpoint), "{message}");
        // A bounded read (a request's image) is an outage too, not a missing object.
        let read = storage.get_at_most(&key, 1024).await;
        assert!(
            matches!(read, Err(StorageError::Unavailable { .. })),
            "{read:?}"
        );
    }

    #[test]
    fn bad_urls_fail_in_one_line_that_lists_the_supported_schemes() {
        for url in [
            "ftp://bucket/x",
            "bucket/prefix",
            "s3://",
            "gs:///prefix",
            "file://relative/dir",
        ] {
            let Err(err) = Storage::from_url(url, &JobsConfig::default()) else {
                panic!("{url} was accepted");
            };
            let message = err.to_string();
            assert!(matches!(err, StorageError::BadUrl { .. }), "{message}");
            assert!(!message.contains('\n'), "{message}");
            assert!(message.contains("file:///absolute/dir"), "{url}: {message}");
            assert!(check_url(url).is_err(), "{url}");
        }
        assert_eq!(
            check_url("file://relative/dir").unwrap_err().to_string(),
            "\"relative/dir\" is not an absolute path — use file:///absolute/dir"
        );
        assert_eq!(check_url("s3://"), Err(UrlError::NoBucket));
        assert!(StorageError::BadUrl {
            url: String::new(),
            reason: check_url("ftp://b").unwrap_err().into()
        }
        .to_string()
        .contains("s3://bucket/prefix, gs://bucket/prefix, az://container/prefix"));
    }

    #[test]
    fn cloud_urls_keep_their_scheme_and_bucket_in_event_uris() {
        let jobs = JobsConfig::default();
        let gcs = Storage::from_url_with(
            "gs://t2v-videos/outputs/",
            &jobs,
            &[("GOOGLE_SKIP_SIGNATURE", "true")],
        )
        .unwrap();
        let key = gcs.job_path("job-1", "video.mp4");
        assert_eq!(gcs.uri(&key), "gs://t2v-videos/outputs/job-1/video.mp4");
        assert!(gcs.content_types);

        let azure_settings = [
            ("AZURE_STORAGE_ACCOUNT_NAME", "t2vvideos"),
            ("AZURE_SKIP_SIGNATURE", "true"),
        ];
        for (url, uri) in [
            ("az://videos/outputs", "az://videos/outputs/job-1/video.mp4"),
            ("azure://videos", "azure://videos/job-1/video.mp4"),
            (
                "abfss://videos@t2vvideos.dfs.core.windows.net/outputs",
                "abfss://videos@t2vvideos.dfs.core.windows.net/outputs/job-1/video.mp4",
            ),
        ] {
            let azure = Storage::from_url_with(url, &jobs, &azure_settings).unwrap();
            assert_eq!(azure.uri(&azure.job_path("job-1", "video.mp4")), uri);
            assert!(azure.content_types);
        }
    }

    #[test]
    fn unusable_credentials_name_the_variables_to_set() {
        // (url, settings, the variable the error must name)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case<'_>; 2] = [
            (
                "gs://bucket",
                &[("GOOGLE_SERVICE_ACCOUNT", "/nonexistent/t2v-sa.json")],
                "GOOGLE_APPLICATION_CREDENTIALS",
            ),
            (
                "az://videos",
                &[
                    ("AZURE_STORAGE_ACCOUNT_NAME", "t2v"),
                    ("AZURE_STORAGE_ACCOUNT_KEY", "%% not base64 %%"),
                ],
                "AZURE_STORAGE_ACCOUNT_KEY",
            ),
        ];
        for (url, settings, variable) in cases {
            let err = Storage::from_url_with(url, &JobsConfig::default(), settings)
                .err()
                .unwrap_or_else(|| panic!("{url} with {settings:?} was accepted"));
            let message = err.to_string();
            assert!(matches!(err, StorageError::BadUrl { .. }), "{message}");
            assert!(message.contains(variable), "{message}");
        }
    }

    #[test]
    fn an_unknown_setting_is_an_error_not_ignored() {
        let err = Storage::from_url_with(
            "gs://bucket",
            &JobsConfig::default(),
            &[("GOOGLE_NO_SUCH_KEY", "1")],
        )
        .err()
        .expect("unknown setting accepted");
        assert!(err.to_string().contains("GOOGLE_NO_SUCH_KEY"), "{err}");
    }

    #[test]
    fn sha256_is_lowercase_hex() {
        assert_eq!(
            t2v_contract::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn bounded_reads_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let storage = Storage::from_url(&url, &JobsConfig::default()).unwrap();
        let key = storage.path("image.png");
        storage
            .put(&key, Bytes::from(vec![7u8; 100]), "image/png", false)
            .await
            .unwrap();
        assert_eq!(
            storage.get_at_most(&key, 100).await.unwrap(),
            ObjectRead::Found(Bytes::from(vec![7u8; 100]))
        );
        assert_eq!(
            storage.get_at_most(&key, 99).await.unwrap(),
            ObjectRead::TooLarge { size: 100 }
        );
        assert_eq!(
            storage
                .get_at_most(&storage.path("none.png"), 99)
                .await
                .unwrap(),
            ObjectRead::Missing
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
    }
}

//! Download links for completed videos. Objects in S3, GCS or Azure get short-lived signed URLs
//! from object_store's signer (credentials from the usual environment: `AWS_*`, `GOOGLE_*`,
//! `AZURE_*`), so the bytes never pass through the gateway; a `file://` artifact has no signer and
//! is streamed by the gateway itself at `/v1/videos/{id}/files/{name}` (behind the same auth).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::path::Path;
use object_store::signer::{Method, Signer};

/// Where a client fetches an artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// A pre-signed URL that expires at `expires_at_unix_ms`.
    Signed {
        url: String,
        expires_at_unix_ms: u64,
    },
    /// Streamed by this gateway (a `file://` artifact).
    Streamed { path: String },
}

/// Signers by `scheme://bucket`, built on first use and kept (they hold only credentials).
pub struct Links {
    ttl: Duration,
    signers: Mutex<HashMap<String, Arc<dyn Signer>>>,
}

impl Links {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            signers: Mutex::new(HashMap::new()),
        }
    }

    /// The link to `uri`, the artifact `name` ("video", "thumbnail") of job `job_id`.
    pub async fn link(&self, uri: &str, job_id: &str, name: &str) -> Result<Link, String> {
        if uri.starts_with("file://") {
            return Ok(Link::Streamed {
                path: format!("/v1/videos/{job_id}/files/{name}"),
            });
        }
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| format!("artifact URI {uri} has no scheme"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| format!("artifact URI {uri} has no object key"))?;
        let signer = self.signer(scheme, bucket)?;
        let url = signer
            .signed_url(Method::GET, &Path::from(key), self.ttl)
            .await
            .map_err(|e| format!("signing {uri}: {e}"))?;
        Ok(Link::Signed {
            url: url.to_string(),
            expires_at_unix_ms: t2v_contract::now_unix_ms() + self.ttl.as_millis() as u64,
        })
    }

    fn signer(&self, scheme: &str, bucket: &str) -> Result<Arc<dyn Signer>, String> {
        let id = format!("{scheme}://{bucket}");
        let mut signers = self
            .signers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(signer) = signers.get(&id) {
            return Ok(signer.clone());
        }
        let built: Arc<dyn Signer> = match scheme {
            "s3" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| format!("S3 signer for {id}: {e}"))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| format!("GCS signer for {id}: {e}"))?,
            ),
            "az" | "azure" | "abfs" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(bucket)
                    .build()
                    .map_err(|e| format!("Azure signer for {id}: {e}"))?,
            ),
            other => return Err(format!("no signer for {other}:// artifacts")),
        };
        signers.insert(id, built.clone());
        Ok(built)
    }
}

/// The local path of a `file://` URI.
pub fn file_path(uri: &str) -> Option<std::path::PathBuf> {
    uri.strip_prefix("file://").map(std::path::PathBuf::from)
}

//! The stack's bucket: listing and getting objects, and S3 outages — the S3 server stopped while
//! a test watches what the worker does, then started again.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use t2v_contract::now_unix_ms;

use crate::kafka::wait_started_at;
use crate::stack::{stack_env, Service, StackGuard};
use crate::worker::WorkerProcess;

/// The stack's bucket through object_store.
pub fn bucket() -> Arc<dyn ObjectStore> {
    let env = stack_env();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&env["T2V_S3_BUCKET"])
        .with_endpoint(&env["T2V_S3_ENDPOINT"])
        .with_region(&env["T2V_S3_REGION"])
        .with_access_key_id(&env["AWS_ACCESS_KEY_ID"])
        .with_secret_access_key(&env["AWS_SECRET_ACCESS_KEY"])
        .with_allow_http(true)
        .build()
        .unwrap();
    Arc::new(store)
}

/// Keys under `prefix` in the bucket, sorted.
pub async fn list_keys(prefix: &str) -> Vec<String> {
    let path = Path::from(prefix);
    let mut keys: Vec<String> = bucket()
        .list(Some(&path))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// Waits until something exists under `prefix` (e.g. a job's first checkpoint); panics after
/// `timeout` with `logs()` (the worker's) in the message.
pub async fn wait_for_keys(prefix: &str, timeout: std::time::Duration, logs: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + timeout;
    while list_keys(prefix).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing under {prefix} within {timeout:?}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The object at `s3://bucket/key` (or a bare key).
pub async fn get_object(uri_or_key: &str) -> Vec<u8> {
    let key = uri_or_key
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, k)| k)
        .unwrap_or(uri_or_key);
    bucket()
        .get(&Path::from(key))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// The stack's S3 server stopped for the lifetime of this value; dropping it starts it
/// again, even when the test fails. Tests that take storage away from the stack must run alone
/// in their test binary (cargo runs test binaries one after another) or hold a lock.
pub struct S3Outage {
    guard: StackGuard,
    /// When the stop was done (Unix ms).
    pub stopped_at: u64,
}

impl S3Outage {
    pub fn begin() -> Self {
        // The guard exists before the stop, so a half-done stop is undone too.
        let mut guard = StackGuard::default();
        guard.take_down(Service::S3).unwrap();
        Self {
            guard,
            stopped_at: now_unix_ms(),
        }
    }

    /// Waits for the first Started on `events_topic`, then stops the S3 server: from the
    /// Started on, the job's next object-store call is the upload after `denoise_ms` of
    /// denoising (the dedupe read and the attempt marker are done). Asserts that the stop was
    /// done before that upload. Returns the outage and the Started's `emitted_at_unix_ms`.
    pub fn after_started(
        events_topic: &str,
        worker: &WorkerProcess,
        denoise_ms: u64,
    ) -> (Self, u64) {
        let started_at = wait_started_at(events_topic, worker);
        let outage = Self::begin();
        assert!(
            outage.stopped_at < started_at + denoise_ms,
            "the S3 server took too long to stop ({} ms after Started); the upload may have run \
             before the outage",
            outage.stopped_at - started_at
        );
        (outage, started_at)
    }

    /// Starts the S3 server again (once).
    pub fn end(&mut self) -> Result<(), String> {
        self.guard.bring_up(Service::S3)
    }
}

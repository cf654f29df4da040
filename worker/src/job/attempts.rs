//! Attempt markers: how a worker knows that a job keeps killing the workers that run it.
//!
//! Before generating, a worker writes a create-only marker `<job>/attempts/<attempt>/<n>` next to
//! the outputs; `n` markers already there are `n` earlier runs that started and never finished.
//! A clean stop (shutdown, storage outage) deletes its marker again, but the deletion can fail —
//! during a storage outage it always does. Markers are therefore kept per request `attempt`
//! (the counter a re-queue increments): a re-queued copy starts counting afresh, so an outage
//! never uses up the crash budget, while a crash (the same record read again, same `attempt`)
//! still counts.

use bytes::Bytes;
use object_store::path::Path;

use crate::storage::{Storage, StorageError};

/// The folder of a job's markers, under its outputs.
pub const ATTEMPTS_DIR: &str = "attempts";

/// Creates the next marker for `attempt` of `job_id` (create-only, so two workers never claim
/// the same number) and returns `(n, its key)`: `n` runs of this attempt started before.
pub async fn claim(
    storage: &Storage,
    job_id: &str,
    attempt: u32,
    worker_id: &str,
) -> Result<(u32, Path), StorageError> {
    let dir = storage
        .job_path(job_id, ATTEMPTS_DIR)
        .join(attempt.to_string().as_str());
    let mut n = storage.list(&dir).await?.len() as u32;
    loop {
        let key = dir.clone().join(format!("{n:04}").as_str());
        match storage
            .put(&key, Bytes::from(worker_id.to_string()), "text/plain", true)
            .await
        {
            Ok(()) => return Ok((n, key)),
            Err(StorageError::AlreadyExists(_)) => n += 1,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JobsConfig;

    #[tokio::test]
    async fn markers_count_crashes_per_attempt_and_a_given_back_marker_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let storage = Storage::from_url(&url, &JobsConfig::default()).unwrap();

        assert_eq!(claim(&storage, "job-1", 0, "w1").await.unwrap().0, 0);
        let (n, marker) = claim(&storage, "job-1", 0, "w2").await.unwrap();
        assert_eq!(n, 1, "the first run crashed: one earlier start");
        assert!(
            marker.as_ref().ends_with("job-1/attempts/0/0001"),
            "{marker}"
        );
        storage.delete(&marker).await.unwrap();
        assert_eq!(claim(&storage, "job-1", 0, "w3").await.unwrap().0, 1);

        // A re-queued copy (attempt 1) does not inherit attempt 0's markers.
        assert_eq!(claim(&storage, "job-1", 1, "w4").await.unwrap().0, 0);
        assert_eq!(claim(&storage, "job-2", 0, "w4").await.unwrap().0, 0);
    }
}

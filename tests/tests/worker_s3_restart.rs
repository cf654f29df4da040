//! The S3 server goes away while a job is generating and comes back a few seconds later: the
//! worker's uploads fail, are retried, and the job still completes exactly once — one manifest,
//! one Completed, whose digests are those of the stored objects.
//!
//! The only test in this binary, because it stops the stack's shared S3 server (cargo runs test
//! binaries one after another). `S3Outage` starts it again even when the test fails.

use std::time::Duration;

use t2v_contract::{now_unix_ms, sha256_hex};
use t2v_proto::v1::{generation_event::Kind, GenerationRequest};
use t2v_tests::{
    completed, get_object, list_keys, record_count, synthetic_request, wait_committed,
    wait_completed, wait_events, S3Outage, WorkerSetup,
};

/// Synthetic steps of the job and the sleep per step: 10 s of "denoising", long enough for
/// `stack.sh stop-s3` to finish before the first upload. VersityGW stops in about 2 s when the
/// worker's keep-alive connections are idle, as they are while it denoises (up to 12 s with a
/// request in flight).
const STEPS: u32 = 80;
const STEP_MS: u64 = 125;
/// How long the S3 server stays down after the job's denoising ended: longer than the first retries
/// (200 ms, 400 ms, 800 ms, 1.6 s with jitter), shorter than the retry budget below.
const DOWN_AFTER_DENOISE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn s3_down_during_upload_and_back_the_job_completes_once() {
    let setup = WorkerSetup::new("s3restart", 1).await;
    // Retry budget in place: 200 ms doubling to 2 s, 12 times (about 17 s) > the outage.
    let worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", &STEP_MS.to_string()),
        ("T2V_JOBS__RETRY_TIMES", "12"),
        ("T2V_JOBS__RETRY_MIN_DELAY_MS", "200"),
        ("T2V_JOBS__RETRY_MAX_DELAY_MS", "2000"),
    ]);
    worker.wait_ready(Duration::from_secs(60));
    setup
        .submitter()
        .submit(GenerationRequest {
            prompt: "rain on a tin roof".into(),
            seed: Some(7),
            ..synthetic_request("s3-outage-1", STEPS)
        })
        .await
        .unwrap();

    // 1. Started means the dedupe read and the attempt marker are done: the next object-store
    //    call is the upload after denoising. Stop the S3 server now.
    let denoise_ms = u64::from(STEPS) * STEP_MS;
    let (mut outage, started_at) = S3Outage::after_started(&setup.events, &worker, denoise_ms);
    let denoise_end = started_at + denoise_ms;

    // 2. Keep it down past the end of denoising plus the first retries, then start it again.
    let down_until = Duration::from_millis(denoise_end.saturating_sub(now_unix_ms()));
    tokio::time::sleep(down_until + DOWN_AFTER_DENOISE).await;
    assert!(
        wait_events(&setup.events, Duration::from_secs(1), |_| false)
            .iter()
            .all(|e| !matches!(e.kind, Some(Kind::Completed(_)))),
        "completed while S3 was down?"
    );
    let restarted_at = now_unix_ms();
    outage.end().unwrap();

    // 3. The job completes once, after the restart.
    let (events, c) = wait_completed(&setup.events, &worker, Duration::from_secs(120));
    let completed_at = completed(&events)[0].0.emitted_at_unix_ms;
    assert!(
        completed_at >= restarted_at,
        "Completed ({completed_at}) before the S3 server was started again ({restarted_at})"
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.kind, Some(Kind::Failed(_) | Kind::Canceled(_)))),
        "{events:?}"
    );

    // 4. The stored objects are the announced ones, with one manifest.
    let video = c.video.as_ref().unwrap();
    let video_bytes = get_object(&video.uri).await;
    assert_eq!(video_bytes.len() as u64, video.size_bytes);
    assert_eq!(sha256_hex(&video_bytes), video.sha256);
    let thumb = c.thumbnail.as_ref().unwrap();
    assert_eq!(sha256_hex(&get_object(&thumb.uri).await), thumb.sha256);
    let manifest = c.manifest.as_ref().unwrap();
    let manifest_bytes = get_object(&manifest.uri).await;
    assert_eq!(sha256_hex(&manifest_bytes), manifest.sha256);
    let m: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(m["video"]["sha256"], video.sha256.as_str());
    let keys = list_keys(&format!("{}/s3-outage-1", setup.prefix)).await;
    let names: Vec<&str> = keys.iter().filter_map(|k| k.rsplit('/').next()).collect();
    assert_eq!(
        keys.iter()
            .filter(|k| k.ends_with("/manifest.json"))
            .count(),
        1,
        "{keys:?}"
    );
    assert!(
        names.contains(&"video.mp4") && names.contains(&"thumbnail.jpg"),
        "{keys:?}"
    );

    // 5. Nothing more arrives: no second Completed, for a while.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all = wait_events(&setup.events, Duration::from_secs(3), |_| false);
    assert_eq!(completed(&all).len(), 1, "logs:\n{}", worker.logs());
    let committed = wait_committed(
        &setup.group,
        &setup.requests,
        0,
        record_count(&setup.requests),
    )
    .await;
    assert_eq!(
        committed,
        Some(record_count(&setup.requests)),
        "every request record (the job, and its re-queued copy if the retries ran out) is committed"
    );
    let logs = worker.logs();
    eprintln!(
        "upload_ms = {}, retries logged = {}, request records = {}",
        c.timings.as_ref().map_or(0, |t| t.upload_ms),
        logs.matches("retrying").count(),
        record_count(&setup.requests)
    );
}

//! `t2v-worker run` with `backend = wan` on the tiny random-weight two-expert model of
//! `make fixtures`, through the real broker and S3 server: one request becomes one Completed whose
//! MP4 is byte-identical to what `t2v-worker generate --out` writes for the same settings (the
//! same pipeline, frames and encoder), and whose revision is the model's config digest.
//!
//! Fixtures: `$T2V_FIXTURES` (default `<workspace>/build/fixtures`); the stack: `make up`.

use std::time::Duration;

use t2v_tests::{
    completed, get_object, tiny_model_generate_mp4, tiny_model_request, wait_job_end, WorkerSetup,
};

#[tokio::test]
async fn the_wan_backend_completes_a_job_with_the_pipelines_video() {
    let setup = WorkerSetup::new("wan", 1).await;
    let worker = setup.start_tiny_model_worker(&[]);
    let request = tiny_model_request("wan-1", 4);
    setup.submitter().submit(request).await.unwrap();

    let events = wait_job_end(&setup.events, Duration::from_secs(120));
    let done = completed(&events);
    assert_eq!(
        done.len(),
        1,
        "one Completed; events: {events:?}\nlogs:\n{}",
        worker.logs()
    );
    let c = done[0].1;
    assert_eq!(
        (c.seed, c.width, c.height, c.num_frames, c.fps),
        (42, 64, 64, 9, 8)
    );
    assert_eq!(c.model_revision.len(), 12, "a config digest: {c:?}");
    assert_ne!(c.model_revision, "synthetic-v1");
    let timings = c.timings.as_ref().expect("timings");
    assert!(
        timings.denoise_ms + timings.vae_decode_ms > 0,
        "{timings:?}"
    );
    let video = get_object(&c.video.as_ref().unwrap().uri).await;

    // The same settings through `t2v-worker generate`.
    let expected = tiny_model_generate_mp4(4);
    assert!(
        video[..] == expected[..],
        "the worker's MP4 ({} bytes) differs from `generate`'s ({} bytes)",
        video.len(),
        expected.len()
    );
}

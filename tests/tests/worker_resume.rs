//! Spot-safe jobs (docs/design.md "Delivery semantics") with `backend = wan` on the tiny two-expert model of `make fixtures`,
//! through the real broker and S3 server: a worker checkpointing every step is SIGTERMed mid-job,
//! exits 0 leaving a checkpoint `<prefix>/<job>/checkpoint/step-NNNNNN.safetensors`; a second
//! worker process resumes at that step (`resumed_from_step` in Started and Progress), completes
//! the job with an MP4 byte-identical to an uninterrupted `t2v-worker generate` of the same
//! settings, and deletes the checkpoint after the manifest.
//!
//! Fixtures: `$T2V_FIXTURES` (default `<workspace>/build/fixtures`); the stack: `make up`.

use std::time::Duration;

use t2v_proto::v1::generation_event::Kind;
use t2v_tests::{
    completed, get_object, list_keys, starts, tiny_model_generate_mp4, tiny_model_request,
    wait_events, wait_for_keys, WorkerSetup,
};

/// Enough steps that the SIGTERM lands mid-run on the tiny model.
const STEPS: u32 = 200;

fn step_of(key: &str) -> u32 {
    key.rsplit('/')
        .next()
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.strip_suffix(".safetensors"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a checkpoint key: {key}"))
}

#[tokio::test]
async fn a_sigtermed_job_resumes_on_another_worker_with_identical_bytes() {
    let setup = WorkerSetup::new("resume", 1).await;
    let env = [("T2V_CHECKPOINT__EVERY_STEPS", "1")];
    let mut first = setup.start_tiny_model_worker(&env);
    first.wait_ready(Duration::from_secs(120));
    let request = tiny_model_request("resume-1", STEPS);
    setup.submitter().submit(request).await.unwrap();

    // 1. SIGTERM once a periodic checkpoint is stored.
    let checkpoints = format!("{}/resume-1/checkpoint", setup.prefix);
    wait_for_keys(&checkpoints, Duration::from_secs(120), || first.logs()).await;
    first.stop(Duration::from_secs(30));
    let left = list_keys(&checkpoints).await;
    assert_eq!(
        left.len(),
        1,
        "one checkpoint (older ones deleted): {left:?}"
    );
    let saved = step_of(&left[0]);
    assert!(
        saved > 0 && saved < STEPS,
        "stopped mid-run at {saved}; logs:\n{}",
        first.logs()
    );
    eprintln!("SIGTERM left a checkpoint at step {saved} of {STEPS}");
    assert!(
        list_keys(&format!("{}/resume-1/manifest.json", setup.prefix))
            .await
            .is_empty(),
        "no manifest yet"
    );

    // 2. Another worker process resumes and completes.
    let second = setup.start_tiny_model_worker(&env);
    let events = wait_events(&setup.events, Duration::from_secs(180), |e| {
        e.iter()
            .any(|e| matches!(e.kind, Some(Kind::Completed(_)) | Some(Kind::Failed(_))))
    });
    let starts = starts(&events);
    assert_eq!(starts.len(), 2, "{starts:?}\nlogs:\n{}", second.logs());
    assert_eq!(starts[0].1, 0, "the first run started from step 0");
    assert_eq!(
        starts[1].1,
        saved,
        "the second resumed at the checkpoint; logs:\n{}",
        second.logs()
    );
    assert_ne!(starts[0].0, starts[1].0, "two different workers");
    let resumed_progress: Vec<(u32, u32)> = events
        .iter()
        .filter(|e| e.worker_id == starts[1].0)
        .filter_map(|e| match &e.kind {
            Some(Kind::Progress(p)) => Some((p.step, p.resumed_from_step)),
            _ => None,
        })
        .collect();
    assert!(
        !resumed_progress.is_empty()
            && resumed_progress
                .iter()
                .all(|&(step, from)| from == saved && step > saved),
        "{resumed_progress:?}"
    );
    let completed = completed(&events)
        .first()
        .map(|(_, c)| (*c).clone())
        .unwrap_or_else(|| panic!("Completed; events {events:?}\n{}", second.logs()));
    assert!(
        list_keys(&checkpoints).await.is_empty(),
        "checkpoints deleted after the manifest"
    );
    let video = get_object(&completed.video.as_ref().unwrap().uri).await;

    // 3. The uninterrupted run of the same settings.
    let expected = tiny_model_generate_mp4(STEPS);
    assert!(
        video[..] == expected[..],
        "the resumed MP4 ({} bytes) differs from the uninterrupted one ({} bytes)",
        video.len(),
        expected.len()
    );
}

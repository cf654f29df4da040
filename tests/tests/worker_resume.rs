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
    completed, get_object, list_keys, tiny_model_generate_mp4, wait_taken_over, WorkerSetup,
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

    // 1. SIGTERM once a periodic checkpoint is stored.
    let first = setup
        .interrupt_tiny_model_job(&env, "resume-1", STEPS)
        .await;
    let saved = step_of(&first.left[0]);
    assert!(
        saved > 0 && saved < STEPS,
        "stopped mid-run at {saved}; logs:\n{}",
        first.worker.logs()
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
    let (events, starts) = wait_taken_over(&setup.events, &second, Duration::from_secs(180));
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
        list_keys(&first.checkpoints).await.is_empty(),
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

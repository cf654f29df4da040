//! Out of memory is a job's failure, not the worker's: `t2v-worker run` with the Wan backend on
//! the tiny two-expert model of `make fixtures` (CPU) and `[model] memory_budget_gib` set small.
//! A job whose estimated peak exceeds the budget is refused before any step with exactly one
//! Failed(RESOURCE_EXHAUSTED, not retryable) naming the estimate, the budget and settings that
//! fit; it leaves no outputs and its offset is stored. The setting it offers then completes on
//! the same worker, and `/healthz` answers 200 throughout.
//!
//! Fixtures: `$T2V_FIXTURES` (default `<workspace>/build/fixtures`); the stack: `make up`.

use std::time::Duration;

use t2v_proto::v1::{generation_event::Kind, ErrorCode, GenerationEvent, GenerationRequest};
use t2v_tests::{
    is_terminal, list_keys, synthetic_request, wait_committed, wait_events, WorkerSetup,
};

fn request(job_id: &str, width: u32, height: u32, num_frames: u32) -> GenerationRequest {
    GenerationRequest {
        width,
        height,
        num_frames,
        seed: Some(7),
        ..synthetic_request(job_id, 2)
    }
}

fn of_job<'a>(events: &'a [GenerationEvent], job_id: &'a str) -> impl Iterator<Item = &'a Kind> {
    events
        .iter()
        .filter(move |e| e.job_id == job_id)
        .filter_map(|e| e.kind.as_ref())
}

fn terminal(events: &[GenerationEvent], job_id: &str) -> bool {
    of_job(events, job_id).any(is_terminal)
}

/// `"80×80 with 81 frames (45.1 MiB)"` → (80, 80, 81): the first setting an OOM message offers.
fn first_offer(message: &str) -> (u32, u32, u32) {
    let offered = message
        .split("settings that fit: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no settings offered: {message}"));
    let (size, rest) = offered.split_once(" with ").unwrap();
    let (w, h) = size.split_once('×').unwrap();
    let frames = rest.split(' ').next().unwrap();
    (
        w.parse().unwrap(),
        h.parse().unwrap(),
        frames.parse().unwrap_or_else(|_| panic!("{message}")),
    )
}

#[tokio::test]
async fn a_job_over_the_memory_budget_fails_up_front_and_the_worker_goes_on() {
    let setup = WorkerSetup::new("oom", 1).await;
    let worker = setup.start_tiny_model_worker(&[("T2V_MODEL__MEMORY_BUDGET_GIB", "0.05")]);
    worker.wait_ready(Duration::from_secs(120));
    let submitter = setup.submitter();

    // 1. Over the budget: refused before any step.
    submitter
        .submit(request("oom-1", 512, 512, 81))
        .await
        .unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(120), |e| {
        terminal(e, "oom-1")
    });
    let logs = worker.logs();
    let failed: Vec<_> = of_job(&events, "oom-1")
        .filter_map(|k| match k {
            Kind::Failed(f) => Some(f.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "one Failed: {events:?}\n{logs}");
    let f = &failed[0];
    assert_eq!(f.code, ErrorCode::ResourceExhausted as i32, "{f:?}");
    assert!(!f.retryable, "{f:?}");
    assert!(
        f.message.starts_with("512×512×81 needs an estimated ")
            && f.message.contains(
                " but the memory budget is 51.2 MiB (model.memory_budget_gib) — settings that fit: "
            ),
        "{}",
        f.message
    );
    assert!(
        !of_job(&events, "oom-1").any(|k| matches!(k, Kind::Progress(_) | Kind::Completed(_))),
        "no step ran: {events:?}"
    );
    let outputs: Vec<String> = list_keys(&format!("{}/oom-1", setup.prefix))
        .await
        .into_iter()
        .filter(|k| !k.contains("/attempts/"))
        .collect();
    assert!(outputs.is_empty(), "no outputs: {outputs:?}");
    assert_eq!(
        wait_committed(&setup.group, &setup.requests, 0, 1).await,
        Some(1),
        "offset stored after the Failed\n{logs}"
    );
    assert_eq!(worker.http_get("/healthz").map(|(s, _)| s), Some(200));

    // 2. The setting the message offered fits and completes on the same worker.
    let (width, height, num_frames) = first_offer(&f.message);
    assert!(width * height * num_frames < 512 * 512 * 81);
    submitter
        .submit(request("fits-1", width, height, num_frames))
        .await
        .unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(180), |e| {
        terminal(e, "fits-1")
    });
    let done: Vec<_> = of_job(&events, "fits-1")
        .filter_map(|k| match k {
            Kind::Completed(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        done.len(),
        1,
        "one Completed: {events:?}\n{}",
        worker.logs()
    );
    assert_eq!(
        (done[0].width, done[0].height, done[0].num_frames),
        (width, height, num_frames)
    );
    assert_eq!(
        wait_committed(&setup.group, &setup.requests, 0, 2).await,
        Some(2)
    );
    assert_eq!(worker.http_get("/healthz").map(|(s, _)| s), Some(200));
    let metrics = worker
        .http_get("/metrics")
        .map(|(_, m)| m)
        .unwrap_or_default();
    for outcome in ["failed", "completed"] {
        let line = format!("t2v_jobs_total{{outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

//! A job that runs well past `max.poll.interval.ms` (set small here: 6 s, the broker's minimum
//! session timeout) completes without a rebalance: the worker pauses its partitions and keeps
//! polling while the job runs, so the group never evicts it.
//!
//! Observables: exactly one Accepted, Started and Completed; the worker logged one partition
//! assignment and no revocation; librdkafka never reported the poll interval exceeded; the offset
//! is committed once the job is done.

use std::time::Duration;

use t2v_proto::v1::{generation_event::Kind, GenerationRequest};
use t2v_tests::{
    completed, count_kind, synthetic_request, wait_committed, wait_events, WorkerSetup,
};

/// `max.poll.interval.ms` and `session.timeout.ms` of the worker under test.
const MAX_POLL_INTERVAL_MS: u64 = 6000;
/// 150 steps × 100 ms = 15 s of denoising, 2.5 × the poll interval.
const STEPS: u32 = 150;
const STEP_MS: u64 = 100;

#[tokio::test]
async fn a_job_longer_than_max_poll_interval_completes_without_a_rebalance() {
    let setup = WorkerSetup::new("longjob", 1).await;
    let interval = MAX_POLL_INTERVAL_MS.to_string();
    // The worker checks drain deadline + checkpoint write (2 s + 1 s) < max poll interval.
    let worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", &STEP_MS.to_string()),
        ("T2V_KAFKA__MAX_POLL_INTERVAL_MS", &interval),
        ("T2V_KAFKA__SESSION_TIMEOUT_MS", &interval),
        ("T2V_SHUTDOWN__DRAIN_DEADLINE_SECS", "2"),
        ("T2V_CHECKPOINT__MAX_WRITE_SECS", "1"),
        ("T2V_JOBS__PROGRESS_INTERVAL_MS", "1000"),
    ]);
    worker.wait_ready(Duration::from_secs(60));
    setup
        .submitter()
        .submit(GenerationRequest {
            prompt: "a glacier calving, slow motion".into(),
            ..synthetic_request("long-poll-1", STEPS)
        })
        .await
        .unwrap();

    wait_events(&setup.events, Duration::from_secs(120), |e| {
        count_kind(e, |k| matches!(k, Kind::Completed(_) | Kind::Failed(_))) > 0
    });
    // Anything a rebalance would redeliver shows up within a few more seconds: read it all again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = wait_events(&setup.events, Duration::from_secs(3), |_| false);
    let logs = worker.logs();
    assert_eq!(
        count_kind(&events, |k| matches!(k, Kind::Completed(_))),
        1,
        "exactly one Completed; events: {events:?}\nlogs:\n{logs}"
    );
    assert_eq!(count_kind(&events, |k| matches!(k, Kind::Accepted(_))), 1);
    assert_eq!(count_kind(&events, |k| matches!(k, Kind::Started(_))), 1);
    assert_eq!(
        count_kind(&events, |k| matches!(
            k,
            Kind::Failed(_) | Kind::Canceled(_)
        )),
        0
    );

    // The job really outlasted the backstop.
    let denoise_ms = completed(&events)
        .iter()
        .find_map(|(_, c)| c.timings.as_ref().map(|t| t.denoise_ms))
        .unwrap();
    assert!(
        denoise_ms > 2 * MAX_POLL_INTERVAL_MS,
        "denoising took {denoise_ms} ms, not clearly longer than {MAX_POLL_INTERVAL_MS} ms"
    );

    // No rebalance: one assignment (at start), no revocation, no poll-interval eviction.
    assert_eq!(
        logs.matches("partitions assigned").count(),
        1,
        "one assignment only; logs:\n{logs}"
    );
    assert_eq!(
        logs.matches("partitions revoked").count(),
        0,
        "no revocation; logs:\n{logs}"
    );
    assert!(
        !logs.to_lowercase().contains("maximum poll interval"),
        "librdkafka reported the poll interval exceeded; logs:\n{logs}"
    );

    let committed = wait_committed(&setup.group, &setup.requests, 0, 1).await;
    assert_eq!(committed, Some(1), "offset committed after Completed");
}

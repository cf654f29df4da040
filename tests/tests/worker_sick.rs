//! A sick GPU takes its worker out instead of failing every job: a stuck generation (the
//! watchdog) or internal failures in a row make the worker re-queue what it could not run,
//! leave the group and exit non-zero; a healthy worker then finishes the work. The synthetic
//! backend's fault injection plays the sick GPU.

use std::time::Duration;

use prost::Message as _;
use t2v_proto::v1::{generation_event::Kind, ErrorCode, GenerationRequest};
use t2v_tests::{read_topic, synthetic_request, terminal, wait_events, WorkerSetup};

#[tokio::test]
async fn a_stuck_generation_requeues_the_job_and_the_worker_exits() {
    let setup = WorkerSetup::new("sick-hang", 1).await;
    let mut sick = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_HANG_MARKER", "[hang]"),
        ("T2V_JOBS__STEP_TIMEOUT_SECS", "3"),
    ]);
    let req = GenerationRequest {
        prompt: "a fox [hang] in snow".into(),
        ..synthetic_request("hang-1", 2)
    };
    setup.submitter().submit(req).await.unwrap();

    let code = sick.wait_exit(Duration::from_secs(60));
    let logs = sick.logs();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exits non-zero: {code:?}\n{logs}"
    );
    assert!(logs.contains("step_timeout_secs"), "says why:\n{logs}");
    let requests = read_topic(&setup.requests, 2, Duration::from_secs(20));
    assert_eq!(requests.len(), 2, "the job was re-queued:\n{logs}");
    let again =
        GenerationRequest::decode(rdkafka::Message::payload(&requests[1]).unwrap()).unwrap();
    assert_eq!(
        (again.job_id.as_str(), again.attempt),
        ("hang-1", 0),
        "re-queued under the same attempt: the hung run's marker counts"
    );

    // A healthy worker (no fault injection) finishes it.
    let _healthy = setup.start_worker(&[]);
    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        terminal(e, "hang-1").is_some()
    });
    assert!(
        matches!(terminal(&events, "hang-1"), Some(Kind::Completed(_))),
        "{events:?}"
    );
}

/// A job that makes every worker sick does not circle the fleet: each hung run's attempt marker
/// counts, and at `max_attempts` the job ends Failed ATTEMPTS_EXHAUSTED with a DLQ copy.
#[tokio::test]
async fn a_job_that_hangs_every_worker_ends_in_the_dlq() {
    let setup = WorkerSetup::new("sick-every", 1).await;
    let hang = [
        ("T2V_MODEL__SYNTHETIC_HANG_MARKER", "[hang]"),
        ("T2V_JOBS__STEP_TIMEOUT_SECS", "2"),
        ("T2V_JOBS__MAX_ATTEMPTS", "1"),
    ];
    let req = GenerationRequest {
        prompt: "a fox [hang] in snow".into(),
        ..synthetic_request("hang-all", 2)
    };
    setup.submitter().submit(req).await.unwrap();
    let mut first = setup.start_worker(&hang);
    let code = first.wait_exit(Duration::from_secs(60));
    assert!(
        matches!(code, Some(c) if c != 0),
        "{code:?}\n{}",
        first.logs()
    );
    let second = setup.start_worker(&hang);
    let events = wait_events(&setup.events, Duration::from_secs(60), |e| {
        terminal(e, "hang-all").is_some()
    });
    match terminal(&events, "hang-all") {
        Some(Kind::Failed(f)) => assert_eq!(f.code, ErrorCode::AttemptsExhausted as i32, "{f:?}"),
        other => panic!(
            "expected ATTEMPTS_EXHAUSTED, got {other:?}\n{}",
            second.logs()
        ),
    }
    let dlq = read_topic(&setup.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1, "the request is in the DLQ");
}

#[tokio::test]
async fn internal_failures_in_a_row_take_the_worker_out() {
    let setup = WorkerSetup::new("sick-poisoned", 1).await;
    let mut sick = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_FAIL_AFTER_JOBS", "1"),
        ("T2V_JOBS__MAX_CONSECUTIVE_FAILURES", "2"),
    ]);
    let submitter = setup.submitter();
    for id in ["p-1", "p-2", "p-3", "p-4"] {
        submitter.submit(synthetic_request(id, 2)).await.unwrap();
    }
    let code = sick.wait_exit(Duration::from_secs(60));
    let logs = sick.logs();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exits non-zero: {code:?}\n{logs}"
    );
    assert!(
        logs.contains("max_consecutive_failures"),
        "says why:\n{logs}"
    );

    let _healthy = setup.start_worker(&[]);
    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        ["p-1", "p-2", "p-3", "p-4"]
            .iter()
            .all(|id| terminal(e, id).is_some())
    });
    match terminal(&events, "p-2") {
        Some(Kind::Failed(f)) => {
            assert_eq!(f.code, ErrorCode::Internal as i32);
            assert!(f.retryable);
        }
        other => panic!("p-2, the first failure: {other:?}\n{logs}"),
    }
    for id in ["p-1", "p-3", "p-4"] {
        assert!(
            matches!(terminal(&events, id), Some(Kind::Completed(_))),
            "{id}: {:?}\n{logs}",
            terminal(&events, id)
        );
    }
}

#[tokio::test]
async fn a_stuck_encoder_takes_the_worker_out_too() {
    let setup = WorkerSetup::new("sick-ffmpeg", 1).await;
    // An "ffmpeg" that never finishes.
    let dir = tempfile::tempdir().unwrap();
    let ffmpeg = dir.path().join("ffmpeg");
    std::fs::write(&ffmpeg, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&ffmpeg, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ffmpeg = ffmpeg.display().to_string();
    let mut sick = setup.start_worker(&[
        ("T2V_MEDIA__FFMPEG", ffmpeg.as_str()),
        ("T2V_JOBS__ENCODE_TIMEOUT_SECS", "3"),
    ]);
    setup
        .submitter()
        .submit(synthetic_request("stuck-encode", 2))
        .await
        .unwrap();
    let code = sick.wait_exit(Duration::from_secs(60));
    let logs = sick.logs();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exits non-zero: {code:?}\n{logs}"
    );
    assert!(logs.contains("encode_timeout_secs"), "says why:\n{logs}");
    let requests = read_topic(&setup.requests, 2, Duration::from_secs(20));
    assert_eq!(requests.len(), 2, "the job was re-queued:\n{logs}");
}

#[tokio::test]
async fn a_step_slower_than_the_drain_deadline_does_not_count_as_a_crash() {
    let setup = WorkerSetup::new("sick-drain", 1).await;
    let mut worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "30000"),
        ("T2V_SHUTDOWN__DRAIN_DEADLINE_SECS", "1"),
        ("T2V_CHECKPOINT__MAX_WRITE_SECS", "1"),
    ]);
    setup
        .submitter()
        .submit(synthetic_request("slow-step", 2))
        .await
        .unwrap();
    wait_events(&setup.events, Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| e.job_id == "slow-step" && matches!(e.kind, Some(Kind::Started(_))))
    });
    let markers = format!("{}/slow-step/attempts/", setup.prefix);
    assert_eq!(
        t2v_tests::list_keys(&markers).await.len(),
        1,
        "the attempt is claimed"
    );
    worker.terminate();
    assert!(
        worker.wait_exit(Duration::from_secs(30)).is_some(),
        "{}",
        worker.logs()
    );
    assert!(
        t2v_tests::list_keys(&markers).await.is_empty(),
        "the drain deadline passing gave the attempt back:\n{}",
        worker.logs()
    );
}

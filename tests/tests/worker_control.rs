//! The cancel reader and the topics a worker needs, against the real broker:
//! - a missing control (or events, DLQ) topic fails the start with one line naming it, instead of
//!   a worker that runs on, deaf to cancels;
//! - a broker outage while the worker starts delays the cancel reader, it does not end it: the
//!   worker is not ready until the control topic is read, and cancels work once Kafka is back.
//!
//! The second test takes the shared broker down, so this binary's tests run one at a time.

use std::time::{Duration, Instant};

use t2v_proto::v1::generation_event::Kind;
use t2v_tests::{
    create_topics, synthetic_request, terminal, wait_events, Service, StackGuard, WorkerSetup,
};
use tokio::sync::Mutex;

/// One test at a time: one of them takes the broker away.
static ALONE: Mutex<()> = Mutex::const_new(());

#[tokio::test]
async fn a_missing_control_topic_fails_the_start_with_one_line() {
    let _alone = ALONE.lock().await;
    let setup = WorkerSetup::named("control-missing");
    create_topics(&[(&setup.requests, 1), (&setup.events, 1), (&setup.dlq, 1)]).await;
    let mut worker = setup.start_worker(&[]);
    let code = worker.wait_exit(Duration::from_secs(60));
    let logs = worker.logs();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exits non-zero: {code:?}\n{logs}"
    );
    let line = format!("topic {} is missing", setup.control);
    assert!(logs.contains(&line), "names the topic:\n{logs}");
    assert!(logs.contains("t2v topics apply"), "says the fix:\n{logs}");
}

#[tokio::test]
async fn the_cancel_reader_waits_out_a_broker_outage_at_start() {
    let _alone = ALONE.lock().await;
    let setup = WorkerSetup::new("control-outage", 1).await;
    let mut stack = StackGuard::default();
    stack.take_down(Service::Kafka).unwrap();
    let worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "200")]);
    // Long enough for the reader's first attempts to fail.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_ne!(
        worker.http_get("/readyz").map(|(status, _)| status),
        Some(200),
        "not ready while the control topic cannot be read:\n{}",
        worker.logs()
    );
    stack.bring_up(Service::Kafka).unwrap();
    let started = Instant::now();
    worker.wait_ready(Duration::from_secs(120));
    eprintln!("ready {:?} after Kafka came back", started.elapsed());

    let submitter = setup.submitter();
    submitter
        .submit(synthetic_request("outage-cancel", 200))
        .await
        .unwrap();
    wait_events(&setup.events, Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| e.job_id == "outage-cancel" && matches!(e.kind, Some(Kind::Progress(_))))
    });
    submitter
        .cancel("outage-cancel", "after the outage")
        .await
        .unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(30), |e| {
        terminal(e, "outage-cancel").is_some()
    });
    match terminal(&events, "outage-cancel") {
        Some(Kind::Canceled(c)) => assert_eq!(c.reason, "after the outage"),
        other => panic!("the cancel is honoured: {other:?}\n{}", worker.logs()),
    }
}

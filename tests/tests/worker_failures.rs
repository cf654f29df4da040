//! Bad input never stops a worker: undecodable bytes and an invalid request land in the DLQ with
//! their bytes intact and headers saying why, each gets a Failed event, and the next good request
//! still completes. A Cancel stops a job before it starts and between steps, with no outputs.

use std::time::Duration;

use prost::Message as _;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use t2v_proto::v1::{generation_event::Kind, ErrorCode, GenerationRequest};
use t2v_tests::{
    assert_dlq_source, header, list_keys, producer, read_topic, synthetic_request, terminal,
    wait_committed, wait_events, WorkerSetup,
};

#[tokio::test]
async fn garbage_and_invalid_requests_go_to_the_dlq_and_the_worker_keeps_going() {
    let setup = WorkerSetup::new("failures", 1).await;
    let worker = setup.start_worker(&[]);
    let producer = producer();
    let garbage: &[u8] = b"\xff\xfe not a protobuf \x00\x01";
    let invalid = GenerationRequest {
        num_frames: 80,
        ..synthetic_request("bad-1", 2)
    }
    .encode_to_vec();
    for (key, payload) in [("garbage-1", garbage), ("bad-1", invalid.as_slice())] {
        producer
            .send(
                FutureRecord::to(&setup.requests).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    setup
        .submitter()
        .submit(synthetic_request("ok-1", 2))
        .await
        .unwrap();

    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        terminal(e, "ok-1").is_some()
    });
    let logs = worker.logs();
    match terminal(&events, "garbage-1") {
        Some(Kind::Failed(f)) => {
            assert_eq!(f.code, ErrorCode::Undecodable as i32);
            assert!(!f.retryable);
        }
        other => panic!("garbage-1: {other:?}\n{logs}"),
    }
    match terminal(&events, "bad-1") {
        Some(Kind::Failed(f)) => {
            assert_eq!(f.code, ErrorCode::InvalidArgument as i32);
            assert!(f.message.contains("num_frames"), "{}", f.message);
            assert!(!f.retryable);
        }
        other => panic!("bad-1: {other:?}\n{logs}"),
    }
    assert!(
        matches!(terminal(&events, "ok-1"), Some(Kind::Completed(_))),
        "{events:?}\n{logs}"
    );

    let dlq = read_topic(&setup.dlq, 2, Duration::from_secs(20));
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].payload(), Some(garbage), "bytes intact");
    assert_eq!(dlq[0].key(), Some(b"garbage-1".as_slice()));
    assert!(header(&dlq[0], "t2v-dlq-reason")
        .unwrap()
        .contains("UNDECODABLE"));
    assert_eq!(dlq[1].payload(), Some(invalid.as_slice()), "bytes intact");
    assert!(header(&dlq[1], "t2v-dlq-reason")
        .unwrap()
        .contains("num_frames"));
    assert_dlq_source(&dlq[1], &setup.requests, 1);
    assert!(header(&dlq[1], "t2v-dlq-worker").is_some());
    assert!(list_keys(&format!("{}/bad-1", setup.prefix))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_cancel_stops_a_job_before_start_and_between_steps() {
    let setup = WorkerSetup::new("cancel", 1).await;
    let submitter = setup.submitter();
    // Canceled before it was even submitted: honoured before start.
    submitter
        .cancel("early-1", "changed my mind")
        .await
        .unwrap();
    let worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "200")]);
    submitter
        .submit(synthetic_request("early-1", 3))
        .await
        .unwrap();
    submitter
        .submit(synthetic_request("late-1", 100))
        .await
        .unwrap();

    let events = wait_events(&setup.events, Duration::from_secs(60), |e| {
        e.iter()
            .any(|e| e.job_id == "late-1" && matches!(e.kind, Some(Kind::Progress(_))))
    });
    match terminal(&events, "early-1") {
        Some(Kind::Canceled(c)) => {
            assert_eq!(c.at_step, 0);
            assert_eq!(c.reason, "changed my mind");
        }
        other => panic!("early-1: {other:?}\n{}", worker.logs()),
    }
    submitter.cancel("late-1", "too slow").await.unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(30), |e| {
        terminal(e, "late-1").is_some()
    });
    match terminal(&events, "late-1") {
        Some(Kind::Canceled(c)) => {
            assert!(
                c.at_step >= 1 && c.at_step < 100,
                "stopped between steps: {}",
                c.at_step
            );
            assert_eq!(c.reason, "too slow");
        }
        other => panic!("late-1: {other:?}\n{}", worker.logs()),
    }
    assert!(
        list_keys(&format!("{}/late-1/runs", setup.prefix))
            .await
            .is_empty(),
        "no outputs"
    );
    assert!(
        list_keys(&format!("{}/late-1/manifest.json", setup.prefix))
            .await
            .is_empty(),
        "no outputs"
    );
    let committed = wait_committed(&setup.group, &setup.requests, 0, 2).await;
    assert_eq!(committed, Some(2), "both offsets stored after Canceled");
}

//! The worker against its contract on paths a review found broken — each test here failed on the
//! worker as it was before the fix it covers (see the commit that added it):
//! - a record up to the brokers' 1 MiB reaches the DLQ byte for byte, its Failed event stays
//!   small, an oversized `tracestate` is not copied onto events, and the jobs behind them run;
//! - a committed job stays committed: re-read after its deadline or a late cancel it answers
//!   with its identical Completed, and another request under its job id is a conflict;
//! - a record keyed otherwise than its job id is rejected.

use std::time::Duration;

use prost::Message as _;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use t2v_contract::TraceContext;
use t2v_proto::v1::{generation_event::Kind, Completed, ErrorCode, GenerationEvent};
use t2v_tests::{
    header, read_topic, synthetic_request, terminal, terminals, wait_events, WorkerSetup,
};

/// Fresh topics (the DLQ takes 1 MiB records, as in production).
async fn setup(name: &str, requests_partitions: i32) -> WorkerSetup {
    WorkerSetup::new(name, requests_partitions).await
}

/// A producer that can send records up to the brokers' default maximum (1 MiB).
fn big_producer() -> FutureProducer {
    t2v_tests::producer()
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: OwnedHeaders,
) {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("sending {} bytes: {e}", payload.len()));
}

#[tokio::test]
async fn a_one_mib_record_reaches_the_dlq_intact_and_the_jobs_behind_it_run() {
    let setup = setup("reliability-big", 4).await;
    let worker = setup.start_worker(&[]);
    let producer = big_producer();

    // A request that breaks its bounds with a label of about 1 MB: the record is just under
    // the brokers' 1 MiB limit, above librdkafka's default producer limit (1,000,000 bytes).
    let mut big = synthetic_request("big-1", 2);
    big.labels.insert("blob".into(), "x".repeat(1_030_000));
    let big_bytes = big.encode_to_vec();
    assert!(big_bytes.len() > 1_000_000 && big_bytes.len() < 1_048_000);
    send(
        &producer,
        &setup.requests,
        "big-1",
        &big_bytes,
        OwnedHeaders::new(),
    )
    .await;

    // A valid request whose tracestate is 500 KB: events must not copy it.
    let trace = TraceContext::new_root();
    let huge_state = format!("vendor={}", "y".repeat(500_000));
    let traced = OwnedHeaders::new()
        .insert(Header {
            key: "traceparent",
            value: Some(trace.traceparent().as_str()),
        })
        .insert(Header {
            key: "tracestate",
            value: Some(huge_state.as_str()),
        });
    let ts = synthetic_request("tracestate-1", 2).encode_to_vec();
    send(&producer, &setup.requests, "tracestate-1", &ts, traced).await;

    // Two valid jobs behind them.
    for id in ["after-1", "after-2"] {
        setup
            .submitter()
            .submit(synthetic_request(id, 2))
            .await
            .unwrap();
    }

    let events = wait_events(&setup.events, Duration::from_secs(120), |e| {
        ["big-1", "tracestate-1", "after-1", "after-2"]
            .iter()
            .all(|id| terminal(e, id).is_some())
    });
    let logs = worker.logs();
    match terminal(&events, "big-1") {
        Some(Kind::Failed(f)) => {
            assert_eq!(f.code, ErrorCode::InvalidArgument as i32, "{f:?}");
            assert!(
                f.message.len() <= 1024,
                "a small reason: {}",
                f.message.len()
            );
        }
        other => panic!("big-1: {other:?}\n{logs}"),
    }
    let big_failed = events.iter().find(|e| e.job_id == "big-1").unwrap();
    assert!(
        big_failed.labels.is_empty(),
        "an invalid request's labels are not echoed"
    );
    for id in ["tracestate-1", "after-1", "after-2"] {
        assert!(
            matches!(terminal(&events, id), Some(Kind::Completed(_))),
            "{id}: {:?}\n{logs}",
            terminal(&events, id)
        );
    }

    let dlq = read_topic(&setup.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].payload(),
        Some(big_bytes.as_slice()),
        "byte for byte"
    );
    assert!(header(&dlq[0], "t2v-dlq-reason").unwrap().len() <= 1024);
}

async fn submit_and_wait_terminal(
    setup: &WorkerSetup,
    req: t2v_proto::v1::GenerationRequest,
    count: usize,
) -> Vec<GenerationEvent> {
    let id = req.job_id.clone();
    setup.submitter().submit(req).await.unwrap();
    wait_events(&setup.events, Duration::from_secs(90), |e| {
        terminals(e, &id).len() >= count
    })
}

fn completed_of(events: &[GenerationEvent], job_id: &str) -> Vec<Completed> {
    terminals(events, job_id)
        .into_iter()
        .map(|k| match k {
            Kind::Completed(c) => c.clone(),
            other => panic!("{job_id}: expected Completed, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_committed_job_answers_with_its_completed_after_its_deadline_and_a_late_cancel() {
    let setup = setup("reliability-committed", 1).await;
    let worker = setup.start_worker(&[]);
    let first = synthetic_request("done-1", 2);
    let events = submit_and_wait_terminal(&setup, first.clone(), 1).await;
    let original = completed_of(&events, "done-1");
    assert_eq!(original.len(), 1, "{events:?}\n{}", worker.logs());

    // Re-read after its deadline passed (e.g. a lost Completed ack, read again much later).
    let late = t2v_proto::v1::GenerationRequest {
        deadline_unix_ms: 1,
        ..first.clone()
    };
    let events = submit_and_wait_terminal(&setup, late, 2).await;
    let again = completed_of(&events, "done-1");
    assert_eq!(again.len(), 2, "{events:?}\n{}", worker.logs());
    assert_eq!(again[1], original[0], "the identical Completed");

    // A cancel that comes after the commit changes nothing.
    setup
        .submitter()
        .cancel("done-1", "too late")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = submit_and_wait_terminal(&setup, first, 3).await;
    let again = completed_of(&events, "done-1");
    assert_eq!(again.len(), 3, "{events:?}\n{}", worker.logs());
    assert_eq!(again[2], original[0], "the identical Completed");
}

#[tokio::test]
async fn another_request_under_a_committed_job_id_is_a_conflict_not_its_video() {
    let setup = setup("reliability-conflict", 1).await;
    let worker = setup.start_worker(&[]);
    let events = submit_and_wait_terminal(&setup, synthetic_request("same-id", 2), 1).await;
    assert_eq!(
        completed_of(&events, "same-id").len(),
        1,
        "{}",
        worker.logs()
    );

    let other = t2v_proto::v1::GenerationRequest {
        prompt: "an entirely different video".into(),
        ..synthetic_request("same-id", 2)
    };
    let events = submit_and_wait_terminal(&setup, other, 2).await;
    match terminals(&events, "same-id").get(1) {
        Some(Kind::Failed(f)) => {
            assert_eq!(f.code, ErrorCode::JobIdConflict as i32, "{f:?}");
            assert!(f.message.contains("new job id"), "{}", f.message);
            assert!(!f.retryable);
        }
        other => panic!("expected a conflict, got {other:?}\n{}", worker.logs()),
    }
    let dlq = read_topic(&setup.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1, "the conflicting request is kept in the DLQ");
    let kept = t2v_proto::v1::GenerationRequest::decode(dlq[0].payload().unwrap()).unwrap();
    assert_eq!(kept.prompt, "an entirely different video");
    assert_eq!(kept.job_id, "same-id");
}

#[tokio::test]
async fn a_record_keyed_otherwise_than_its_job_id_is_rejected() {
    let setup = setup("reliability-key", 1).await;
    let worker = setup.start_worker(&[]);
    let producer = big_producer();
    let req = synthetic_request("payload-id", 2).encode_to_vec();
    send(
        &producer,
        &setup.requests,
        "another-key",
        &req,
        OwnedHeaders::new(),
    )
    .await;
    setup
        .submitter()
        .submit(synthetic_request("ok-after", 2))
        .await
        .unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        terminal(e, "payload-id").is_some() && terminal(e, "ok-after").is_some()
    });
    match terminal(&events, "payload-id") {
        Some(Kind::Failed(f)) => {
            assert_eq!(f.code, ErrorCode::InvalidArgument as i32);
            assert!(f.message.contains("record key"), "{}", f.message);
        }
        other => panic!("payload-id: {other:?}\n{}", worker.logs()),
    }
    assert!(matches!(
        terminal(&events, "ok-after"),
        Some(Kind::Completed(_))
    ));
    let dlq = read_topic(&setup.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq[0].payload(), Some(req.as_slice()));
    assert_eq!(dlq[0].key(), Some(b"another-key".as_slice()));
}

/// Two runs of one job at once (a duplicate on another partition, as a rebalance race gives):
/// the slower run, encoding with other settings, must not change the committed files.
#[tokio::test]
async fn a_run_that_loses_the_commit_race_cannot_touch_the_committed_files() {
    let setup = setup("reliability-race", 2).await;
    let fast = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "20")]);
    fast.wait_ready(Duration::from_secs(60));
    // Other x264 settings: the slow run's MP4 has other bytes than the fast run's.
    let slow = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "600"),
        ("T2V_MEDIA__CRF", "40"),
    ]);
    slow.wait_ready(Duration::from_secs(60));
    // Both own a partition once both are ready; send the same request to each.
    let producer = big_producer();
    let req = synthetic_request("raced-1", 4).encode_to_vec();
    for partition in [0, 1] {
        producer
            .send(
                FutureRecord::to(&setup.requests)
                    .partition(partition)
                    .key("raced-1")
                    .payload(&req),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        terminals(e, "raced-1").len() >= 2
    });
    let done = completed_of(&events, "raced-1");
    assert_eq!(
        done.len(),
        2,
        "{events:?}\n{}\n{}",
        fast.logs(),
        slow.logs()
    );
    assert_eq!(done[0], done[1], "both runs announce the committed result");
    let video = done[0].video.as_ref().unwrap();
    let bytes = t2v_tests::get_object(&video.uri).await;
    assert_eq!(
        bytes.len() as u64,
        video.size_bytes,
        "the committed video is intact"
    );
    assert_eq!(
        t2v_contract::sha256_hex(&bytes),
        video.sha256,
        "the committed video is intact"
    );
    let videos: Vec<String> = t2v_tests::list_keys(&format!("{}/raced-1/", setup.prefix))
        .await
        .into_iter()
        .filter(|k| k.ends_with(".mp4"))
        .collect();
    assert_eq!(
        videos.len(),
        1,
        "the losing run tidied its outputs: {videos:?}"
    );
}

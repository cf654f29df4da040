//! A poison job — one that takes down every worker that runs it — stops after
//! `jobs.max_attempts`: each crashed run leaves its attempt marker next to the outputs, and the
//! next worker to take the job sends the original bytes to the DLQ, emits
//! Failed(ATTEMPTS_EXHAUSTED) and stores the offset instead of running it again.
//!
//! Storage that stays down beyond the in-place retries re-queues the job as a new request record
//! with `attempt + 1`; once storage is back the job completes exactly once, even with
//! `max_attempts = 1` (an outage does not use up the crash budget).
//!
//! The second test stops the stack's shared S3 server, so the tests of this binary take
//! [`SERIAL`] in turn; `S3Outage` starts it again even when a test fails.

use std::time::Duration;

use prost::Message as _;
use rdkafka::message::Message;
use t2v_contract::now_unix_ms;
use t2v_proto::v1::{generation_event::Kind, ErrorCode, GenerationEvent, GenerationRequest};
use t2v_tests::{
    assert_dlq_source, completed, header, is_terminal, list_keys, read_topic, record_count,
    synthetic_request, wait_committed, wait_events, S3Outage, WorkerProcess, WorkerSetup,
};

/// One test at a time: the outage test must not take storage away from the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const JOB: &str = "poison-1";
/// Attempts allowed before the DLQ.
const MAX_ATTEMPTS: usize = 2;
/// 200 steps of 100 ms: a run lasts 20 s, far longer than it takes to kill it after Started.
const STEPS: u32 = 200;
const STEP_MS: &str = "100";

fn started(events: &[GenerationEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.job_id == JOB && matches!(e.kind, Some(Kind::Started(_))))
        .count()
}

fn terminal(events: &[GenerationEvent]) -> Vec<Kind> {
    events
        .iter()
        .filter(|e| e.job_id == JOB)
        .filter_map(|e| e.kind.clone())
        .filter(is_terminal)
        .collect()
}

/// A worker of the test's group; the short session lets the group drop a killed member quickly.
fn start(setup: &WorkerSetup) -> WorkerProcess {
    let worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", STEP_MS),
        ("T2V_JOBS__MAX_ATTEMPTS", &MAX_ATTEMPTS.to_string()),
        ("T2V_KAFKA__SESSION_TIMEOUT_MS", "6000"),
    ]);
    worker.wait_ready(Duration::from_secs(60));
    worker
}

#[tokio::test]
async fn a_job_that_crashes_every_worker_goes_to_the_dlq_after_max_attempts() {
    let _serial = SERIAL.lock().await;
    let setup = WorkerSetup::new("attempts", 1).await;
    setup
        .submitter()
        .submit(GenerationRequest {
            prompt: "a kite in a storm".into(),
            seed: Some(3),
            ..synthetic_request(JOB, STEPS)
        })
        .await
        .unwrap();
    let original = read_topic(&setup.requests, 1, Duration::from_secs(20));
    assert_eq!(original.len(), 1);

    // 1. Crash MAX_ATTEMPTS workers, each right after it started the job (SIGKILL: no clean
    //    stop, so its attempt marker stays).
    for n in 1..=MAX_ATTEMPTS {
        let mut worker = start(&setup);
        let events = wait_events(&setup.events, Duration::from_secs(60), |e| started(e) >= n);
        assert_eq!(
            started(&events),
            n,
            "attempt {n} did not start; logs:\n{}",
            worker.logs()
        );
        assert!(terminal(&events).is_empty(), "{events:?}");
        worker.child.kill().unwrap();
        assert!(worker.wait_exit(Duration::from_secs(10)).is_some());
        let markers = list_keys(&format!("{}/{JOB}/attempts", setup.prefix)).await;
        assert_eq!(
            markers.len(),
            n,
            "one marker per started attempt: {markers:?}"
        );
    }

    // 2. The next worker does not run it: Failed(ATTEMPTS_EXHAUSTED), not retryable.
    let worker = start(&setup);
    let events = wait_events(&setup.events, Duration::from_secs(60), |e| {
        !terminal(e).is_empty()
    });
    let logs = worker.logs();
    match terminal(&events).as_slice() {
        [Kind::Failed(f)] => {
            assert_eq!(f.code, ErrorCode::AttemptsExhausted as i32, "{f:?}");
            assert!(!f.retryable);
            assert!(f.message.contains("max_attempts = 2"), "{}", f.message);
        }
        other => panic!("one Failed expected, got {other:?}\nlogs:\n{logs}"),
    }
    assert_eq!(
        started(&events),
        MAX_ATTEMPTS,
        "no third Started: {events:?}"
    );

    // 3. The original bytes are in the DLQ, with headers saying why and where from.
    let dlq = read_topic(&setup.dlq, 1, Duration::from_secs(20));
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].payload(), original[0].payload(), "bytes intact");
    assert_eq!(dlq[0].key(), Some(JOB.as_bytes()));
    assert!(header(&dlq[0], "t2v-dlq-reason")
        .unwrap()
        .contains("ATTEMPTS_EXHAUSTED"));
    assert_dlq_source(&dlq[0], &setup.requests, 0);
    assert_eq!(header(&dlq[0], "t2v-dlq-attempt").as_deref(), Some("0"));

    // 4. No outputs, and the crashed runs' checkpoints deleted with the Failed; only the markers
    //    (the third run's too) stay, and the offset is stored: the job is not taken again.
    let keys = list_keys(&format!("{}/{JOB}", setup.prefix)).await;
    assert!(
        keys.iter().all(|k| k.contains("/attempts/")),
        "no manifest, video, thumbnail or checkpoint: {keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| k.contains("/attempts/")).count(),
        MAX_ATTEMPTS + 1,
        "{keys:?}"
    );
    let committed = wait_committed(&setup.group, &setup.requests, 0, 1).await;
    assert_eq!(committed, Some(1), "logs:\n{logs}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = wait_events(&setup.events, Duration::from_secs(2), |_| false);
    assert_eq!(
        terminal(&all).len(),
        1,
        "taken again? logs:\n{}",
        worker.logs()
    );
}

#[tokio::test]
async fn storage_down_beyond_the_retries_requeues_the_job_and_it_completes_once() {
    let _serial = SERIAL.lock().await;
    const JOB2: &str = "requeue-1";
    // 100 steps of 100 ms: denoising outlasts the S3 server's stop (VersityGW: about 2 s with the
    // worker's keep-alive connections idle, as they are while it denoises).
    const STEPS2: u32 = 100;
    const STEP2_MS: u64 = 100;
    let setup = WorkerSetup::new("requeue", 1).await;
    // The worker's in-place retries give up after about 0.3 s (the object store client's own
    // retries, not configurable here, add about 20 s more).
    // max_attempts = 1: a marker that the outage kept from being deleted must not count
    // against the re-queued copy.
    let worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", &STEP2_MS.to_string()),
        ("T2V_JOBS__MAX_ATTEMPTS", "1"),
        ("T2V_JOBS__RETRY_TIMES", "2"),
        ("T2V_JOBS__RETRY_MIN_DELAY_MS", "100"),
        ("T2V_JOBS__RETRY_MAX_DELAY_MS", "200"),
    ]);
    worker.wait_ready(Duration::from_secs(60));
    setup
        .submitter()
        .submit(GenerationRequest {
            prompt: "waves on a breakwater".into(),
            seed: Some(11),
            ..synthetic_request(JOB2, STEPS2)
        })
        .await
        .unwrap();

    // 1. Stop the S3 server once the job started; its next object-store call is the upload.
    let (mut outage, started_at) =
        S3Outage::after_started(&setup.events, &worker, u64::from(STEPS2) * STEP2_MS);
    let stopped_at = outage.stopped_at;

    // 2. The upload fails past its retries: the job comes back as a new record, attempt 1.
    let records = read_topic(&setup.requests, 2, Duration::from_secs(40));
    assert!(
        records.len() >= 2,
        "not re-queued; logs:\n{}",
        worker.logs()
    );
    let requeued = GenerationRequest::decode(records[1].payload().unwrap()).unwrap();
    assert_eq!(requeued.job_id, JOB2);
    assert_eq!(requeued.attempt, 1);
    assert_eq!(requeued.num_inference_steps, STEPS2);
    let requeued_at = now_unix_ms();
    outage.end().unwrap();
    let restarted_at = now_unix_ms();

    // 3. Once the S3 server is back the job completes, once, and nothing fails.
    let events = wait_events(&setup.events, Duration::from_secs(60), |e| {
        e.iter().any(|e| matches!(e.kind, Some(Kind::Completed(_))))
    });
    let done = completed(&events);
    assert_eq!(done.len(), 1, "{events:?}\nlogs:\n{}", worker.logs());
    assert!(done[0].0.attempt >= 1, "completed by a re-queued attempt");
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.kind, Some(Kind::Failed(_) | Kind::Canceled(_)))),
        "{events:?}"
    );
    let keys = list_keys(&format!("{}/{JOB2}", setup.prefix)).await;
    assert_eq!(
        keys.iter()
            .filter(|k| k.ends_with("/manifest.json"))
            .count(),
        1,
        "{keys:?}"
    );

    // 4. Every re-queued copy counts up from 1, and all records are committed.
    let total = record_count(&setup.requests);
    let records = read_topic(&setup.requests, total as usize, Duration::from_secs(20));
    for (n, record) in records.iter().enumerate() {
        let req = GenerationRequest::decode(record.payload().unwrap()).unwrap();
        assert_eq!((req.job_id.as_str(), req.attempt), (JOB2, n as u32));
    }
    let committed = wait_committed(&setup.group, &setup.requests, 0, total).await;
    assert_eq!(committed, Some(total), "logs:\n{}", worker.logs());
    eprintln!(
        "request records = {total}, S3 stop took {} ms, re-queued by {} ms, back after {} ms, done at {} ms (from Started)",
        stopped_at - started_at,
        requeued_at - started_at,
        restarted_at - started_at,
        done[0].0.emitted_at_unix_ms - started_at
    );
}

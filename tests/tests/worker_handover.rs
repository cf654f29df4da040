//! A rebalance that moves the running job's partition to a worker that just joined (a scale-up)
//! hands the job over instead of running it twice: the old owner stops at the next step with a
//! checkpoint and no event, and the new owner resumes from that checkpoint and completes it once.
//!
//! Which of its two partitions the old owner gives up is the cooperative-sticky assignor's choice,
//! so the newcomer joins and leaves until the job's partition is the one that moves (each round
//! is an independent pick; 8 rounds).

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::FutureRecord;
use t2v_proto::v1::{generation_event::Kind, GenerationRequest};
use t2v_tests::{
    completed, producer, starts, synthetic_request, wait_committed, wait_events, WorkerProcess,
    WorkerSetup,
};

const JOB: &str = "handover-1";
/// 120 steps of 150 ms: 18 s of denoising, time for a few join/leave rounds.
const STEPS: u32 = 120;
const STEP_MS: &str = "150";
const HANDED_OVER: &str = "the running job's partition was revoked";

fn start(setup: &WorkerSetup) -> WorkerProcess {
    setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", STEP_MS)])
}

#[tokio::test]
async fn a_revoked_running_job_is_handed_over_not_run_twice() {
    let setup = WorkerSetup::new("handover", 2).await;
    let first = start(&setup);
    first.wait_ready(Duration::from_secs(60));

    // 1. The job, on partition 0, starts on the only worker.
    let request = GenerationRequest {
        prompt: "a lighthouse in fog".into(),
        seed: Some(5),
        ..synthetic_request(JOB, STEPS)
    };
    producer()
        .send(
            FutureRecord::to(&setup.requests)
                .partition(0)
                .key(JOB)
                .payload(&request.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let events = wait_events(&setup.events, Duration::from_secs(60), |e| {
        !starts(e).is_empty()
    });
    let first_id = starts(&events)
        .first()
        .unwrap_or_else(|| panic!("not started; logs:\n{}", first.logs()))
        .0
        .clone();

    // 2. Newcomers join (and leave again) until the rebalance moves the job's partition.
    let mut newcomer = None;
    for round in 1..=8 {
        let second = start(&setup);
        // Ready = model loaded and a partition assigned: the rebalance is done.
        second.wait_ready(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
        if first.logs().contains(HANDED_OVER) {
            eprintln!("job partition moved in round {round}");
            newcomer = Some(second);
            break;
        }
        let mut second = second;
        second.stop(Duration::from_secs(20));
    }
    let second = newcomer.unwrap_or_else(|| {
        panic!(
            "the assignor never moved partition 0 in 8 rounds; logs:\n{}",
            first.logs()
        )
    });

    // 3. One Completed, by the newcomer, resumed from the first worker's last checkpoint; the
    //    first worker sent nothing for the job after the newcomer's Started.
    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        e.iter().any(|e| matches!(e.kind, Some(Kind::Completed(_))))
    });
    let completed = completed(&events);
    assert_eq!(
        completed.len(),
        1,
        "{events:?}\nfirst:\n{}\nsecond:\n{}",
        first.logs(),
        second.logs()
    );
    let starts = starts(&events);
    assert_eq!(starts.len(), 2, "{starts:?}");
    let (second_id, resumed_from) = starts[1].clone();
    assert_ne!(second_id, first_id);
    assert_eq!(completed[0].0.worker_id, second_id);
    let handed_over_at = events
        .iter()
        .position(|e| matches!(e.kind, Some(Kind::Started(_))) && e.worker_id == second_id)
        .unwrap();
    let first_reached = events[..handed_over_at]
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Progress(p)) if e.worker_id == first_id => Some(p.step),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    // The first worker stops at its next step: at most the step it was in may still be
    // reported after the newcomer's Started, and nothing else.
    assert!(
        events[handed_over_at..]
            .iter()
            .filter(|e| e.worker_id == first_id)
            .all(|e| matches!(&e.kind, Some(Kind::Progress(p)) if p.step <= resumed_from + 2)),
        "the first worker kept running after the hand-over: {events:?}"
    );
    // Progress goes out at most every 200 ms (a step is 150 ms) and the checkpoint of the stop
    // may land just after the newcomer looked: a step or two either way.
    assert!(
        resumed_from > 0 && resumed_from + 2 >= first_reached,
        "resumed at {resumed_from}, the first worker had reported step {first_reached}"
    );
    let logs = first.logs();
    assert!(
        logs.contains("interrupted after step"),
        "the first worker stopped the job without a terminal event; logs:\n{logs}"
    );

    // 4. Both workers keep serving: the offset is stored once the job completed.
    assert_eq!(
        wait_committed(&setup.group, &setup.requests, 0, 1).await,
        Some(1),
        "logs:\n{}",
        second.logs()
    );
}

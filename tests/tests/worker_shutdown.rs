//! SIGTERM during a job: the worker stops at the next step, does not store the offset, leaves the
//! group and exits 0 well within the drain deadline; a second worker then completes the job once.

use std::time::{Duration, Instant};

use t2v_proto::v1::{generation_event::Kind, GenerationRequest};
use t2v_tests::{
    committed_offset, count_kind, list_keys, synthetic_request, wait_committed, wait_events,
    WorkerSetup,
};

#[tokio::test]
async fn sigterm_mid_job_exits_0_without_storing_and_another_worker_finishes() {
    let setup = WorkerSetup::new("shutdown", 1).await;
    let mut first = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "200")]);
    first.wait_ready(Duration::from_secs(60));
    setup
        .submitter()
        .submit(GenerationRequest {
            prompt: "waves on a rocky shore".into(),
            ..synthetic_request("long-1", 40)
        })
        .await
        .unwrap();
    wait_events(&setup.events, Duration::from_secs(60), |e| {
        count_kind(e, |k| matches!(k, Kind::Progress(_))) > 0
    });

    let sent = Instant::now();
    first.stop(Duration::from_secs(10));
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(
        committed_offset(&setup.group, &setup.requests, 0),
        None,
        "offset not stored"
    );
    assert!(list_keys(&format!("{}/long-1/manifest.json", setup.prefix))
        .await
        .is_empty());
    assert!(
        list_keys(&format!("{}/long-1/attempts", setup.prefix))
            .await
            .is_empty(),
        "the attempt was given back"
    );

    let second = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "10")]);
    let events = wait_events(&setup.events, Duration::from_secs(90), |e| {
        count_kind(e, |k| matches!(k, Kind::Completed(_))) > 0
    });
    assert_eq!(
        count_kind(&events, |k| matches!(k, Kind::Completed(_))),
        1,
        "logs:\n{}",
        second.logs()
    );
    assert_eq!(
        count_kind(&events, |k| matches!(
            k,
            Kind::Failed(_) | Kind::Canceled(_)
        )),
        0
    );
    let committed = wait_committed(&setup.group, &setup.requests, 0, 1).await;
    assert_eq!(committed, Some(1));
}

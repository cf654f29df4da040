//! Priority lanes and model routing on the real broker with synthetic workers: a high-priority
//! job submitted behind ten batch jobs starts next; aging lets a waiting batch job through a
//! stream of high ones; each request reaches the fleet of its model, and a model nobody serves
//! is refused at submit.

use std::collections::BTreeMap;
use std::time::Duration;

use t2v_producer::routes::{Lane, ModelRoute};
use t2v_producer::{Placement, Routes, Submitter, SubmitterConfig};
use t2v_proto::v1::generation_event::Kind;
use t2v_proto::v1::GenerationEvent;
use t2v_tests::{
    binary, brokers, create_topics, is_terminal, synthetic_request, wait_events, WorkerSetup,
};

const LANES: [&str; 3] = ["high", "normal", "batch"];
const HIGH: u32 = 9;
const BATCH: u32 = 2;

/// One fleet's lane topics, highest first, made next to `setup`'s requests topic (the normal lane).
async fn lane_topics(setup: &WorkerSetup) -> Vec<String> {
    let topics: Vec<String> = LANES
        .iter()
        .map(|lane| match *lane {
            "normal" => setup.requests.clone(),
            other => format!("{}.{other}", setup.requests),
        })
        .collect();
    create_topics(&[(&topics[0], 1), (&topics[2], 1)]).await;
    topics
}

fn routes(models: &[(&str, &[String])]) -> Routes {
    let lanes = vec![
        Lane {
            name: "high".into(),
            priorities: vec![7, 8, 9],
        },
        Lane {
            name: "normal".into(),
            priorities: vec![0, 4, 5, 6],
        },
        Lane {
            name: "batch".into(),
            priorities: vec![1, 2, 3],
        },
    ];
    let models = models
        .iter()
        .map(|(name, topics)| ModelRoute {
            name: name.to_string(),
            requests: LANES
                .iter()
                .zip(topics.iter())
                .map(|(lane, topic)| (lane.to_string(), topic.clone()))
                .collect::<BTreeMap<_, _>>(),
        })
        .collect();
    Routes::from_parts(lanes, models).unwrap().unwrap()
}

fn submitter(setup: &WorkerSetup, routes: Routes) -> Submitter {
    Submitter::new(SubmitterConfig {
        brokers: brokers(),
        events_topic: setup.events.clone(),
        control_topic: setup.control.clone(),
        group_id: setup.group.clone(),
        routes: Some(routes),
        placement: Placement::Hash,
        ..Default::default()
    })
    .unwrap()
}

/// Job ids in the order their `Started` events were published.
fn start_order(events: &[GenerationEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| matches!(e.kind, Some(Kind::Started(_))))
        .map(|e| e.job_id.clone())
        .collect()
}

fn all_terminal(ids: &[String]) -> impl Fn(&[GenerationEvent]) -> bool + '_ {
    move |events| {
        ids.iter().all(|id| {
            events
                .iter()
                .any(|e| &e.job_id == id && e.kind.as_ref().is_some_and(is_terminal))
        })
    }
}

async fn submit(s: &Submitter, id: &str, priority: u32, steps: u32) {
    let mut req = synthetic_request(id, steps);
    req.priority = priority;
    s.submit(req).await.unwrap();
}

#[tokio::test]
async fn a_high_priority_job_behind_ten_batch_jobs_starts_next() {
    let setup = WorkerSetup::new("lanes-priority", 1).await;
    let topics = lane_topics(&setup).await;
    let submitter = submitter(&setup, routes(&[("wan2.2-t2v-a14b", topics.as_slice())]));
    let worker = setup.start_worker(&[
        ("T2V_KAFKA__REQUESTS_TOPICS", topics.join(",").as_str()),
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "100"),
    ]);
    worker.wait_ready(Duration::from_secs(60));

    let batch: Vec<String> = (0..10).map(|i| format!("batch-{i}")).collect();
    for id in &batch {
        submit(&submitter, id, BATCH, 10).await;
    }
    let first = wait_events(&setup.events, Duration::from_secs(30), |events| {
        !start_order(events).is_empty()
    });
    assert_eq!(start_order(&first).len(), 1, "{}", worker.logs());
    submit(&submitter, "urgent", HIGH, 5).await;

    let mut ids = batch.clone();
    ids.push("urgent".into());
    let events = wait_events(&setup.events, Duration::from_secs(90), all_terminal(&ids));
    assert!(all_terminal(&ids)(&events), "{}", worker.logs());
    let order = start_order(&events);
    let urgent = order.iter().position(|id| id == "urgent").unwrap();
    assert_eq!(
        urgent, 1,
        "the high-priority job starts right after the batch job that was running: {order:?}"
    );
    let batch_order: Vec<&String> = order.iter().filter(|id| *id != "urgent").collect();
    assert_eq!(
        batch_order,
        batch.iter().collect::<Vec<_>>(),
        "a lane keeps its order"
    );
}

#[tokio::test]
async fn a_batch_job_that_waited_past_the_aging_time_goes_before_more_high_ones() {
    let setup = WorkerSetup::new("lanes-aging", 1).await;
    let topics = lane_topics(&setup).await;
    let submitter = submitter(&setup, routes(&[("wan2.2-t2v-a14b", topics.as_slice())]));
    // Submitted before the worker starts: at its first decision every lane has a backlog.
    submit(&submitter, "patient", BATCH, 5).await;
    let high: Vec<String> = (0..8).map(|i| format!("high-{i}")).collect();
    for id in &high {
        submit(&submitter, id, HIGH, 10).await;
    }
    let worker = setup.start_worker(&[
        ("T2V_KAFKA__REQUESTS_TOPICS", topics.join(",").as_str()),
        ("T2V_KAFKA__LANE_AGING_SECS", "2"),
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "100"),
    ]);
    let mut ids = high.clone();
    ids.push("patient".into());
    let events = wait_events(&setup.events, Duration::from_secs(90), all_terminal(&ids));
    assert!(all_terminal(&ids)(&events), "{}", worker.logs());
    let order = start_order(&events);
    let patient = order.iter().position(|id| id == "patient").unwrap();
    // Each high job takes about 1 s: the batch job, first seen waiting at the first decision,
    // is aged after two of them (plus one for timing slack), well before the 8 high ones end.
    assert!(
        (1..=4).contains(&patient),
        "the aged batch job starts after 1..=4 high jobs, not last: {order:?}"
    );
}

#[tokio::test]
async fn each_model_reaches_its_own_fleet_and_an_unserved_model_is_refused() {
    let base = WorkerSetup::new("routing-base", 1).await;
    let fast = WorkerSetup::new("routing-fast", 1).await;
    let (base_topics, fast_topics) = (lane_topics(&base).await, lane_topics(&fast).await);
    let routes = routes(&[
        ("wan2.2-t2v-a14b", base_topics.as_slice()),
        ("wan2.2-t2v-a14b-fast", fast_topics.as_slice()),
    ]);
    let base_worker =
        base.start_worker(&[("T2V_KAFKA__REQUESTS_TOPICS", base_topics.join(",").as_str())]);
    let fast_worker = fast.start_worker(&[
        ("T2V_KAFKA__REQUESTS_TOPICS", fast_topics.join(",").as_str()),
        ("T2V_MODEL__NAME", "wan2.2-t2v-a14b-fast"),
    ]);
    base_worker.wait_ready(Duration::from_secs(60));
    fast_worker.wait_ready(Duration::from_secs(60));

    let s = submitter(&base, routes.clone());
    for (id, model, priority) in [
        ("to-base", "wan2.2-t2v-a14b", 0),
        ("to-base-high", "wan2.2-t2v-a14b", HIGH),
        ("to-fast", "wan2.2-t2v-a14b-fast", BATCH),
    ] {
        let mut req = synthetic_request(id, 2);
        req.model = model.into();
        req.priority = priority;
        s.submit(req).await.unwrap();
    }
    let completed = |setup: &WorkerSetup, ids: &[&str]| {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let events = wait_events(&setup.events, Duration::from_secs(60), all_terminal(&ids));
        for id in &ids {
            let terminal = events
                .iter()
                .find(|e| &e.job_id == id && e.kind.as_ref().is_some_and(is_terminal))
                .unwrap_or_else(|| panic!("no terminal event for {id}"));
            assert!(
                matches!(terminal.kind, Some(Kind::Completed(_))),
                "{id} must complete on its own model's fleet: {terminal:?}"
            );
        }
    };
    completed(&base, &["to-base", "to-base-high"]);
    completed(&fast, &["to-fast"]);

    let mut unserved = synthetic_request("to-nobody", 2);
    unserved.model = "wan2.1-t2v-14b".into();
    let err = s.submit(unserved).await.unwrap_err().to_string();
    assert!(
        err.contains("no fleet serves model \"wan2.1-t2v-14b\"")
            && err.contains("served: wan2.2-t2v-a14b, wan2.2-t2v-a14b-fast"),
        "{err}"
    );

    // The CLI routes by the built-in schemas/topics.yaml and refuses the same way (exit 2).
    let out = std::process::Command::new(binary("t2v"))
        .args([
            "--brokers",
            &brokers(),
            "submit",
            "--model",
            "wan2.1-t2v-14b",
            "a fox",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("served: wan2.2-t2v-a14b"), "{stderr}");
}

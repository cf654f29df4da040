//! A gateway killed mid-stream loses nothing: the job's row and the events reader's position are
//! in PostgreSQL, so replicas started afterwards (two of them, reading the same events) carry on,
//! apply every event exactly once and charge the GPU time once.

use std::time::Duration;

use serde_json::{json, Value};
use t2v_proto::v1::generation_event::Kind;
use t2v_tests::gateway::{fresh_database, psql, read_sse, video_body, GatewayProcess, SigningKey};
use t2v_tests::{decode_event, read_topic, record_count, WorkerSetup};

#[tokio::test]
async fn a_gateway_restart_mid_stream_loses_no_state() {
    let setup = WorkerSetup::new("gw-restart", 1).await;
    let worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "200")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let token = key.token("acme", json!({}));
    let mut first = GatewayProcess::start(&setup, &db, &key, &[]).await;
    let job: Value = first.submit_job(&token, &video_body(30), None).await;
    let id = job["id"].as_str().unwrap().to_string();

    let sse = first.get(&token, &format!("/v1/videos/{id}/events")).await;
    let seen = read_sse(
        sse,
        |_, v| v["progress"]["step"].as_i64() >= Some(3),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(seen.last().unwrap().0, "running");
    first.kill();

    // Two fresh replicas on the same database; the job goes on meanwhile.
    let second = GatewayProcess::start(&setup, &db, &key, &[]).await;
    let third = GatewayProcess::start(&setup, &db, &key, &[]).await;
    let sse = second.get(&token, &format!("/v1/videos/{id}/events")).await;
    let rest = read_sse(sse, |_, _| false, Duration::from_secs(90)).await;
    let (last, done) = rest.last().unwrap();
    assert_eq!(last, "completed", "{rest:?}\n{}", worker.logs());
    let steps: Vec<i64> = rest
        .iter()
        .filter_map(|(_, v)| v["progress"]["step"].as_i64())
        .collect();
    assert!(
        steps.first() >= Some(&3),
        "continues where the job is, not from the start: {steps:?}"
    );
    assert_eq!(third.job(&token, &id).await["state"], "completed");

    // Every event of the topic was applied once: the row's version counts the events up to the
    // terminal one, and the stored offset is past the last event.
    let total = record_count(&setup.events) as usize;
    let events: Vec<_> = read_topic(&setup.events, total, Duration::from_secs(10))
        .iter()
        .map(decode_event)
        .collect();
    let until_terminal = events
        .iter()
        .position(|e| matches!(e.kind, Some(Kind::Completed(_))))
        .expect("a Completed event")
        + 1;
    let stored = || {
        psql(
            &db,
            &format!("SELECT version FROM jobs WHERE job_id = '{id}'"),
        )
    };
    assert_eq!(stored(), until_terminal.to_string());
    let offset = psql(
        &db,
        &format!(
            "SELECT next_offset FROM event_offsets WHERE topic = '{}'",
            setup.events
        ),
    );
    assert_eq!(offset, total.to_string());
    // GPU time charged once, by one of the replicas.
    let total_ms: u64 = done["timings"]["totalMs"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        psql(&db, "SELECT gpu_ms FROM daily_usage WHERE tenant = 'acme'"),
        total_ms.to_string()
    );
}

#[tokio::test]
async fn partitions_added_to_the_events_topic_are_followed() {
    use prost::Message;
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::FutureRecord;
    use t2v_proto::v1::{ErrorCode, Failed, GenerationEvent};

    let setup = WorkerSetup::new("gw-grow", 1).await;
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let gateway = GatewayProcess::start(
        &setup,
        &db,
        &key,
        &[("T2V_GATEWAY__KAFKA__PARTITION_REFRESH_SECS", "1")],
    )
    .await;
    let token = key.token("acme", json!({}));
    let job: Value = gateway.submit_job(&token, &video_body(4), None).await;
    let id = job["id"].as_str().unwrap();

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", t2v_tests::brokers())
        .create()
        .unwrap();
    for result in admin
        .create_partitions(
            &[NewPartitions::new(&setup.events, 2)],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
    // An event on the new partition only (a worker's producer would hash some job ids there).
    let event = GenerationEvent {
        job_id: id.into(),
        kind: Some(Kind::Failed(Failed {
            code: ErrorCode::Internal as i32,
            message: "injected on the new partition".into(),
            retryable: true,
        })),
        ..Default::default()
    };
    let payload = event.encode_to_vec();
    t2v_tests::producer()
        .send(
            FutureRecord::to(&setup.events)
                .key(id)
                .payload(&payload)
                .partition(1),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let failed = gateway
        .wait_state(&token, id, "failed", Duration::from_secs(30))
        .await;
    assert_eq!(failed["error"]["message"], "injected on the new partition");
    let offset = psql(
        &db,
        &format!(
            "SELECT next_offset FROM event_offsets WHERE topic = '{}' AND partition = 1",
            setup.events
        ),
    );
    assert_eq!(offset, "1");
}

//! Rate limits and daily quotas hold across two `t2v-gateway` processes sharing one database,
//! and a video that failed for an infrastructure reason is given back to the quota.

use std::time::Duration;

use prost::Message;
use rdkafka::producer::FutureRecord;
use serde_json::{json, Value};
use t2v_proto::v1::{
    generation_event::Kind, Completed, ErrorCode, Failed, GenerationEvent, Timings,
};
use t2v_tests::gateway::{fresh_database, video_body, GatewayProcess, SigningKey};
use t2v_tests::{producer, WorkerSetup};

const PLANS: [(&str, &str); 8] = [
    ("T2V_GATEWAY__LIMITS__PLANS__GPU__VIDEOS_PER_DAY", "100"),
    ("T2V_GATEWAY__LIMITS__PLANS__GPU__GPU_SECONDS_PER_DAY", "2"),
    ("T2V_GATEWAY__LIMITS__PLANS__TRIAL__REQUESTS_PER_SEC", "0.2"),
    ("T2V_GATEWAY__LIMITS__PLANS__TRIAL__BURST", "4"),
    (
        "T2V_GATEWAY__LIMITS__PLANS__SMALL__REQUESTS_PER_SEC",
        "1000",
    ),
    ("T2V_GATEWAY__LIMITS__PLANS__SMALL__BURST", "1000"),
    ("T2V_GATEWAY__LIMITS__PLANS__SMALL__VIDEOS_PER_DAY", "3"),
    (
        "T2V_GATEWAY__LIMITS__PLANS__SMALL__GPU_SECONDS_PER_DAY",
        "3600",
    ),
];

async fn two_gateways(
    name: &str,
) -> (
    WorkerSetup,
    SigningKey,
    GatewayProcess,
    GatewayProcess,
    String,
) {
    let setup = WorkerSetup::new(name, 1).await;
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let a = GatewayProcess::start(&setup, &db, &key, &PLANS).await;
    let b = GatewayProcess::start(&setup, &db, &key, &PLANS).await;
    (setup, key, a, b, db)
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_every_replica() {
    let (_setup, key, a, b, _db) = two_gateways("gw-rate").await;
    let token = key.token("acme", json!({"plan": "trial"}));
    let mut remaining = Vec::new();
    for i in 0..4 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let r = gateway.get(&token, "/v1/usage").await;
        assert_eq!(r.status(), 200, "request {i} within the burst");
        assert_eq!(header(&r, "ratelimit-limit"), Some(4));
        remaining.push(header(&r, "ratelimit-remaining").unwrap());
    }
    assert_eq!(remaining, [3, 2, 1, 0]);
    for gateway in [&a, &b] {
        let r = gateway.get(&token, "/v1/usage").await;
        assert_eq!(r.status(), 429);
        let retry_after = header(&r, "retry-after").unwrap();
        assert!((1..=5).contains(&retry_after), "{retry_after}");
        assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    // Another tenant has its own bucket.
    assert_eq!(
        a.get(&key.token("globex", json!({"plan": "trial"})), "/v1/usage")
            .await
            .status(),
        200
    );
    // One token is back after 1/0.2 = 5 s.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(b.get(&token, "/v1/usage").await.status(), 200);
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("t2v_gateway_limit_rejections_total{limit=\"rate\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_daily_quota_is_shared_and_infrastructure_failures_are_given_back() {
    let (setup, key, a, b, _db) = two_gateways("gw-quota").await;
    let token = key.token("acme", json!({"plan": "small"}));
    let mut ids = Vec::new();
    for i in 0..3 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let r = gateway.submit(&token, &video_body(4), None).await;
        assert_eq!(r.status(), 202, "video {i} within the quota");
        let job: Value = r.json().await.unwrap();
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    for gateway in [&a, &b] {
        let r = gateway.submit(&token, &video_body(4), None).await;
        assert_eq!(r.status(), 429);
        let retry_after = header(&r, "retry-after").unwrap();
        assert!((1..=86_400).contains(&retry_after));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    }
    let usage: Value = b.get(&token, "/v1/usage").await.json().await.unwrap();
    assert_eq!(
        (
            usage["videos"]["used"].as_u64(),
            usage["videos"]["remaining"].as_u64()
        ),
        (Some(3), Some(0)),
        "{usage}"
    );
    assert_eq!(
        t2v_tests::record_count(&setup.requests),
        3,
        "refused submissions never reach the queue"
    );

    // Two jobs fail: one for the fleet's reason (given back), one for the request's (kept).
    publish_failed(&setup.events, &ids[0], ErrorCode::Unavailable).await;
    publish_failed(&setup.events, &ids[1], ErrorCode::InvalidArgument).await;
    a.wait_state(&token, &ids[0], "failed", Duration::from_secs(30))
        .await;
    let failed = b
        .wait_state(&token, &ids[1], "failed", Duration::from_secs(30))
        .await;
    assert_eq!(failed["error"]["code"], "ERROR_CODE_INVALID_ARGUMENT");
    let usage: Value = a.get(&token, "/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["videos"]["used"], 2, "{usage}");
    assert_eq!(
        b.submit(&token, &video_body(4), None).await.status(),
        202,
        "the given-back video can be spent"
    );
    assert_eq!(a.submit(&token, &video_body(4), None).await.status(), 429);
    // A duplicate of the Failed event (both replicas read it) does not give back a second time.
    publish_failed(&setup.events, &ids[0], ErrorCode::Unavailable).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let usage: Value = a.get(&token, "/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["videos"]["used"], 3, "{usage}");
}

#[tokio::test]
async fn used_up_gpu_seconds_refuse_new_videos_until_the_next_day() {
    let (setup, key, a, b, _db) = two_gateways("gw-gpu").await;
    let token = key.token("acme", json!({"plan": "gpu"}));
    let job: Value = a.submit_job(&token, &video_body(4), None).await;
    let id = job["id"].as_str().unwrap();
    let completed = Kind::Completed(Completed {
        timings: Some(Timings {
            total_ms: 2500,
            ..Default::default()
        }),
        ..Default::default()
    });
    publish(&setup.events, id, completed).await;
    b.wait_state(&token, id, "completed", Duration::from_secs(30))
        .await;
    let usage: Value = b.get(&token, "/v1/usage").await.json().await.unwrap();
    assert_eq!(
        (
            usage["gpuSeconds"]["used"].as_u64(),
            usage["gpuSeconds"]["remaining"].as_u64()
        ),
        (Some(3), Some(0)),
        "{usage}"
    );
    let r = a.submit(&token, &video_body(4), None).await;
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpu-seconds"),
        "{body}"
    );
}

/// Publishes a Failed event for `job_id` as a worker would.
async fn publish_failed(topic: &str, job_id: &str, code: ErrorCode) {
    let failed = Kind::Failed(Failed {
        code: code as i32,
        message: "injected by the test".into(),
        retryable: code == ErrorCode::Unavailable,
    });
    publish(topic, job_id, failed).await;
}

/// Publishes an event of `kind` for `job_id` as a worker would.
async fn publish(topic: &str, job_id: &str, kind: Kind) {
    let event = GenerationEvent {
        job_id: job_id.into(),
        emitted_at_unix_ms: t2v_contract::now_unix_ms(),
        worker_id: "test".into(),
        kind: Some(kind),
        ..Default::default()
    };
    let payload = event.encode_to_vec();
    producer()
        .send(
            FutureRecord::to(topic).key(job_id).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

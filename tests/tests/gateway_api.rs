//! `t2v-gateway` end to end on the real PostgreSQL, Kafka and S3 server with a synthetic worker:
//! submit → SSE progress → completed with signed links that download the exact bytes; the tenant
//! stamped on the events; other tenants see nothing; idempotency keys; cancel; the list.

use std::time::Duration;

use serde_json::{json, Value};
use t2v_contract::sha256_hex;
use t2v_tests::gateway::{read_sse, video_body, GatewayProcess, SigningKey};
use t2v_tests::{decode_event, read_topic, record_count, WorkerSetup};

async fn download(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET {url}");
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn a_submitted_video_streams_progress_and_downloads_exactly() {
    let setup = WorkerSetup::new("gw-happy", 2).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "150")]);
    let key = SigningKey::generate("k1");
    let gateway =
        GatewayProcess::start(&setup, &t2v_tests::gateway::fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let other = key.token("globex", json!({}));

    let r = gateway.submit(&acme, &video_body(8), None).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/videos/{id}"));
    assert_eq!(job["state"], "queued");
    assert_eq!(job["settings"]["numInferenceSteps"], 8);

    // Another tenant cannot see, follow or cancel it.
    for path in [
        format!("/v1/videos/{id}"),
        format!("/v1/videos/{id}/events"),
    ] {
        assert_eq!(gateway.get(&other, &path).await.status(), 404, "{path}");
    }
    let r = gateway
        .http
        .delete(gateway.url(&location))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let listed: Value = gateway
        .get(&other, "/v1/videos")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["videos"], json!([]));

    // Progress as it happens, then the terminal event ends the stream.
    let sse = gateway.get(&acme, &format!("/v1/videos/{id}/events")).await;
    assert_eq!(sse.status(), 200);
    assert!(sse.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = read_sse(sse, |_, _| false, Duration::from_secs(90)).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    let steps: Vec<i64> = events
        .iter()
        .filter(|(n, _)| n == "running")
        .filter_map(|(_, v)| v["progress"]["step"].as_i64())
        .collect();
    assert!(
        steps.iter().any(|&s| s > 0 && s < 8),
        "progress mid-way: {events:?}"
    );
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "ordered: {steps:?}");

    // Completed: signed links that download the bytes the manifest names.
    let done = gateway.job(&acme, &id).await;
    assert_eq!(done["state"], "completed");
    let result = &done["result"];
    let video_url = result["video"]["url"].as_str().unwrap();
    assert!(video_url.contains("X-Amz-Signature="), "{video_url}");
    assert!(result["video"]["expiresAtUnixMs"].as_u64().unwrap() > t2v_contract::now_unix_ms());
    let manifest: Value = serde_json::from_slice(
        &download(&gateway.http, result["manifest"]["url"].as_str().unwrap()).await,
    )
    .unwrap();
    let video = download(&gateway.http, video_url).await;
    assert_eq!(
        sha256_hex(&video),
        manifest["video"]["sha256"].as_str().unwrap()
    );
    assert_eq!(
        sha256_hex(&video),
        result["video"]["sha256"].as_str().unwrap()
    );
    let thumb = download(&gateway.http, result["thumbnail"]["url"].as_str().unwrap()).await;
    assert_eq!(
        sha256_hex(&thumb),
        manifest["thumbnail"]["sha256"].as_str().unwrap()
    );
    assert!(done["timings"]["totalMs"].is_string(), "{done}");
    // A signed link is a capability for that object only, not for its neighbours.
    let forged = video_url.replace("video.mp4", "thumbnail.jpg");
    assert_eq!(
        gateway.http.get(&forged).send().await.unwrap().status(),
        403
    );

    // The tenant rode along on every event (a label the client could not set) and the manifest.
    let records = read_topic(
        &setup.events,
        record_count(&setup.events) as usize,
        Duration::from_secs(10),
    );
    assert!(!records.is_empty());
    for record in &records {
        let event = decode_event(record);
        assert_eq!(
            event.labels.get("t2v.tenant").map(String::as_str),
            Some("acme"),
            "{event:?}"
        );
    }
    assert_eq!(manifest["labels"]["t2v.tenant"], "acme", "{manifest}");
    assert!(
        done["settings"].get("labels").is_none(),
        "the reserved label is not echoed: {done}"
    );
    let r = gateway
        .submit(
            &acme,
            &json!({"model": "wan2.2-t2v-a14b", "prompt": "x", "labels": {"t2v.tenant": "globex"}}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);

    // The list has it; usage counts it.
    let listed: Value = gateway
        .get(&acme, "/v1/videos?state=completed")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["videos"][0]["id"], id.as_str());
    let usage: Value = gateway.get(&acme, "/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["videos"]["used"], 1, "{usage}");
    assert!(
        usage["gpuSeconds"]["used"].as_u64().unwrap() >= 1,
        "{usage}"
    );

    // JSON access logs name the tenant and the job; the database password never shows.
    let logs = gateway.logs();
    let access: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "access")
        .collect();
    assert!(
        access.iter().any(|l| l["fields"]["route"] == "/v1/videos"
            && l["fields"]["status"] == 202
            && l["fields"]["tenant"] == "acme"
            && l["fields"]["job_id"] == id.as_str()),
        "{logs}"
    );
    assert!(
        !logs.contains("t2v-local-only"),
        "a secret in the logs:\n{logs}"
    );
    let metrics = gateway.metrics().await;
    assert!(
        metrics.contains(r#"t2v_gateway_http_requests_total{method="POST",route="/v1/videos",status="202"} 1"#)
            && metrics.contains(r#"t2v_gateway_http_requests_total{method="GET",route="/v1/videos/{id}",status="404"} 1"#)
            && metrics.contains("t2v_gateway_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_bodies_are_refused_with_the_field_and_its_bound() {
    let setup = WorkerSetup::new("gw-bad", 1).await;
    let key = SigningKey::generate("k1");
    let gateway = GatewayProcess::start(
        &setup,
        &t2v_tests::gateway::fresh_database(),
        &key,
        &[("T2V_GATEWAY__HTTP__MAX_BODY_BYTES", "4096")],
    )
    .await;
    let token = key.token("acme", json!({}));
    let error = |v: Value| v["error"].clone();

    let r = gateway
        .submit(
            &token,
            &json!({"model": "wan2.2-t2v-a14b", "prompt": "x", "numFrames": 6}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
    let e = error(r.json().await.unwrap());
    assert_eq!(e["field"], "num_frames", "{e}");
    assert!(e["message"].as_str().unwrap().contains("241"), "{e}");

    let r = gateway
        .submit(
            &token,
            &json!({"model": "wan2.2-t2v-a14b", "prompt": "x", "frames": 5}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(error(r.json().await.unwrap())["message"]
        .as_str()
        .unwrap()
        .contains("frames"));

    let r = gateway
        .submit(
            &token,
            &json!({"model": "wan2.2-t2v-a14b", "prompt": "x", "jobId": "mine"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);

    let big = json!({"model": "wan2.2-t2v-a14b", "prompt": "x".repeat(5000)});
    assert_eq!(gateway.submit(&token, &big, None).await.status(), 413);
    // Nothing of that reached the queue.
    assert_eq!(record_count(&setup.requests), 0);
}

#[tokio::test]
async fn an_idempotency_key_gives_one_job_and_refuses_another_body() {
    let setup = WorkerSetup::new("gw-idem", 1).await;
    let key = SigningKey::generate("k1");
    let gateway =
        GatewayProcess::start(&setup, &t2v_tests::gateway::fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let globex = key.token("globex", json!({}));

    let first: Value = gateway
        .submit_job(&acme, &video_body(4), Some("order-17"))
        .await;
    let r = gateway
        .submit(&acme, &video_body(4), Some("order-17"))
        .await;
    assert_eq!(r.status(), 202);
    let again: Value = r.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let r = gateway
        .submit(&acme, &video_body(5), Some("order-17"))
        .await;
    assert_eq!(r.status(), 409);
    // The same key from another tenant is another job.
    let theirs: Value = gateway
        .submit_job(&globex, &video_body(4), Some("order-17"))
        .await;
    assert_ne!(theirs["id"], first["id"]);
    assert_eq!(
        record_count(&setup.requests),
        2,
        "one request per job on the queue"
    );
    let usage: Value = gateway.get(&acme, "/v1/usage").await.json().await.unwrap();
    assert_eq!(
        usage["videos"]["used"], 1,
        "a replay is not charged: {usage}"
    );
}

#[tokio::test]
async fn a_running_video_is_canceled() {
    let setup = WorkerSetup::new("gw-cancel", 1).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "300")]);
    let key = SigningKey::generate("k1");
    let gateway =
        GatewayProcess::start(&setup, &t2v_tests::gateway::fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let job: Value = gateway.submit_job(&acme, &video_body(100), None).await;
    let id = job["id"].as_str().unwrap();
    gateway
        .wait_state(&acme, id, "running", Duration::from_secs(60))
        .await;
    let r = gateway
        .http
        .delete(gateway.url(&format!("/v1/videos/{id}")))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let done = gateway
        .wait_state(&acme, id, "canceled", Duration::from_secs(60))
        .await;
    assert!(done["canceled"]["atStep"].as_u64().unwrap() < 100, "{done}");
    let r = gateway
        .http
        .delete(gateway.url(&format!("/v1/videos/{id}")))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "nothing left to cancel");
}

#[tokio::test]
async fn the_list_pages_through_the_callers_jobs_only() {
    let setup = WorkerSetup::new("gw-list", 1).await;
    let key = SigningKey::generate("k1");
    let gateway =
        GatewayProcess::start(&setup, &t2v_tests::gateway::fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let globex = key.token("globex", json!({}));
    let mut ids = Vec::new();
    for _ in 0..5 {
        let job: Value = gateway.submit_job(&acme, &video_body(4), None).await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    gateway.submit(&globex, &video_body(4), None).await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = gateway
            .get(
                &acme,
                &format!("/v1/videos?state=queued&limit=2&cursor={cursor}"),
            )
            .await
            .json()
            .await
            .unwrap();
        let videos = page["videos"].as_array().unwrap();
        assert!(videos.len() <= 2);
        seen.extend(videos.iter().map(|v| v["id"].as_str().unwrap().to_string()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once, none of another tenant");
    assert_eq!(gateway.get(&acme, "/v1/videos?limit=0").await.status(), 400);
    assert_eq!(
        gateway.get(&acme, "/v1/videos?state=lost").await.status(),
        400
    );
}

#[tokio::test]
async fn an_unserved_model_is_refused_before_anything_is_charged() {
    let setup = WorkerSetup::new("gw-routes", 1).await;
    let key = SigningKey::generate("k1");
    let topics = t2v_tests::workspace_root().join("schemas/topics.yaml");
    let gateway = GatewayProcess::start(
        &setup,
        &t2v_tests::gateway::fresh_database(),
        &key,
        &[("T2V_GATEWAY__KAFKA__TOPICS_FILE", topics.to_str().unwrap())],
    )
    .await;
    let token = key.token("acme", json!({}));
    let r = gateway
        .submit(
            &token,
            &json!({"model": "not-served-here", "prompt": "x"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["field"], "model", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wan2.2-t2v-a14b"),
        "names the served models: {body}"
    );
    let usage: Value = gateway.get(&token, "/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["videos"]["used"], 0, "{usage}");
}

#[tokio::test]
async fn a_file_system_video_is_streamed_by_the_gateway_to_its_tenant_only() {
    let setup = WorkerSetup::new("gw-file", 1).await;
    let outputs = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", outputs.path().display());
    let _worker = setup.start_worker(&[("T2V_STORAGE__URL", storage.as_str())]);
    let key = SigningKey::generate("k1");
    let gateway =
        GatewayProcess::start(&setup, &t2v_tests::gateway::fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let job: Value = gateway.submit_job(&acme, &video_body(3), None).await;
    let id = job["id"].as_str().unwrap();
    let done = gateway
        .wait_state(&acme, id, "completed", Duration::from_secs(90))
        .await;
    let video = &done["result"]["video"];
    let path = video["url"].as_str().unwrap();
    assert_eq!(path, format!("/v1/videos/{id}/files/video"));
    let r = gateway.get(&acme, path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    let bytes = r.bytes().await.unwrap();
    assert_eq!(sha256_hex(&bytes), video["sha256"].as_str().unwrap());
    let globex = key.token("globex", json!({}));
    assert_eq!(gateway.get(&globex, path).await.status(), 404);
    assert_eq!(
        gateway
            .get(&acme, &format!("/v1/videos/{id}/files/secrets"))
            .await
            .status(),
        404
    );
}

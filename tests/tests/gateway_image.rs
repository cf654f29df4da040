//! `POST /v1/videos` with a conditioning image on the real PostgreSQL, Kafka and S3 server:
//! `image` as `{"inline": "<base64>"}` (at the contract's 48 KiB bound, so the gateway's body
//! limit takes it) and as `{"uri": "s3://..."}` reach the requests topic with exactly those
//! bytes or that URI; the job resource, the list and the stored row name an inline image by
//! SHA-256 and size, never by its bytes; an Idempotency-Key covers the image; a too-large inline
//! image, bytes that are not base64, a bad URI scheme and a two-sourced image are 400s naming
//! their field, and nothing of them is queued or charged. Through a synthetic worker, the image
//! is the first frame of the video the signed link downloads.

use std::time::Duration;

use base64::Engine;
use prost::Message;
use serde_json::{json, Value};
use t2v_contract::sha256_hex;
use t2v_contract::validate::MAX_INLINE_IMAGE_BYTES;
use t2v_proto::v1::{condition_image::Source, GenerationRequest};
use t2v_tests::gateway::{fresh_database, psql, video_body, GatewayProcess, SigningKey};
use t2v_tests::{
    close_to, first_frame, halves_png, mean_colour, read_topic, record_count, stack_env,
    WorkerSetup, LEFT, RIGHT,
};

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// [`video_body`] with `image`.
fn with_image(image: Value) -> Value {
    let mut body = video_body(2);
    body["image"] = image;
    body
}

/// Bytes no other test sends, `len` of them (the gateway does not decode images; workers do).
fn distinct_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The requests on the topic, by job id.
fn queued_requests(topic: &str, count: usize) -> Vec<GenerationRequest> {
    let records = read_topic(topic, count, Duration::from_secs(20));
    assert_eq!(records.len(), count, "{count} requests on {topic}");
    records
        .iter()
        .map(|r| {
            use rdkafka::Message as _;
            GenerationRequest::decode(r.payload().unwrap_or_default()).expect("a request")
        })
        .collect()
}

#[tokio::test]
async fn inline_and_uri_images_reach_kafka_exactly_and_are_never_shown_back() {
    let setup = WorkerSetup::new("gw-image", 1).await;
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let gateway = GatewayProcess::start(&setup, &db, &key, &[]).await;
    let acme = key.token("acme", json!({}));

    let bytes = distinct_bytes(MAX_INLINE_IMAGE_BYTES);
    let encoded = base64(&bytes);
    let inline = gateway
        .submit_job(
            &acme,
            &with_image(json!({"inline": encoded})),
            Some("img-1"),
        )
        .await;
    let digest = json!({"sha256": sha256_hex(&bytes), "sizeBytes": bytes.len()});
    assert_eq!(inline["settings"]["image"], digest, "{inline}");
    let uri = format!("s3://{}/inputs/cat.png", stack_env()["T2V_S3_BUCKET"]);
    let by_uri = gateway
        .submit_job(&acme, &with_image(json!({"uri": uri})), None)
        .await;
    assert_eq!(by_uri["settings"]["image"], json!({"uri": uri}));

    // The records carry exactly the bytes and the URI that were sent.
    let requests = queued_requests(&setup.requests, 2);
    let source = |id: &Value| {
        let id = id.as_str().unwrap();
        let req = requests.iter().find(|r| r.job_id == id).expect(id);
        req.image.as_ref().and_then(|i| i.source.clone())
    };
    assert_eq!(source(&inline["id"]), Some(Source::Inline(bytes.clone())));
    assert_eq!(source(&by_uri["id"]), Some(Source::Uri(uri.clone())));

    // Neither the resource, the list nor the stored row holds the bytes.
    let id = inline["id"].as_str().unwrap();
    let shown = gateway.job(&acme, id).await;
    assert_eq!(shown["settings"]["image"], digest);
    let listed = gateway.get(&acme, "/v1/videos").await.text().await.unwrap();
    let stored = psql(&db, "SELECT string_agg(request::text, ' ') FROM jobs");
    let needle = &encoded[..64];
    for (what, text) in [
        ("resource", shown.to_string()),
        ("list", listed),
        ("row", stored),
    ] {
        assert!(!text.contains(needle), "the {what} holds the image's bytes");
    }

    // The Idempotency-Key stands for the image too.
    let again = gateway
        .submit_job(
            &acme,
            &with_image(json!({"inline": encoded})),
            Some("img-1"),
        )
        .await;
    assert_eq!(again["id"], inline["id"]);
    let mut other = bytes.clone();
    other[0] ^= 1;
    for image in [json!({"inline": base64(&other)}), json!({"uri": uri})] {
        let r = gateway
            .submit(&acme, &with_image(image.clone()), Some("img-1"))
            .await;
        assert_eq!(r.status(), 409, "{image}");
    }
    assert_eq!(record_count(&setup.requests), 2, "one record per job");
}

#[tokio::test]
async fn malformed_images_are_refused_naming_the_field() {
    let setup = WorkerSetup::new("gw-image-bad", 1).await;
    let key = SigningKey::generate("k1");
    let gateway = GatewayProcess::start(&setup, &fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));

    let too_large = base64(&distinct_bytes(MAX_INLINE_IMAGE_BYTES + 1));
    let cases = [
        (json!({"inline": too_large}), "image.inline", "by uri"),
        (json!({"inline": "a PNG?"}), "image.inline", "base64"),
        (
            json!({"uri": "https://example.com/cat.png"}),
            "image.uri",
            "s3://bucket/key",
        ),
        (
            json!({"uri": "s3://bucket"}),
            "image.uri",
            "names no object",
        ),
        (
            json!({"uri": "s3://b/k.png", "inline": "AAAA"}),
            "image",
            "one of them",
        ),
        (json!("s3://b/k.png"), "image", "object"),
    ];
    for (image, field, fix) in cases {
        let r = gateway
            .submit(&acme, &with_image(image.clone()), None)
            .await;
        assert_eq!(r.status(), 400, "{image}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{image}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(fix), "{image}: {message}");
        assert!(
            message.starts_with(&format!("invalid {field}: ")),
            "{message}"
        );
    }
    assert_eq!(record_count(&setup.requests), 0, "nothing was queued");
    let usage: Value = gateway.get(&acme, "/v1/usage").await.json().await.unwrap();
    assert_eq!(usage["videos"]["used"], 0, "nothing was charged: {usage}");
}

#[tokio::test]
async fn an_inline_image_opens_the_video_a_synthetic_worker_makes() {
    let setup = WorkerSetup::new("gw-image-e2e", 1).await;
    let _worker = setup.start_worker(&[]);
    let key = SigningKey::generate("k1");
    let gateway = GatewayProcess::start(&setup, &fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let png = halves_png(64, 48);
    let job = gateway
        .submit_job(&acme, &with_image(json!({"inline": base64(&png)})), None)
        .await;
    let id = job["id"].as_str().unwrap();
    let done = gateway
        .wait_state(&acme, id, "completed", Duration::from_secs(90))
        .await;

    let download = |name: &str| {
        let url = done["result"][name]["url"].as_str().unwrap().to_string();
        let http = gateway.http.clone();
        async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    let video = download("video").await;
    let (width, height) = (64, 64);
    let frame = first_frame(&video, width, height);
    let left = mean_colour(&frame, width, 0..width / 2 - 8);
    let right = mean_colour(&frame, width, width / 2 + 8..width);
    assert!(close_to(left, LEFT, 12.0), "left half {left:?}");
    assert!(close_to(right, RIGHT, 12.0), "right half {right:?}");
    // The worker's manifest and the gateway name the image by the same digest.
    let manifest: Value = serde_json::from_slice(&download("manifest").await).unwrap();
    assert_eq!(
        manifest["image"]["sha256"],
        done["settings"]["image"]["sha256"]
    );
    assert_eq!(manifest["image"]["size_bytes"], png.len());
}

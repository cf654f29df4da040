//! The `t2v` CLI and the `Submitter` against the real broker of `make up`.
//! Each test works on its own freshly created topics, so tests run in parallel and in any order.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use t2v_contract::headers::{schema, CONTENT_TYPE, PROTOBUF_CONTENT_TYPE, SCHEMA, TRACEPARENT};
use t2v_contract::TraceContext;
use t2v_proto::v1::{
    control_command, generation_event::Kind, Artifact, Completed, ControlCommand, GenerationEvent,
    GenerationRequest, Progress,
};
use t2v_tests::{binary, brokers, header, read_topic, record_count, unique_name, Topics};

async fn fresh_topics() -> Topics {
    Topics::create(3).await
}

fn t2v(topics: &Topics, args: &[&str]) -> Output {
    Command::new(binary("t2v"))
        .args(["--brokers", &brokers()])
        .args(["--requests-topic", &topics.requests])
        .args(["--events-topic", &topics.events])
        .args(["--control-topic", &topics.control])
        .args(args)
        .env_remove("T2V_BROKERS")
        .output()
        .expect("run t2v")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn submit_lands_on_the_requests_topic_with_key_headers_and_payload() {
    let topics = fresh_topics().await;
    let out = t2v(
        &topics,
        &[
            "submit",
            "a red fox in fresh snow",
            "--job-id",
            "fox-1",
            "--model",
            "wan2.2-t2v-a14b",
            "--size",
            "1280x720",
            "--frames",
            "81",
            "--steps",
            "40",
            "--guidance",
            "4.0",
            "--guidance-2",
            "3.0",
            "--seed",
            "42",
            "--label",
            "team=vfx",
        ],
    );
    assert!(
        out.status.success(),
        "t2v submit failed: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("submitted fox-1"),
        "{}",
        text(&out.stdout)
    );

    let records = read_topic(&topics.requests, 1, Duration::from_secs(20));
    assert_eq!(
        records.len(),
        1,
        "exactly one record on {}",
        topics.requests
    );
    let record = &records[0];
    assert_eq!(record.key(), Some(b"fox-1".as_slice()));
    assert_eq!(
        header(record, CONTENT_TYPE).as_deref(),
        Some(PROTOBUF_CONTENT_TYPE)
    );
    assert_eq!(
        header(record, SCHEMA).as_deref(),
        Some(schema::GENERATION_REQUEST)
    );
    let traceparent = header(record, TRACEPARENT).expect("traceparent header");
    assert!(
        TraceContext::parse(&traceparent).is_some(),
        "valid W3C traceparent: {traceparent}"
    );

    let req = GenerationRequest::decode(record.payload().unwrap()).unwrap();
    let expected = GenerationRequest {
        job_id: "fox-1".into(),
        model: "wan2.2-t2v-a14b".into(),
        prompt: "a red fox in fresh snow".into(),
        width: 1280,
        height: 720,
        num_frames: 81,
        num_inference_steps: 40,
        guidance_scale: Some(4.0),
        guidance_scale_2: Some(3.0),
        seed: Some(42),
        labels: [("team".to_string(), "vfx".to_string())].into(),
        submitted_at_unix_ms: req.submitted_at_unix_ms,
        ..Default::default()
    };
    assert_eq!(req, expected);
    assert!(req.submitted_at_unix_ms > 0);
}

#[tokio::test]
async fn a_job_id_is_assigned_when_none_is_given() {
    let topics = fresh_topics().await;
    let out = t2v(&topics, &["submit", "a lighthouse at dusk"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = read_topic(&topics.requests, 1, Duration::from_secs(20));
    let req = GenerationRequest::decode(records[0].payload().unwrap()).unwrap();
    assert_eq!(req.job_id.len(), 26, "a ULID: {}", req.job_id);
    assert!(ulid::Ulid::from_string(&req.job_id).is_ok());
    assert_eq!(records[0].key(), Some(req.job_id.as_bytes()));
}

#[tokio::test]
async fn invalid_requests_exit_2_name_the_field_and_produce_nothing() {
    let topics = fresh_topics().await;
    let cases: &[(&[&str], &str)] = &[
        (&["submit", "a cat", "--frames", "0"], "num_frames"),
        (&["submit", "a cat", "--frames", "80"], "num_frames"),
        (&["submit", "a cat", "--size", "99999x1"], "width"),
        (&["submit", "a cat", "--size", "832x1"], "height"),
        (&["submit", ""], "prompt"),
        (
            &["submit", "a cat", "--steps", "500"],
            "num_inference_steps",
        ),
        (&["submit", "a cat", "--guidance", "99"], "guidance_scale"),
        (&["submit", "a cat", "--job-id", "bad id!"], "job_id"),
    ];
    for (args, field) in cases {
        let out = t2v(&topics, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid {field}:")),
            "{args:?} should name {field}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    assert_eq!(
        record_count(&topics.requests),
        0,
        "nothing may reach the topic"
    );
}

#[tokio::test]
async fn unreachable_brokers_fail_with_exit_3_within_15_seconds() {
    let start = Instant::now();
    let out = Command::new(binary("t2v"))
        .args([
            "--brokers",
            "127.0.0.1:1",
            "--connect-timeout-secs",
            "5",
            "submit",
            "a cat",
        ])
        .output()
        .unwrap();
    let elapsed = start.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot reach Kafka brokers at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
}

#[tokio::test]
async fn a_missing_topic_exits_3_and_says_how_to_create_it() {
    let topics = Topics::absent();
    let out = t2v(&topics, &["submit", "a cat"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("t2v topics apply"), "{stderr}");
}

/// Plays a worker: answers every request with Progress 1..=3 then Completed.
async fn scripted_responder(topics: &Topics) -> tokio::task::JoinHandle<()> {
    let brokers = brokers();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique_name("responder"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topics.requests]).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let events = topics.events.clone();
    tokio::spawn(async move {
        loop {
            let Ok(message) = consumer.recv().await else {
                continue;
            };
            let req = GenerationRequest::decode(message.payload().unwrap()).unwrap();
            let send = |kind: Kind| {
                let event = GenerationEvent {
                    job_id: req.job_id.clone(),
                    worker_id: "scripted".into(),
                    kind: Some(kind),
                    ..Default::default()
                };
                let payload = event.encode_to_vec();
                let producer = producer.clone();
                let events = events.clone();
                let key = req.job_id.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(&events).key(&key).payload(&payload),
                            Duration::from_secs(5),
                        )
                        .await
                        .unwrap();
                }
            };
            for step in 1..=3 {
                send(Kind::Progress(Progress {
                    step,
                    total_steps: 3,
                    timestep: 1000.0 - 300.0 * step as f32,
                    eta_ms: 100,
                    resumed_from_step: 0,
                }))
                .await;
            }
            let artifact = |name: &str, ct: &str| Artifact {
                uri: format!("s3://t2v/jobs/{}/{name}", req.job_id),
                size_bytes: 1234,
                sha256: "ab".repeat(32),
                content_type: ct.into(),
            };
            send(Kind::Completed(Completed {
                video: Some(artifact("video.mp4", "video/mp4")),
                thumbnail: Some(artifact("thumbnail.jpg", "image/jpeg")),
                manifest: Some(artifact("manifest.json", "application/json")),
                seed: req.seed.unwrap_or(7),
                ..Default::default()
            }))
            .await;
        }
    })
}

// Multi-threaded: the responder task must run while this thread blocks on the CLI process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_shows_progress_then_the_artifact_uris() {
    let topics = fresh_topics().await;
    let responder = scripted_responder(&topics).await;
    let out = t2v(
        &topics,
        &[
            "submit",
            "waves at night",
            "--job-id",
            "wait-1",
            "--seed",
            "9",
            "--wait",
            "--wait-timeout-secs",
            "60",
        ],
    );
    responder.abort();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("wait-1: step 3/3"),
        "progress lines: {stderr}"
    );
    assert!(stdout.contains("completed wait-1 (seed 9)"), "{stdout}");
    for name in ["video.mp4", "thumbnail.jpg", "manifest.json"] {
        assert!(
            stdout.contains(&format!("s3://t2v/jobs/wait-1/{name}")),
            "{stdout}"
        );
    }
}

#[tokio::test]
async fn batch_submits_every_line_or_nothing() {
    let topics = fresh_topics().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.jsonl");
    std::fs::write(
        &good,
        "{\"model\":\"m\",\"prompt\":\"one\",\"numFrames\":81}\n\n{\"model\":\"m\",\"prompt\":\"two\",\"jobId\":\"b-2\"}\n{\"model\":\"m\",\"prompt\":\"three\",\"seed\":\"5\"}\n",
    )
    .unwrap();
    let out = t2v(&topics, &["submit", "--batch", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = read_topic(&topics.requests, 3, Duration::from_secs(20));
    let mut prompts: Vec<String> = records
        .iter()
        .map(|r| {
            GenerationRequest::decode(r.payload().unwrap())
                .unwrap()
                .prompt
        })
        .collect();
    prompts.sort();
    assert_eq!(prompts, ["one", "three", "two"]);

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"model\":\"m\",\"prompt\":\"ok\"}\n{\"model\":\"m\",\"prompt\":\"x\",\"numFrames\":4}\n",
    )
    .unwrap();
    let out = t2v(&topics, &["submit", "--batch", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl:2: invalid num_frames"),
        "{stderr}"
    );
    assert_eq!(
        record_count(&topics.requests),
        3,
        "the bad batch produced nothing"
    );
}

#[tokio::test]
async fn cancel_publishes_a_control_command_keyed_by_job() {
    let topics = fresh_topics().await;
    let out = t2v(&topics, &["cancel", "job-9", "--reason", "changed my mind"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = read_topic(&topics.control, 1, Duration::from_secs(20));
    assert_eq!(records[0].key(), Some(b"job-9".as_slice()));
    assert_eq!(
        header(&records[0], SCHEMA).as_deref(),
        Some(schema::CONTROL_COMMAND)
    );
    let command = ControlCommand::decode(records[0].payload().unwrap()).unwrap();
    match command.command {
        Some(control_command::Command::Cancel(c)) => assert_eq!(c.reason, "changed my mind"),
        other => panic!("expected Cancel, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_prints_events_as_json_lines() {
    let topics = fresh_topics().await;
    let responder = scripted_responder(&topics).await;
    let submit = t2v(&topics, &["submit", "a kite", "--job-id", "w-1"]);
    assert!(submit.status.success());
    let out = tokio::task::spawn_blocking({
        let args = ["watch", "--job", "w-1", "--from-beginning", "--until-done"];
        let cmd = move || {
            Command::new(binary("t2v"))
                .args(["--brokers", &brokers(), "--events-topic", &topics.events])
                .args(args)
                .output()
                .unwrap()
        };
        cmd
    })
    .await
    .unwrap();
    responder.abort();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 4, "3 progress + completed: {stdout}");
    assert!(events.iter().all(|e| e["jobId"] == "w-1"), "{stdout}");
    assert_eq!(events[0]["progress"]["step"], 1);
    assert_eq!(events[3]["completed"]["video"]["contentType"], "video/mp4");
}

#[tokio::test]
async fn topics_apply_is_idempotent_and_matches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = unique_name("apply-a");
    let b = unique_name("apply-b");
    let file = dir.path().join("topics.yaml");
    std::fs::write(
        &file,
        format!(
            "topics:\n  - {{name: {a}, key: job_id, value: x, partitions: 3, replication_factor: 1, cleanup_policy: delete, retention_ms: 3600000}}\n  - {{name: {b}, key: job_id, value: y, partitions: 2, replication_factor: 1, cleanup_policy: compact, retention_ms: -1}}\n"
        ),
    )
    .unwrap();
    let apply = || {
        Command::new(binary("t2v"))
            .args([
                "--brokers",
                &brokers(),
                "topics",
                "apply",
                "--file",
                file.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let first = apply();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains(&format!("{a}: created")),
        "{}",
        text(&first.stdout)
    );
    let second = apply();
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(text(&second.stdout), format!("{a}: ok\n{b}: ok\n"));
    assert_eq!(t2v_tests::partition_count(&a), 3);
    assert_eq!(t2v_tests::partition_count(&b), 2);

    // Growing partitions in the file grows the topic.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("partitions: 3", "partitions: 5"),
    )
    .unwrap();
    let third = apply();
    assert!(
        text(&third.stdout).contains(&format!("{a}: updated (partitions 3 -> 5)")),
        "{}",
        text(&third.stdout)
    );
    assert_eq!(t2v_tests::partition_count(&a), 5);

    // The project's own topics, as `make up` created them, already match.
    let real = Command::new(binary("t2v"))
        .current_dir(t2v_tests::workspace_root())
        .args(["--brokers", &brokers(), "topics", "apply"])
        .output()
        .unwrap();
    assert!(real.status.success(), "{}", text(&real.stderr));
    assert_eq!(
        text(&real.stdout),
        "t2v.requests.v1: ok\nt2v.events.v1: ok\nt2v.control.v1: ok\nt2v.dlq.v1: ok\n\
         t2v.requests.high.v1: ok\nt2v.requests.batch.v1: ok\n\
         t2v.i2v.requests.high.v1: ok\nt2v.i2v.requests.v1: ok\nt2v.i2v.requests.batch.v1: ok\n\
         t2v.ti2v.requests.high.v1: ok\nt2v.ti2v.requests.v1: ok\nt2v.ti2v.requests.batch.v1: ok\n",
        "the lanes of every served model are made like t2v.requests.v1"
    );
}

#[tokio::test]
async fn submitter_library_submits_many_in_order_and_follows_a_job() {
    use t2v_producer::Terminal;
    let topics = fresh_topics().await;
    let submitter = topics.submitter();
    submitter.check_brokers().await.unwrap();
    let reqs: Vec<GenerationRequest> = (0..50)
        .map(|i| GenerationRequest {
            model: "m".into(),
            prompt: format!("prompt {i}"),
            ..Default::default()
        })
        .collect();
    let submitted = submitter.submit_many(reqs).await.unwrap();
    assert_eq!(submitted.len(), 50);
    assert_eq!(record_count(&topics.requests), 50);

    let invalid = vec![
        GenerationRequest {
            model: "m".into(),
            prompt: "ok".into(),
            ..Default::default()
        },
        GenerationRequest {
            model: "m".into(),
            prompt: "x".into(),
            width: 7,
            ..Default::default()
        },
    ];
    let err = submitter.submit_many(invalid).await.unwrap_err();
    assert!(err.to_string().starts_with("invalid width:"), "{err}");
    assert_eq!(
        record_count(&topics.requests),
        50,
        "an invalid batch produces nothing"
    );

    let responder = scripted_responder(&topics).await;
    let mut watch = submitter.watch_job("lib-1").await.unwrap();
    submitter
        .submit(GenerationRequest {
            job_id: "lib-1".into(),
            model: "m".into(),
            prompt: "p".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut steps = Vec::new();
    let terminal = watch
        .wait_terminal(Some(Duration::from_secs(60)), |p| steps.push(p.step))
        .await
        .unwrap();
    responder.abort();
    assert_eq!(steps, [1, 2, 3]);
    assert!(matches!(terminal, Some(Terminal::Completed(e)) if e.job_id == "lib-1"));
}

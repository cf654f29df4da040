//! `t2v-tests`: black-box tests that drive t2v-fleet the way users do, against the real Kafka
//! broker and S3 server started by `make up` (endpoints in `.stack/env`).
//!
//! # Layout
//! - this file: finding the stack and the built binaries, isolated topics, reading topics back.
//! - `tests/producer_cli.rs`: the `t2v` CLI and the `Submitter` on the real broker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tiny random-weight two-expert Wan model that `make fixtures` writes in the diffusers
/// layout (under `$T2V_FIXTURES`, default `build/fixtures`). Panics with the fix when missing.
pub fn tiny_model_dir() -> PathBuf {
    let root = std::env::var_os("T2V_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/fixtures"));
    let dir = root.join("wan_pipeline/two_experts");
    assert!(
        dir.join("model_index.json").exists(),
        "fixture {} missing — run `make fixtures`",
        dir.display()
    );
    dir
}

/// Prompt and negative prompt of the tiny-model jobs.
const TINY_PROMPT: &str = "A cat and a dog baking a cake together in a kitchen.";
const TINY_NEGATIVE: &str = "worst quality, low quality, blurred details";

/// A request for the tiny model: 64×64×9 at 8 fps, guidance 4 / 3, seed 42, `steps` steps.
pub fn tiny_model_request(job_id: &str, steps: u32) -> t2v_proto::v1::GenerationRequest {
    t2v_proto::v1::GenerationRequest {
        job_id: job_id.into(),
        model: "wan2.2-t2v-a14b".into(),
        prompt: TINY_PROMPT.into(),
        negative_prompt: TINY_NEGATIVE.into(),
        width: 64,
        height: 64,
        num_frames: 9,
        fps: 8,
        num_inference_steps: steps,
        guidance_scale: Some(4.0),
        guidance_scale_2: Some(3.0),
        seed: Some(42),
        ..Default::default()
    }
}

/// The MP4 that `t2v-worker generate --out` writes for [`tiny_model_request`]'s settings on the
/// CPU: what a worker must produce for the same request.
pub fn tiny_model_generate_mp4(steps: u32) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let cli = Command::new(binary("t2v-worker"))
        .arg("generate")
        .arg("--model")
        .arg(tiny_model_dir())
        .args(["--prompt", TINY_PROMPT, "--negative-prompt", TINY_NEGATIVE])
        .args([
            "--width", "64", "--height", "64", "--frames", "9", "--fps", "8",
        ])
        .args([
            "--steps",
            &steps.to_string(),
            "--guidance",
            "4",
            "--guidance-2",
            "3",
        ])
        .args(["--seed", "42", "--device", "cpu"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("running t2v-worker generate");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    std::fs::read(out.path().join("video.mp4")).unwrap()
}

/// The endpoints `make up` wrote to `.stack/env`. Panics with the fix when the stack is not up.
pub fn stack_env() -> HashMap<String, String> {
    let path = workspace_root().join(".stack/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} not found — start the local stack with `make up`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn brokers() -> String {
    stack_env()["T2V_BROKERS"].clone()
}

/// A binary of this workspace, built by `cargo test --workspace` next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built — run `cargo build --workspace` (or `make test`)",
        path.display()
    );
    path
}

/// A fresh topic name, unique to this test run.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "test.{prefix}.{}",
        ulid::Ulid::generate().to_string().to_lowercase()
    )
}

fn client(brokers: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    cfg
}

/// Creates topics (one partition unless given) on the local broker.
pub async fn create_topics(names: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client(&brokers()).create().unwrap();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

/// Partition count of `topic` as the broker reports it (0 when missing).
pub fn partition_count(topic: &str) -> usize {
    let consumer: BaseConsumer = client(&brokers()).create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10)))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .unwrap_or(0)
}

/// Total records ever written to `topic` (sum of high watermarks).
pub fn record_count(topic: &str) -> i64 {
    let consumer: BaseConsumer = client(&brokers()).create().unwrap();
    (0..partition_count(topic) as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Timeout::After(Duration::from_secs(10)))
                .unwrap()
                .1
        })
        .sum()
}

/// Reads `topic` from the beginning until `expected` records arrived or `timeout` passed.
pub fn read_topic(topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let mut cfg = client(&brokers());
    cfg.set("group.id", "t2v-tests-reader")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg.create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partition_count(topic) as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.detach());
        }
    }
    out
}

/// Header `key` of a record as a string.
pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Worker helpers (tests/tests/worker_*.rs): a `t2v-worker run` process on fresh topics and a
// fresh object-store prefix, its events, and the bucket.

use prost::Message as _;
use std::process::{Child, Command, Stdio};
use t2v_proto::v1::{generation_event::Kind, GenerationEvent};

/// The topics and storage prefix of one worker test.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    pub requests: String,
    pub events: String,
    pub control: String,
    pub dlq: String,
    pub group: String,
    /// Key prefix inside the stack's bucket.
    pub prefix: String,
}

impl WorkerSetup {
    /// Creates fresh topics (`requests_partitions` partitions of requests) and names a prefix.
    pub async fn new(name: &str, requests_partitions: i32) -> Self {
        let setup = Self {
            requests: unique_name(&format!("{name}.requests")),
            events: unique_name(&format!("{name}.events")),
            control: unique_name(&format!("{name}.control")),
            dlq: unique_name(&format!("{name}.dlq")),
            group: unique_name(&format!("{name}.group")),
            prefix: unique_name(name).replace('.', "-"),
        };
        create_topics(&[
            (&setup.requests, requests_partitions),
            (&setup.events, 1),
            (&setup.control, 1),
            (&setup.dlq, 1),
        ])
        .await;
        setup
    }

    /// A `Submitter` for these topics.
    pub fn submitter(&self) -> t2v_producer::Submitter {
        t2v_producer::Submitter::new(t2v_producer::SubmitterConfig {
            brokers: brokers(),
            requests_topic: self.requests.clone(),
            events_topic: self.events.clone(),
            control_topic: self.control.clone(),
            ..Default::default()
        })
        .unwrap()
    }

    /// Starts `t2v-worker run` with the synthetic backend; `extra_env` adds `T2V_*` settings.
    pub fn start_worker(&self, extra_env: &[(&str, &str)]) -> WorkerProcess {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}-{port}.log", self.prefix));
        let mut cmd = Command::new(binary("t2v-worker"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("T2V_KAFKA__BROKERS", brokers())
            .env("T2V_KAFKA__GROUP_ID", &self.group)
            .env("T2V_KAFKA__REQUESTS_TOPIC", &self.requests)
            .env("T2V_KAFKA__EVENTS_TOPIC", &self.events)
            .env("T2V_KAFKA__CONTROL_TOPIC", &self.control)
            .env("T2V_KAFKA__DLQ_TOPIC", &self.dlq)
            .env("T2V_KAFKA__SESSION_TIMEOUT_MS", "10000")
            .env("T2V_KAFKA__STATISTICS_INTERVAL_MS", "1000")
            .env(
                "T2V_STORAGE__URL",
                format!("s3://{}/{}", stack_env()["T2V_S3_BUCKET"], self.prefix),
            )
            .env("T2V_MODEL__BACKEND", "synthetic")
            .env("T2V_HTTP__PORT", port.to_string())
            .env("T2V_HTTP__ADDRESS", "127.0.0.1")
            .env("T2V_SHUTDOWN__DRAIN_DEADLINE_SECS", "10")
            .env("T2V_JOBS__PROGRESS_INTERVAL_MS", "200");
        for (key, value) in stack_env() {
            if key.starts_with("AWS_") {
                cmd.env(key, value);
            }
        }
        for (key, value) in extra_env {
            cmd.env(key, value);
        }
        let stderr = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start t2v-worker");
        WorkerProcess { child, port, log }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running worker; killed when dropped.
pub struct WorkerProcess {
    pub child: Child,
    pub port: u16,
    /// Its stderr (logs).
    pub log: PathBuf,
}

impl WorkerProcess {
    /// The worker's logs so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the worker's HTTP port: (status code, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.http_get("/readyz"), Some((200, _))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "worker not ready within {timeout:?}; logs:\n{}",
            self.logs()
        );
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit up to `timeout`: the exit code, or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decoded events of `topic`, read until `done(events)` holds or `timeout` passes.
pub fn wait_events(
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[GenerationEvent]) -> bool,
) -> Vec<GenerationEvent> {
    let mut cfg = client(&brokers());
    cfg.set("group.id", "t2v-tests-events")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg.create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partition_count(topic) as i32 {
        list.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(
                GenerationEvent::decode(m.payload().unwrap_or_default()).expect("events decode"),
            );
        }
    }
    out
}

/// The offset committed by `group` on `topic`/`partition` (`None` when nothing was committed).
pub fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let mut cfg = client(&brokers());
    cfg.set("group.id", group);
    let consumer: BaseConsumer = cfg.create().unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer
        .committed_offsets(list, Timeout::After(Duration::from_secs(10)))
        .unwrap();
    match committed.elements()[0].offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The stack's bucket through object_store.
pub fn bucket() -> std::sync::Arc<dyn object_store::ObjectStore> {
    let env = stack_env();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&env["T2V_S3_BUCKET"])
        .with_endpoint(&env["T2V_S3_ENDPOINT"])
        .with_region(&env["T2V_S3_REGION"])
        .with_access_key_id(&env["AWS_ACCESS_KEY_ID"])
        .with_secret_access_key(&env["AWS_SECRET_ACCESS_KEY"])
        .with_allow_http(true)
        .build()
        .unwrap();
    std::sync::Arc::new(store)
}

/// Keys under `prefix` in the bucket, sorted.
pub async fn list_keys(prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let path = object_store::path::Path::from(prefix);
    let mut keys: Vec<String> = bucket()
        .list(Some(&path))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The object at `s3://bucket/key` (or a bare key).
pub async fn get_object(uri_or_key: &str) -> Vec<u8> {
    use object_store::ObjectStoreExt;
    let key = uri_or_key
        .strip_prefix("s3://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, k)| k)
        .unwrap_or(uri_or_key);
    let path = object_store::path::Path::from(key);
    bucket()
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

/// Runs `scripts/stack.sh <command>` (`stop-s3`, `start-s3`, …): `Err` with its output when it
/// fails. Fault tests only; the stack is shared by every test binary.
pub fn stack_script(command: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/stack.sh"))
        .arg(command)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("cannot run scripts/stack.sh {command}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/stack.sh {command} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub mod chaos;

/// Polls the offset `group` committed on `topic`/`partition` for up to 10 s until it is
/// `expected`; returns the last value seen (auto-commit of stored offsets runs every second).
pub async fn wait_committed(
    group: &str,
    topic: &str,
    partition: i32,
    expected: i64,
) -> Option<i64> {
    let mut committed = None;
    for _ in 0..50 {
        committed = committed_offset(group, topic, partition);
        if committed == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    committed
}

/// How many of `events` have a kind that `pick` accepts.
pub fn count_kind(events: &[GenerationEvent], pick: fn(&Kind) -> bool) -> usize {
    events
        .iter()
        .filter(|e| e.kind.as_ref().is_some_and(pick))
        .count()
}

/// The stack's S3 server stopped for the lifetime of this value; dropping it starts it
/// again, even when the test fails. Tests that take storage away from the stack must run alone
/// in their test binary (cargo runs test binaries one after another) or hold a lock.
pub struct S3Outage {
    up: bool,
}

impl S3Outage {
    pub fn begin() -> Self {
        // The guard exists before the stop, so a half-done stop is undone too.
        let outage = Self { up: false };
        stack_script("stop-s3").unwrap();
        outage
    }

    /// Starts the S3 server again (once).
    pub fn end(&mut self) -> Result<(), String> {
        if !self.up {
            self.up = true;
            stack_script("start-s3")?;
        }
        Ok(())
    }
}

impl Drop for S3Outage {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            // No panic while unwinding: say it loudly instead.
            eprintln!(
                "COULD NOT RESTART THE S3 SERVER: {e} — run `bash scripts/stack.sh start-s3`"
            );
        }
    }
}

/// Milliseconds since the Unix epoch: the clock of `emitted_at_unix_ms` in events.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits (60 s at most) for the first Started on `events_topic`; returns its
/// `emitted_at_unix_ms`. Panics with `worker`'s logs when none comes.
pub fn wait_started_at(events_topic: &str, worker: &WorkerProcess) -> u64 {
    let started = |e: &GenerationEvent| matches!(e.kind, Some(Kind::Started(_)));
    wait_events(events_topic, Duration::from_secs(60), |e| {
        e.iter().any(started)
    })
    .iter()
    .find(|e| started(e))
    .unwrap_or_else(|| panic!("no Started; logs:\n{}", worker.logs()))
    .emitted_at_unix_ms
}

//! `t2v-worker` under test: a `t2v-worker run` process on fresh topics and a fresh object-store
//! prefix ([`WorkerSetup`], [`WorkerProcess`]), the requests tests send it, and the tiny
//! random-weight Wan model of `make fixtures` with the `t2v-worker generate` output to compare
//! against.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use t2v_proto::v1::GenerationRequest;

use crate::kafka::{create_topics_with, submitter, DLQ_MAX_MESSAGE_BYTES};
use crate::s3::{list_keys, wait_for_keys};
use crate::stack::{
    assert_success, aws_env, binary, brokers, free_port, stack_env, unique_name, workspace_root,
};

/// The model id the tests' requests name.
pub const MODEL: &str = "wan2.2-t2v-a14b";

/// A valid request for the synthetic backend, small and quick to render: 64×64, 5 frames at
/// 8 fps, `steps` steps, no seed (the worker draws one). Change fields with struct update
/// syntax: `GenerationRequest { seed: Some(7), ..synthetic_request("job-1", 4) }`.
pub fn synthetic_request(job_id: &str, steps: u32) -> GenerationRequest {
    GenerationRequest {
        job_id: job_id.into(),
        model: MODEL.into(),
        prompt: "a lighthouse at dusk".into(),
        width: 64,
        height: 64,
        num_frames: 5,
        fps: 8,
        num_inference_steps: steps,
        ..Default::default()
    }
}

/// A model directory that `make fixtures` writes in the diffusers layout under
/// `$T2V_FIXTURES` (default `build/fixtures`): `wan_pipeline/<name>`. Panics with the fix when
/// missing.
pub fn fixture_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("T2V_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/fixtures"));
    let dir = root.join("wan_pipeline").join(name);
    assert!(
        dir.join("model_index.json").exists(),
        "fixture {} missing — run `make fixtures`",
        dir.display()
    );
    dir
}

/// The tiny random-weight two-expert Wan model of `make fixtures`.
pub fn tiny_model_dir() -> PathBuf {
    fixture_dir("two_experts")
}

/// Prompt and negative prompt of the tiny-model jobs.
const TINY_PROMPT: &str = "A cat and a dog baking a cake together in a kitchen.";
const TINY_NEGATIVE: &str = "worst quality, low quality, blurred details";

/// A request for the tiny model: 64×64×9 at 8 fps, guidance 4 / 3, seed 42, `steps` steps.
pub fn tiny_model_request(job_id: &str, steps: u32) -> GenerationRequest {
    GenerationRequest {
        job_id: job_id.into(),
        model: MODEL.into(),
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
    assert_success(&cli);
    std::fs::read(out.path().join("video.mp4")).unwrap()
}

/// Copies the directory tree `from` to `to` (e.g. a model directory a test then changes).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

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
    /// Fresh names for the topics, the group and the prefix; creates nothing (for a test that
    /// creates its topics with settings of its own).
    pub fn named(name: &str) -> Self {
        Self {
            requests: unique_name(&format!("{name}.requests")),
            events: unique_name(&format!("{name}.events")),
            control: unique_name(&format!("{name}.control")),
            dlq: unique_name(&format!("{name}.dlq")),
            group: unique_name(&format!("{name}.group")),
            prefix: unique_name(name).replace('.', "-"),
        }
    }

    /// Creates fresh topics (`requests_partitions` partitions of requests) and names a prefix.
    pub async fn new(name: &str, requests_partitions: i32) -> Self {
        let setup = Self::named(name);
        // The DLQ as production has it: records up to 1 MiB plus headers.
        let dlq_config = [("max.message.bytes", DLQ_MAX_MESSAGE_BYTES)];
        create_topics_with(&[
            (&setup.requests, requests_partitions, &[]),
            (&setup.events, 1, &[]),
            (&setup.control, 1, &[]),
            (&setup.dlq, 1, &dlq_config),
        ])
        .await;
        setup
    }

    /// A `Submitter` for these topics.
    pub fn submitter(&self) -> t2v_producer::Submitter {
        submitter(&self.requests, &self.events, &self.control)
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
            .env("T2V_KAFKA__REQUESTS_TOPICS", &self.requests)
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
        cmd.envs(aws_env()).envs(extra_env.iter().copied());
        let stderr = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start t2v-worker");
        WorkerProcess { child, port, log }
    }

    /// Starts `t2v-worker run` with the Wan backend on the CPU and [`tiny_model_dir`];
    /// `extra_env` adds `T2V_*` settings.
    pub fn start_tiny_model_worker(&self, extra_env: &[(&str, &str)]) -> WorkerProcess {
        let dir = tiny_model_dir().display().to_string();
        let mut env = vec![
            ("T2V_MODEL__BACKEND", "wan"),
            ("T2V_MODEL__DIR", dir.as_str()),
            ("T2V_MODEL__DEVICE", "cpu"),
        ];
        env.extend_from_slice(extra_env);
        self.start_worker(&env)
    }
}

/// A tiny-model job whose worker was SIGTERMed once it had stored a periodic checkpoint
/// ([`WorkerSetup::interrupt_tiny_model_job`]).
pub struct InterruptedJob {
    /// The stopped worker; its logs stay readable.
    pub worker: WorkerProcess,
    /// The job's checkpoint prefix, `<prefix>/<job>/checkpoint`.
    pub checkpoints: String,
    /// The checkpoint keys it left: one, the older ones deleted.
    pub left: Vec<String>,
}

impl WorkerSetup {
    /// Starts a tiny-model worker with `env` (which should checkpoint every step), submits
    /// `job_id` with `steps` steps, and SIGTERMs the worker once a periodic checkpoint is stored;
    /// asserts that it left exactly one checkpoint.
    pub async fn interrupt_tiny_model_job(
        &self,
        env: &[(&str, &str)],
        job_id: &str,
        steps: u32,
    ) -> InterruptedJob {
        let mut worker = self.start_tiny_model_worker(env);
        worker.wait_ready(Duration::from_secs(120));
        self.submitter()
            .submit(tiny_model_request(job_id, steps))
            .await
            .unwrap();
        let checkpoints = format!("{}/{job_id}/checkpoint", self.prefix);
        wait_for_keys(&checkpoints, Duration::from_secs(120), || worker.logs()).await;
        worker.stop(Duration::from_secs(30));
        let left = list_keys(&checkpoints).await;
        assert_eq!(
            left.len(),
            1,
            "one checkpoint left (older ones deleted): {left:?}"
        );
        InterruptedJob {
            worker,
            checkpoints,
            left,
        }
    }
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

    /// SIGTERM, then asserts a clean exit (0) within `timeout`; the message has the logs.
    pub fn stop(&mut self, timeout: Duration) {
        self.terminate();
        assert_eq!(
            self.wait_exit(timeout),
            Some(0),
            "exit 0 within {timeout:?}; logs:\n{}",
            self.logs()
        );
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

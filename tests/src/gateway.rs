//! `t2v-gateway` under test: a fresh PostgreSQL database per test ([`fresh_database`]), signing
//! keys and tokens ([`SigningKey`]), and a `t2v-gateway` process on a [`WorkerSetup`]'s topics
//! ([`GatewayProcess`]) with an HTTP client that speaks to it as a tenant would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::stack::{aws_env, binary, brokers, free_port, stack_env, unique_name};
use crate::worker::WorkerSetup;

/// Issuer and audience the test gateways expect.
pub const ISSUER: &str = "https://id.t2v.test";
pub const AUDIENCE: &str = "t2v-gateway";

/// A new, empty database on the stack's PostgreSQL: its URL. The gateway migrates it at start.
pub fn fresh_database() -> String {
    let admin = stack_env()
        .get("T2V_DATABASE_URL")
        .cloned()
        .expect("T2V_DATABASE_URL missing from .stack/env — run `make up` (it starts PostgreSQL)");
    let name = unique_name("gw").replace(['.', '-'], "_");
    let out = Command::new("psql")
        .arg(&admin)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql runs (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = admin.rsplit_once('/').expect("URL ends with the database");
    format!("{base}/{name}")
}

/// One SQL query on `db_url` through psql: its unaligned, tuple-only output.
pub fn psql(db_url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(db_url)
        .args(["-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An RSA key pair made with openssl: signs tokens, and its public half is a PEM file or a JWK.
pub struct SigningKey {
    pub kid: String,
    private_pem: Vec<u8>,
    pub public_pem_path: PathBuf,
    n_b64: String,
    _dir: tempfile::TempDir,
}

impl SigningKey {
    pub fn generate(kid: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.pem");
        let public = dir.path().join("pub.pem");
        run(Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private));
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public));
        let modulus = run(Command::new("openssl")
            .args(["rsa", "-pubin", "-modulus", "-noout", "-in"])
            .arg(&public));
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Self {
            kid: kid.into(),
            private_pem: std::fs::read(&private).unwrap(),
            public_pem_path: public,
            n_b64: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            _dir: dir,
        }
    }

    /// The public key as a JWK (RS256).
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": self.n_b64, "e": "AQAB"})
    }

    /// An RS256 token with `claims`, naming this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&self.private_pem).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A valid token for `tenant` (one hour), with extra claims merged in.
    pub fn token(&self, tenant: &str, extra: Value) -> String {
        let mut claims = json!({"sub": tenant, "iss": ISSUER, "aud": AUDIENCE, "exp": now_secs() + 3600, "iat": now_secs()});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        self.sign(&claims)
    }
}

pub fn now_secs() -> u64 {
    t2v_contract::now_unix_ms() / 1000
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A running `t2v-gateway`; killed when dropped.
pub struct GatewayProcess {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

impl GatewayProcess {
    /// Starts `t2v-gateway` for `setup`'s topics on `db_url`, trusting `key`'s public PEM;
    /// `extra_env` adds `T2V_GATEWAY__*` settings. Waits until `/readyz` answers 200.
    pub async fn start(
        setup: &WorkerSetup,
        db_url: &str,
        key: &SigningKey,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_with(setup, db_url, Some(&key.public_pem_path), extra_env).await
    }

    /// As [`GatewayProcess::start`], with the key file optional (a test that sets a JWKS URL).
    pub async fn start_with(
        setup: &WorkerSetup,
        db_url: &str,
        key: Option<&Path>,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_on_port(setup, db_url, key, free_port(), extra_env).await
    }

    /// As [`GatewayProcess::start_with`], listening on `port` (a test whose configuration
    /// names the gateway's own address, such as an OIDC redirect URL, picks it first).
    pub async fn start_on_port(
        setup: &WorkerSetup,
        db_url: &str,
        key: Option<&Path>,
        port: u16,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{}-gateway-{port}.log", setup.prefix));
        let mut cmd = Command::new(binary("t2v-gateway"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("T2V_GATEWAY__HTTP__ADDRESS", "127.0.0.1")
            .env("T2V_GATEWAY__HTTP__PORT", port.to_string())
            .env("T2V_GATEWAY__HTTP__SSE_POLL_MS", "100")
            .env("T2V_GATEWAY__DATABASE__URL", db_url)
            .env("T2V_GATEWAY__KAFKA__BROKERS", brokers())
            .env("T2V_GATEWAY__KAFKA__REQUESTS_TOPIC", &setup.requests)
            .env("T2V_GATEWAY__KAFKA__ROUTE_BY_MODEL", "false")
            .env("T2V_GATEWAY__KAFKA__EVENTS_TOPIC", &setup.events)
            .env("T2V_GATEWAY__KAFKA__CONTROL_TOPIC", &setup.control)
            .env("T2V_GATEWAY__KAFKA__WORKERS_GROUP_ID", &setup.group)
            .env("T2V_GATEWAY__AUTH__ISSUER", ISSUER)
            .env("T2V_GATEWAY__AUTH__AUDIENCE", AUDIENCE);
        if let Some(key) = key {
            cmd.env("T2V_GATEWAY__AUTH__PUBLIC_KEY_FILES", key);
        }
        cmd.envs(aws_env()).envs(extra_env.iter().copied());
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start t2v-gateway");
        let gateway = Self {
            child,
            port,
            log,
            http: reqwest::Client::new(),
        };
        gateway.wait_ready(Duration::from_secs(60)).await;
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "gateway not ready within {timeout:?}; logs:\n{}",
            self.logs()
        );
    }

    /// `POST /v1/videos` as `token`, with an optional Idempotency-Key.
    pub async fn submit(&self, token: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .post(self.url("/v1/videos"))
            .bearer_auth(token)
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.unwrap()
    }

    /// [`GatewayProcess::submit`] expecting 202 Accepted: the job resource.
    pub async fn submit_job(&self, token: &str, body: &Value, key: Option<&str>) -> Value {
        let r = self.submit(token, body, key).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// A GET as `token`.
    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/videos/{id}` as `token`, expecting 200: the job resource.
    pub async fn job(&self, token: &str, id: &str) -> Value {
        let r = self.get(token, &format!("/v1/videos/{id}")).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Polls the job until its state is `state` (panics with the logs after `timeout`).
    pub async fn wait_state(&self, token: &str, id: &str, state: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(token, id).await;
            if job["state"] == state {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not {state} within {timeout:?}: {job}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends SIGKILL and waits for the exit (a crash, not a shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A body for `POST /v1/videos`: the synthetic test request's JSON form, `steps` steps.
pub fn video_body(steps: u32) -> Value {
    json!({
        "model": crate::worker::MODEL,
        "prompt": "a lighthouse at dusk",
        "width": 64, "height": 64, "numFrames": 5, "fps": 8,
        "numInferenceSteps": steps,
    })
}

/// Reads a Server-Sent Events stream until `stop` says so or it ends: `(event, data)` pairs.
pub async fn read_sse(
    response: reqwest::Response,
    stop: impl Fn(&str, &Value) -> bool,
    timeout: Duration,
) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => chunk.expect("SSE stream reads"),
            Ok(None) => return events,
            Err(_) => panic!("SSE: no end within {timeout:?}; got {events:?}"),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let value: Value = serde_json::from_str(&data).expect("SSE data is JSON");
            let done = stop(&name, &value);
            events.push((name, value));
            if done {
                return events;
            }
        }
    }
}

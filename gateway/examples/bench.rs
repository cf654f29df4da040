//! `make bench-gateway`: submits per second and latency percentiles of `POST /v1/videos` through
//! a release `t2v-gateway` on the local stack (`make up`), with RS256 JWT verification, the rate
//! limit and the daily-quota check in PostgreSQL, and the publish to Kafka (acks=all) on every
//! request. Fresh topics and a fresh database each run; the load generator runs on the same
//! machine and its CPU is counted against the gateway's.
//!
//! Options: `--seconds N` (default 10), `--connections N` (default 32: past that, on 2 cores, the
//! extra requests only queue — throughput stays ~2.4k/s and p99 grows), `--tenants N` (default 64).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::json;
use sqlx::Connection;

struct Options {
    seconds: u64,
    connections: usize,
    tenants: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: 10,
        connections: 32,
        tenants: 64,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value: u64 = pair.get(1).context("an option needs a value")?.parse()?;
        match pair[0].as_str() {
            "--seconds" => o.seconds = value,
            "--connections" => o.connections = value as usize,
            "--tenants" => o.tenants = value as usize,
            other => {
                anyhow::bail!("unknown option {other} — use --seconds, --connections, --tenants")
            }
        }
    }
    Ok(o)
}

fn stack_env(root: &std::path::Path) -> anyhow::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(root.join(".stack/env"))
        .context(".stack/env missing — run `make up`")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.into(), v.into()))
        .collect())
}

async fn fresh_topics(brokers: &str, suffix: &str) -> anyhow::Result<[String; 3]> {
    let names = ["requests", "events", "control"].map(|t| format!("bench.{t}.{suffix}"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .zip([8, 1, 1])
        .map(|(n, p)| NewTopic::new(n, p, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(names)
}

async fn fresh_database(admin_url: &str, suffix: &str) -> anyhow::Result<String> {
    let name = format!("bench_{suffix}");
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    // The name is ours: "bench_" and a lowercase ULID.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("URL ends with a database")?;
    Ok(format!("{base}/{name}"))
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args(args)
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "openssl {args:?} failed");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = options()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let env = stack_env(&root)?;
    let suffix = ulid::Ulid::generate().to_string().to_lowercase();
    let [requests, events, control] = fresh_topics(&env["T2V_BROKERS"], &suffix).await?;
    let db = fresh_database(&env["T2V_DATABASE_URL"], &suffix).await?;

    let dir = tempfile::tempdir()?;
    let (private, public) = (dir.path().join("key.pem"), dir.path().join("pub.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ])?;
    openssl(&[
        "pkey",
        "-pubout",
        "-in",
        private.to_str().unwrap(),
        "-out",
        public.to_str().unwrap(),
    ])?;
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private)?)?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(|d| d.parent())
        .context("target dir")?
        .join("t2v-gateway");
    let log = std::env::temp_dir().join(format!("bench-gateway-{suffix}.log"));
    let mut gateway = Command::new(&binary)
        .env("RUST_LOG", "warn")
        .env("T2V_GATEWAY__HTTP__ADDRESS", "127.0.0.1")
        .env("T2V_GATEWAY__HTTP__PORT", port.to_string())
        .env("T2V_GATEWAY__DATABASE__URL", &db)
        .env("T2V_GATEWAY__KAFKA__BROKERS", &env["T2V_BROKERS"])
        .env("T2V_GATEWAY__KAFKA__REQUESTS_TOPIC", &requests)
        .env("T2V_GATEWAY__KAFKA__EVENTS_TOPIC", &events)
        .env("T2V_GATEWAY__KAFKA__CONTROL_TOPIC", &control)
        .env(
            "T2V_GATEWAY__KAFKA__WORKERS_GROUP_ID",
            format!("bench.{suffix}"),
        )
        .env("T2V_GATEWAY__AUTH__ISSUER", "bench")
        .env("T2V_GATEWAY__AUTH__AUDIENCE", "bench")
        .env("T2V_GATEWAY__AUTH__PUBLIC_KEY_FILES", &public)
        .env("T2V_GATEWAY__LIMITS__DEFAULT__REQUESTS_PER_SEC", "1000000")
        .env("T2V_GATEWAY__LIMITS__DEFAULT__BURST", "1000000")
        .env("T2V_GATEWAY__LIMITS__DEFAULT__VIDEOS_PER_DAY", "1000000000")
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} — build it with `cargo build --release -p t2v-gateway`",
                binary.display()
            )
        })?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.connections)
        .build()?;
    let base = format!("http://127.0.0.1:{port}");
    let ready = Instant::now();
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "gateway not ready; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exp = t2v_contract::now_unix_ms() / 1000 + 3600;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..opts.tenants)
            .map(|t| {
                let claims = json!({"sub": format!("tenant-{t}"), "iss": "bench", "aud": "bench", "exp": exp});
                jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &signing).unwrap()
            })
            .collect(),
    );
    let body = json!({"model": "wan2.2-t2v-a14b", "prompt": "a lighthouse at dusk", "width": 64, "height": 64, "numFrames": 5, "numInferenceSteps": 4});

    // 2 s of warm-up (connections, pools, JIT-free but cache-warm), then the measured run.
    run_load(
        &http,
        &base,
        &tokens,
        &body,
        opts.connections,
        Duration::from_secs(2),
    )
    .await;
    let (latencies, errors, elapsed) = run_load(
        &http,
        &base,
        &tokens,
        &body,
        opts.connections,
        Duration::from_secs(opts.seconds),
    )
    .await;
    let _ = gateway.kill();
    let _ = gateway.wait();
    report(latencies, errors, elapsed, &opts);
    Ok(())
}

/// `connections` loops posting until `duration` passes: every latency, the error count, the time.
async fn run_load(
    http: &reqwest::Client,
    base: &str,
    tokens: &Arc<Vec<String>>,
    body: &serde_json::Value,
    connections: usize,
    duration: Duration,
) -> (Vec<Duration>, usize, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (http, url, tokens, body) = (
                http.clone(),
                format!("{base}/v1/videos"),
                tokens.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut i) = (Vec::new(), 0usize, c);
                while start.elapsed() < duration {
                    let token = &tokens[i % tokens.len()];
                    i += connections;
                    let sent = Instant::now();
                    match http.post(&url).bearer_auth(token).json(&body).send().await {
                        Ok(r) if r.status() == 202 => latencies.push(sent.elapsed()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    (all, errors, start.elapsed())
}

fn report(mut latencies: Vec<Duration>, errors: usize, elapsed: Duration, opts: &Options) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("bench-gateway: POST /v1/videos, RS256 JWT + rate limit + daily quota (PostgreSQL) + Kafka publish (acks=all) per request");
    println!(
        "  {} connections, {} tenants, {:.1} s measured on {} CPU cores",
        opts.connections,
        opts.tenants,
        elapsed.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  accepted   {:>8}   errors {}", latencies.len(), errors);
    println!(
        "  submits/s  {:>8.0}   (goal >= 2000)",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!("  p50        {:>8.2} ms", ms(pct(0.50)));
    println!("  p99        {:>8.2} ms   (goal <= 50)", ms(pct(0.99)));
    println!(
        "  max        {:>8.2} ms",
        ms(latencies.last().copied().unwrap_or_default())
    );
}

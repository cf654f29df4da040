//! `t2v-gateway`'s webhooks end to end, with a real HTTP receiver on loopback (reachable only
//! because each gateway here allows 127.0.0.0/8 and http through its configuration): the
//! signature verifies with an implementation of the Standard Webhooks algorithm written here;
//! 500s and timeouts are retried; a receiver down for a while gets the event once it is back;
//! redirects are not followed; private addresses are refused at submit; a delivery whose
//! replica is killed mid-flight is delivered by another once its lease ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};
use t2v_tests::gateway::{fresh_database, psql, video_body, GatewayProcess, SigningKey};
use t2v_tests::WorkerSetup;

/// The key of `SECRET` (the Standard Webhooks form: `whsec_` + base64 of the key).
const KEY: &[u8] = b"a test key of thirty-two bytes!!";

fn secret() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    )
}

// ---- the spec's algorithm, written independently of the gateway's ----

fn hex_decode(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    hex_decode(&t2v_contract::sha256_hex(data))
}

/// HMAC-SHA256 as RFC 2104 defines it.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = if key.len() > 64 {
        sha256(key)
    } else {
        key.to_vec()
    };
    block.resize(64, 0);
    let inner: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x36)
        .chain(message.iter().copied())
        .collect();
    let outer: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(sha256(&inner))
        .collect();
    sha256(&outer)
}

/// What a receiver does with a delivery: the signed content is `{id}.{timestamp}.{body}`, the
/// header lists `v1,<base64>` signatures separated by spaces, the timestamp is recent.
fn verifies(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = (t2v_contract::now_unix_ms() / 1000) as i64;
    if (now - ts).abs() > 300 {
        return false;
    }
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(hmac_sha256(KEY, &signed));
    signatures
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[test]
fn the_reference_verifier_accepts_the_specs_example() {
    // The example of the Standard Webhooks specification, so the verifier here is not hollow.
    let key = base64::engine::general_purpose::STANDARD
        .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .unwrap();
    let mac = hmac_sha256(
        &key,
        br#"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}"#,
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(mac),
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

// ---- the receiver ----

/// How the receiver answers one request.
#[derive(Clone)]
enum Answer {
    Status(u16),
    /// Answers 200 after this long (past the gateway's time bound: a timeout).
    Slow(Duration),
    Redirect(String),
}

/// One request the receiver got, and what it answered (0: too late, after the gateway's bound).
#[derive(Clone)]
struct Got {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

/// A webhook receiver: answers from its script, then 200; keeps every request.
#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<VecDeque<Answer>>>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    fn scripted(answers: &[Answer]) -> Self {
        let receiver = Self::default();
        receiver
            .script
            .lock()
            .unwrap()
            .extend(answers.iter().cloned());
        receiver
    }

    async fn answer(self, headers: HeaderMap, body: Bytes) -> Response {
        let answer = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Status(200));
        let answered = match &answer {
            Answer::Status(s) => *s,
            Answer::Slow(_) => 0,
            Answer::Redirect(_) => 307,
        };
        self.got.lock().unwrap().push(Got {
            headers,
            body,
            answered,
        });
        match answer {
            Answer::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
            Answer::Slow(wait) => {
                tokio::time::sleep(wait).await;
                StatusCode::OK.into_response()
            }
            Answer::Redirect(to) => {
                (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response()
            }
        }
    }

    /// Serves on `listener` at `/hook`: the URL.
    fn serve(&self, listener: tokio::net::TcpListener) -> String {
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                receiver.clone().answer(headers, body)
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    async fn start(&self) -> String {
        self.serve(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until a request was answered 2xx; all requests so far.
    async fn wait_delivered(&self, timeout: Duration, logs: impl Fn() -> String) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.got();
            if got.iter().any(|g| (200..300).contains(&g.answered)) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "no delivery within {timeout:?} ({} requests)\n{}",
                got.len(),
                logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---- gateways ----

/// Settings of a gateway whose tenant `acme` signs with `secret()`, reaching loopback over http
/// (allowed explicitly, as a development gateway would), retrying fast.
fn loopback_webhooks(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("T2V_GATEWAY__WEBHOOKS__ALLOW_HTTP", "true".into()),
        ("T2V_GATEWAY__WEBHOOKS__ALLOWED_CIDRS", "127.0.0.0/8".into()),
        (
            "T2V_GATEWAY__WEBHOOKS__TENANTS__ACME__SECRET",
            secret.into(),
        ),
        ("T2V_GATEWAY__WEBHOOKS__POLL_MS", "100".into()),
        ("T2V_GATEWAY__WEBHOOKS__TIMEOUT_MS", "1000".into()),
        ("T2V_GATEWAY__WEBHOOKS__BACKOFF_INITIAL_MS", "200".into()),
        ("T2V_GATEWAY__WEBHOOKS__BACKOFF_MAX_MS", "1000".into()),
    ]
}

async fn start_gateway(
    setup: &WorkerSetup,
    db: &str,
    key: &SigningKey,
    env: &[(&'static str, String)],
) -> GatewayProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    GatewayProcess::start(setup, db, key, &env).await
}

/// Submits a short video with `webhook` (none: the tenant's default): its id.
async fn submit(gateway: &GatewayProcess, token: &str, webhook: Option<&str>) -> String {
    let mut body = video_body(4);
    if let Some(url) = webhook {
        body["webhookUrl"] = json!(url);
    }
    let r = gateway.submit(token, &body, None).await;
    let status = r.status();
    let job: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_string()
}

/// `attempts|last_status|delivered|given up|log entries` of the job's one delivery row.
fn delivery_row(db: &str, job_id: &str) -> String {
    psql(
        db,
        &format!(
            "SELECT attempts, coalesce(last_status, 0), delivered_at IS NOT NULL, \
             given_up_at IS NOT NULL, jsonb_array_length(log) FROM webhook_deliveries \
             WHERE job_id = '{job_id}'"
        ),
    )
}

/// Waits until the job's delivery row satisfies `done`.
async fn wait_row(db: &str, job_id: &str, done: impl Fn(&str) -> bool, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = delivery_row(db, job_id);
        if done(&row) {
            return row;
        }
        assert!(Instant::now() < deadline, "{what}: row {row:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn attempts(row: &str) -> u32 {
    row.split('|').next().unwrap_or("0").parse().unwrap_or(0)
}

// ---- the tests ----

#[tokio::test]
async fn private_addresses_are_refused_at_submit() {
    let setup = WorkerSetup::new("gw-hook-ssrf", 1).await;
    let key = SigningKey::generate("k1");
    // Secure defaults: https only, no range allowed.
    let env = vec![("T2V_GATEWAY__WEBHOOKS__TENANTS__ACME__SECRET", secret())];
    let db = fresh_database();
    let gateway = start_gateway(&setup, &db, &key, &env).await;
    let acme = key.token("acme", json!({}));
    for url in [
        "https://10.0.0.1/hook",
        "https://[::1]/x",
        "http://169.254.169.254/",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.0.0.1]/x",
        "https://[fd00::1]/x",
        "https://[fe80::1]/x",
        "https://0.0.0.0/x",
        "https://localhost/x",
        "http://example.com/hook",
        "not a url",
    ] {
        let mut body = video_body(4);
        body["webhookUrl"] = json!(url);
        let r = gateway.submit(&acme, &body, None).await;
        assert_eq!(r.status(), 400, "{url}");
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["field"], "webhook_url", "{url}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(" — "), "{url}: cause and fix: {message}");
    }
    // The snake_case spelling is the same field.
    let mut body = video_body(4);
    body["webhook_url"] = json!("https://127.0.0.1/x");
    assert_eq!(gateway.submit(&acme, &body, None).await.status(), 400);
    // A tenant without a signing secret cannot ask for a webhook: nothing is ever sent unsigned.
    let globex = key.token("globex", json!({}));
    let mut body = video_body(4);
    body["webhookUrl"] = json!("https://93.184.215.14/hook");
    let r = gateway.submit(&globex, &body, None).await;
    assert_eq!(r.status(), 400);
    let error: Value = r.json().await.unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secret"),
        "{error}"
    );
    assert_eq!(
        psql(&db, "SELECT count(*) FROM jobs"),
        "0",
        "nothing written"
    );

    // A public address passes; the webhook is part of what an Idempotency-Key stands for.
    let with_hook = |url: &str| {
        let mut body = video_body(4);
        body["webhookUrl"] = json!(url);
        body
    };
    let first = gateway
        .submit(
            &acme,
            &with_hook("https://93.184.215.14/hook"),
            Some("order-1"),
        )
        .await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again: Value = gateway
        .submit_job(
            &acme,
            &with_hook("https://93.184.215.14/hook"),
            Some("order-1"),
        )
        .await;
    assert_eq!(again["id"], first["id"], "the same job");
    let other = gateway
        .submit(
            &acme,
            &with_hook("https://93.184.215.14/other"),
            Some("order-1"),
        )
        .await;
    assert_eq!(other.status(), 409, "another webhook is another body");
    assert_eq!(
        psql(&db, "SELECT webhook_url FROM jobs"),
        "https://93.184.215.14/hook"
    );
}

#[tokio::test]
async fn a_signed_event_arrives_after_a_500_and_a_timeout() {
    let setup = WorkerSetup::new("gw-hook-retry", 1).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "50")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let gateway = start_gateway(&setup, &db, &key, &loopback_webhooks(&secret())).await;
    let acme = key.token("acme", json!({}));
    let receiver = Receiver::scripted(&[Answer::Status(500), Answer::Slow(Duration::from_secs(3))]);
    let url = receiver.start().await;

    let id = submit(&gateway, &acme, Some(&url)).await;
    let done = gateway
        .wait_state(&acme, &id, "completed", Duration::from_secs(60))
        .await;
    let got = receiver
        .wait_delivered(Duration::from_secs(60), || gateway.logs())
        .await;
    assert_eq!(
        got.iter().map(|g| g.answered).collect::<Vec<_>>(),
        [500, 0, 200],
        "a 500, a timeout (answered too late), then delivered"
    );
    let ids: Vec<_> = got
        .iter()
        .map(|g| g.headers["webhook-id"].clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id: {ids:?}");
    for g in &got {
        assert!(verifies(&g.headers, &g.body), "signature verifies");
        let mut tampered = g.body.to_vec();
        tampered.push(b' ');
        assert!(!verifies(&g.headers, &tampered), "a changed body does not");
    }
    let sent: Value = serde_json::from_slice(&got[2].body).unwrap();
    for field in ["id", "state", "settings", "timings", "createdAtUnixMs"] {
        assert_eq!(sent[field], done[field], "{field}: the job resource");
    }
    assert_eq!(sent["state"], "completed");
    let row = wait_row(&db, &id, |r| r.starts_with("3|200|t|f|3"), "delivered").await;
    assert_eq!(row, "3|200|t|f|3");
    let metrics = gateway.metrics().await;
    for line in [
        "t2v_gateway_webhook_attempts_total{outcome=\"failed\"} 2",
        "t2v_gateway_webhook_attempts_total{outcome=\"delivered\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_the_event_once_it_is_back() {
    let setup = WorkerSetup::new("gw-hook-down", 1).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "50")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    // Nothing listens on the port yet; it is the tenant's default URL.
    let port = t2v_tests::stack::free_port();
    let mut env = loopback_webhooks(&secret());
    env.push((
        "T2V_GATEWAY__WEBHOOKS__TENANTS__ACME__URL",
        format!("http://127.0.0.1:{port}/hook"),
    ));
    let gateway = start_gateway(&setup, &db, &key, &env).await;
    let acme = key.token("acme", json!({}));

    let id = submit(&gateway, &acme, None).await;
    gateway
        .wait_state(&acme, &id, "completed", Duration::from_secs(60))
        .await;
    let row = wait_row(&db, &id, |r| attempts(r) >= 3, "three refused attempts").await;
    assert!(row.contains("|0|f|f|"), "not delivered, no status: {row}");

    let receiver = Receiver::default();
    receiver.serve(
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap(),
    );
    let got = receiver
        .wait_delivered(Duration::from_secs(30), || gateway.logs())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.got().len(), 1, "once");
    assert!(verifies(&got[0].headers, &got[0].body));
    let sent: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(sent["id"], json!(id));
    let row = delivery_row(&db, &id);
    assert!(row.contains("|200|t|f|"), "delivered: {row}");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let setup = WorkerSetup::new("gw-hook-redirect", 1).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "50")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let mut env = loopback_webhooks(&secret());
    env.push(("T2V_GATEWAY__WEBHOOKS__MAX_ATTEMPTS", "2".into()));
    let gateway = start_gateway(&setup, &db, &key, &env).await;
    let acme = key.token("acme", json!({}));
    let elsewhere = Receiver::default();
    let elsewhere_url = elsewhere.start().await;
    let redirecting = Receiver::scripted(&[
        Answer::Redirect(elsewhere_url.clone()),
        Answer::Redirect(elsewhere_url),
    ]);
    let url = redirecting.start().await;

    let id = submit(&gateway, &acme, Some(&url)).await;
    let row = wait_row(&db, &id, |r| r.contains("|t|"), "given up").await;
    assert_eq!(
        row, "2|307|f|t|2",
        "two attempts, each a 307, then given up"
    );
    assert_eq!(redirecting.got().len(), 2);
    assert!(elsewhere.got().is_empty(), "the redirect was not followed");
}

#[tokio::test]
async fn two_replicas_deliver_each_terminal_event_once() {
    let setup = WorkerSetup::new("gw-hook-replicas", 2).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "50")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let env = loopback_webhooks(&secret());
    let first = start_gateway(&setup, &db, &key, &env).await;
    let second = start_gateway(&setup, &db, &key, &env).await;
    let acme = key.token("acme", json!({}));
    let receiver = Receiver::default();
    let url = receiver.start().await;

    let mut ids = Vec::new();
    for gateway in [&first, &second, &first] {
        ids.push(submit(gateway, &acme, Some(&url)).await);
    }
    // One more, canceled while it runs: Canceled is delivered too.
    let mut long = video_body(200);
    long["webhookUrl"] = json!(url);
    let canceled: Value = second.submit_job(&acme, &long, None).await;
    let canceled = canceled["id"].as_str().unwrap().to_string();
    second
        .wait_state(&acme, &canceled, "running", Duration::from_secs(60))
        .await;
    let r = second
        .http
        .delete(second.url(&format!("/v1/videos/{canceled}")))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // And one whose deadline passed before it started: Failed is delivered too.
    let mut late = video_body(4);
    late["webhookUrl"] = json!(url);
    late["deadlineUnixMs"] = json!("1000");
    let failed: Value = first.submit_job(&acme, &late, None).await;
    let failed = failed["id"].as_str().unwrap().to_string();

    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.got().len() < 5 {
        assert!(Instant::now() < deadline, "5 deliveries: {}", first.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.got();
    assert_eq!(got.len(), 5, "each event once, whichever replica sent it");
    let mut webhook_ids: Vec<_> = got
        .iter()
        .map(|g| g.headers["webhook-id"].clone())
        .collect();
    webhook_ids.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    webhook_ids.dedup();
    assert_eq!(webhook_ids.len(), 5);
    let mut states = std::collections::BTreeMap::<String, String>::new();
    for g in &got {
        assert!(verifies(&g.headers, &g.body));
        let sent: Value = serde_json::from_slice(&g.body).unwrap();
        states.insert(
            sent["id"].as_str().unwrap().into(),
            sent["state"].as_str().unwrap().into(),
        );
    }
    for id in &ids {
        assert_eq!(states[id], "completed", "{states:?}");
    }
    assert_eq!(states[&canceled], "canceled");
    assert_eq!(states[&failed], "failed");
    assert_eq!(
        psql(
            &db,
            "SELECT count(*), sum(attempts) FROM webhook_deliveries WHERE delivered_at IS NOT NULL"
        ),
        "5|5"
    );
}

#[tokio::test]
async fn a_slow_receiver_delays_no_other() {
    let setup = WorkerSetup::new("gw-hook-slow", 1).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "50")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let mut env = loopback_webhooks(&secret());
    // The slow receiver holds its delivery for the whole bound.
    env.retain(|(k, _)| !k.ends_with("TIMEOUT_MS"));
    env.push(("T2V_GATEWAY__WEBHOOKS__TIMEOUT_MS", "30000".into()));
    let gateway = start_gateway(&setup, &db, &key, &env).await;
    let acme = key.token("acme", json!({}));
    let slow = Receiver::scripted(&[Answer::Slow(Duration::from_secs(60))]);
    let slow_url = slow.start().await;
    let fast = Receiver::default();
    let fast_url = fast.start().await;

    let slow_job = submit(&gateway, &acme, Some(&slow_url)).await;
    gateway
        .wait_state(&acme, &slow_job, "completed", Duration::from_secs(60))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while slow.got().is_empty() {
        assert!(Instant::now() < deadline, "the slow receiver is called");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fast_job = submit(&gateway, &acme, Some(&fast_url)).await;
    gateway
        .wait_state(&acme, &fast_job, "completed", Duration::from_secs(60))
        .await;
    let completed = Instant::now();
    fast.wait_delivered(Duration::from_secs(10), || gateway.logs())
        .await;
    assert!(
        completed.elapsed() < Duration::from_secs(5),
        "delivered while the slow receiver still holds its request: {:?}",
        completed.elapsed()
    );
    assert_eq!(
        delivery_row(&db, &slow_job),
        "0|0|f|f|0",
        "the slow delivery is still in flight"
    );
}

#[tokio::test]
async fn a_delivery_whose_replica_dies_mid_flight_is_delivered_by_another_after_the_lease() {
    let setup = WorkerSetup::new("gw-hook-lease", 1).await;
    let _worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "50")]);
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    // An attempt may hang for 5 s, the lease lasts 10 s: well short of the default
    // (2 × 5 s + 30 s), so the redelivery below is the configured lease at work.
    const LEASE: Duration = Duration::from_secs(10);
    let mut env = loopback_webhooks(&secret());
    env.retain(|(k, _)| !k.ends_with("TIMEOUT_MS"));
    env.push(("T2V_GATEWAY__WEBHOOKS__TIMEOUT_MS", "5000".into()));
    env.push((
        "T2V_GATEWAY__WEBHOOKS__LEASE_MS",
        LEASE.as_millis().to_string(),
    ));
    let mut doomed = start_gateway(&setup, &db, &key, &env).await;
    let acme = key.token("acme", json!({}));
    // The first request hangs (past anything this test waits for); later ones get 200.
    let receiver = Receiver::scripted(&[Answer::Slow(Duration::from_secs(600))]);
    let url = receiver.start().await;

    let id = submit(&doomed, &acme, Some(&url)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.got().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first replica never called the receiver\n{}",
            doomed.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claimed = Instant::now();
    // Killed while its request hangs: it never records the attempt.
    doomed.kill();
    assert_eq!(
        delivery_row(&db, &id),
        "0|0|f|f|0",
        "the dead replica recorded nothing"
    );

    let survivor = start_gateway(&setup, &db, &key, &env).await;
    let got = receiver
        .wait_delivered(Duration::from_secs(60), || survivor.logs())
        .await;
    let redelivered = claimed.elapsed();
    assert_eq!(got.len(), 2, "one hung request, one delivery");
    assert!(
        redelivered >= LEASE - Duration::from_millis(500),
        "delivered again only once the lease ended: after {redelivered:?}, lease {LEASE:?}"
    );
    assert!(
        redelivered < LEASE + Duration::from_secs(15),
        "delivered soon after the lease ended: after {redelivered:?}, lease {LEASE:?}"
    );
    assert_eq!(
        got[0].headers["webhook-id"], got[1].headers["webhook-id"],
        "the same event, so the receiver can tell it is a repeat"
    );
    assert!(verifies(&got[1].headers, &got[1].body));
    let sent: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(
        (sent["id"].as_str(), sent["state"].as_str()),
        (Some(id.as_str()), Some("completed"))
    );
    let row = wait_row(&db, &id, |r| r.contains("|t|"), "recorded as delivered").await;
    assert_eq!(row, "1|200|t|f|1", "the survivor's one recorded attempt");
    assert!(
        survivor.logs().contains("webhook delivered"),
        "{}",
        survivor.logs()
    );
}

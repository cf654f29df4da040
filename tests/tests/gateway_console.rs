//! The gateway's web console in a real browser: headless Chromium from Debian driven through
//! chromedriver (WebDriver) against a real gateway, a synthetic worker writing real MP4s, Kafka
//! and PostgreSQL. A token is pasted, a video submitted through the form; its progress bar climbs
//! to 100 %, the finished MP4 plays inline (its duration is frames / fps), and the gallery shows
//! the job with its thumbnail. A bad token and a bad request show the API's own words. The page
//! is saved to build/console/console.png for people to look at. The queue position moves up
//! live and a running job is canceled from its panel; sign-in through an issuer (a fake one
//! here) goes through authorization code + PKCE. A conditioning image picked in the form reaches
//! Kafka byte for byte and is shown by size and SHA-256 only; a file over the 48 KiB inline limit,
//! a file that is not an image, and a file with a URI are refused in the page, sending nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use fantoccini::{Client, ClientBuilder, Locator};
use prost::Message;
use serde_json::{json, Value};
use t2v_contract::sha256_hex;
use t2v_contract::validate::MAX_INLINE_IMAGE_BYTES;
use t2v_proto::v1::{condition_image::Source, GenerationRequest};
use t2v_tests::gateway::{fresh_database, psql, GatewayProcess, SigningKey};
use t2v_tests::{
    free_port, gif, read_topic, record_count, stack_env, workspace_root, WorkerSetup, MODEL,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The video the form asks for: 17 frames at 8 fps, so 2.125 s.
const FRAMES: u32 = 17;
const FPS: u32 = 8;
const STEPS: u32 = 8;

/// `chromedriver` on a free loopback port; killed when dropped.
struct ChromeDriver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ChromeDriver {
    async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} missing — install Debian's chromium and chromium-driver (`make deps`)"
            );
        }
        let port = free_port();
        let log = std::env::temp_dir().join(format!("chromedriver-{port}.log"));
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start chromedriver");
        let driver = Self { child, port, log };
        let status = format!("{}/status", driver.url());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(&status).send().await {
                let body: Value = r.json().await.unwrap_or_default();
                if body["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 30 s; its log:\n{}",
                std::fs::read_to_string(&driver.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A headless Chromium session: no sandbox (tests may run as root), fixed window size,
    /// media allowed to play without a click.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,1700", "--autoplay-policy=no-user-gesture-required",
                ],
            }),
        );
        // Both of rustls' backends are compiled into this workspace: name one (an error only
        // says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .expect("the WebDriver client's TLS setup")
            .capabilities(caps)
            .connect(&self.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session: {e}; chromedriver's log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `expression` in the page until it is truthy: its value. On timeout, panics naming
/// `what`, with the page's error box and the gateway's log.
async fn wait_until(
    browser: &Client,
    gateway: &GatewayProcess,
    what: &str,
    expression: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    let script = format!("return ({expression});");
    loop {
        let value = browser.execute(&script, vec![]).await.unwrap();
        let truthy = !matches!(&value, Value::Null | Value::Bool(false))
            && value != json!(0)
            && value != json!("");
        if truthy {
            return value;
        }
        if Instant::now() >= deadline {
            let error = browser
                .execute(
                    "return document.getElementById('error').textContent",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!(
                "{what}: not within {timeout:?} (last value {value}); the page's error box: {error}\ngateway log:\n{}",
                gateway.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(browser: &Client, id: &str, text: &str) {
    let field = browser.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

async fn click(browser: &Client, id: &str) {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// The page's error box once it shows something.
async fn shown_error(browser: &Client, gateway: &GatewayProcess) -> String {
    let shown = wait_until(
        browser,
        gateway,
        "an error is shown",
        "!document.getElementById('error').hidden && document.getElementById('error').textContent",
        Duration::from_secs(10),
    )
    .await;
    shown.as_str().unwrap().to_string()
}

/// Pastes `token` and waits for the signed-in console.
async fn sign_in(browser: &Client, gateway: &GatewayProcess, token: &str) {
    fill(browser, "token", token).await;
    click(browser, "use-token").await;
    let who = wait_until(
        browser,
        gateway,
        "signed in",
        "!document.getElementById('create').hidden && document.getElementById('who').textContent",
        Duration::from_secs(20),
    )
    .await;
    assert!(who.as_str().unwrap().contains("acme"), "{who}");
    let stored = browser
        .execute(
            "return [sessionStorage.getItem('t2v.token'), localStorage.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!([token, 0]),
        "the token lives in sessionStorage only"
    );
}

/// Loads the console's page and waits until its script has started.
async fn open_console(browser: &Client, gateway: &GatewayProcess) {
    browser.goto(&gateway.url("/")).await.unwrap();
    wait_until(
        browser,
        gateway,
        "the console starts",
        "document.body.dataset.ready === 'true'",
        Duration::from_secs(20),
    )
    .await;
}

/// What the API itself says to `POST /v1/videos` with `body` as `token`: its error message.
async fn api_error(gateway: &GatewayProcess, token: &str, body: &Value) -> String {
    let r = gateway.submit(token, body, None).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let body: Value = r.json().await.unwrap();
    body["error"]["message"].as_str().unwrap().to_string()
}

/// The assets: right types, a strict policy, revalidated caching.
async fn assert_console_assets(gateway: &GatewayProcess) {
    let page = gateway.http.get(gateway.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let script = gateway
        .http
        .get(gateway.url("/console/console.js"))
        .send()
        .await
        .unwrap();
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(script.headers().contains_key("etag"));
}

/// Progress climbs to 100 % over the SSE stream.
async fn assert_progress_climbs_to_100(browser: &Client, gateway: &GatewayProcess) {
    wait_until(
        browser,
        gateway,
        "the progress bar reaches 100 %",
        "document.getElementById('progress').value === 100 \
         && document.getElementById('progress-text').textContent === '100 %' \
         && document.getElementById('job-state').dataset.state === 'completed'",
        Duration::from_secs(90),
    )
    .await;
    let seen: Vec<String> = serde_json::from_value(
        browser
            .execute("return window.seenProgress", vec![])
            .await
            .unwrap(),
    )
    .unwrap();
    let percents: Vec<u32> = seen
        .iter()
        .filter_map(|s| s.trim_end_matches(" %").parse().ok())
        .collect();
    assert!(
        percents.iter().any(|&p| p > 0 && p < 100),
        "progress shown on the way: {seen:?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {seen:?}"
    );
    assert_eq!(percents.last(), Some(&100), "{seen:?}");
}

/// The MP4 plays inline; its duration is frames / fps.
async fn assert_video_plays(browser: &Client, gateway: &GatewayProcess) {
    let playing = wait_until(
        browser,
        gateway,
        "the video plays",
        "(() => { const v = document.getElementById('player'); \
           if (v.readyState >= 2 && v.paused) v.play().catch(() => {}); \
           return !v.hidden && v.readyState >= 2 && !v.paused && v.currentTime > 0 \
             && {readyState: v.readyState, duration: v.duration, src: v.currentSrc, \
                 width: v.videoWidth, height: v.videoHeight}; })()",
        Duration::from_secs(30),
    )
    .await;
    let duration = playing["duration"].as_f64().unwrap();
    let expected = f64::from(FRAMES) / f64::from(FPS);
    assert!(
        (duration - expected).abs() < 0.15,
        "duration {duration} s, expected about {expected} s: {playing}"
    );
    assert!(
        playing["src"].as_str().unwrap().starts_with("blob:"),
        "{playing}"
    );
    assert_eq!(
        (playing["width"].as_u64(), playing["height"].as_u64()),
        (Some(64), Some(64))
    );
}

/// The gallery has the job, completed, with its thumbnail and timings.
async fn assert_gallery_shows(browser: &Client, gateway: &GatewayProcess, id: &str) {
    let item = format!("#gallery li[data-id='{id}'][data-state='completed']");
    let gallery = wait_until(
        browser,
        gateway,
        "the gallery shows the finished job with its thumbnail",
        &format!(
            "(() => {{ const li = document.querySelector(\"{item}\"); \
               const img = li && li.querySelector('img'); \
               return img && img.complete && img.naturalWidth > 0 && li.textContent; }})()"
        ),
        Duration::from_secs(20),
    )
    .await;
    let gallery = gallery.as_str().unwrap();
    assert!(
        gallery.contains("a lighthouse at dusk") && gallery.contains("total"),
        "{gallery}"
    );
}

#[tokio::test]
async fn a_video_submitted_in_the_console_shows_progress_plays_and_joins_the_gallery() {
    let setup = WorkerSetup::new("gw-console", 1).await;
    // Outputs on the local filesystem: the console fetches them through the gateway's
    // authorised /v1/videos/{id}/files/{name} (blob URLs), the path a bearer token must open.
    let outputs = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", outputs.path().display());
    let _worker = setup.start_worker(&[
        ("T2V_MODEL__SYNTHETIC_STEP_MS", "250"),
        ("T2V_STORAGE__URL", &storage),
    ]);
    let key = SigningKey::generate("k1");
    let gateway = GatewayProcess::start(&setup, &fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));

    assert_console_assets(&gateway).await;

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    open_console(&browser, &gateway).await;

    // A token the API refuses: the page says what the API says.
    fill(&browser, "token", "not-a-jwt").await;
    click(&browser, "use-token").await;
    let refused = gateway.get("not-a-jwt", "/v1/usage").await;
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(
        shown_error(&browser, &gateway).await,
        refused["error"]["message"].as_str().unwrap()
    );

    // The real token.
    sign_in(&browser, &gateway, &acme).await;
    // A request the API refuses: its words, as they are.
    fill(&browser, "prompt", "a lighthouse at dusk, waves below").await;
    fill(&browser, "model", MODEL).await;
    browser
        .find(Locator::Id("size"))
        .await
        .unwrap()
        .select_by_value("64x64")
        .await
        .unwrap();
    fill(&browser, "frames", &FRAMES.to_string()).await;
    fill(&browser, "fps", &FPS.to_string()).await;
    fill(&browser, "steps", "100000").await;
    fill(&browser, "seed", "42").await;
    click(&browser, "submit").await;
    let body = json!({
        "model": MODEL, "prompt": "a lighthouse at dusk, waves below", "width": 64, "height": 64,
        "numFrames": FRAMES, "fps": FPS, "numInferenceSteps": 100000, "seed": "42",
    });
    assert_eq!(
        shown_error(&browser, &gateway).await,
        api_error(&gateway, &acme, &body).await
    );

    // Every value the progress text takes, recorded by the page as it changes.
    browser
        .execute(
            "const text = document.getElementById('progress-text');
             window.seenProgress = [];
             new MutationObserver(() => window.seenProgress.push(text.textContent))
               .observe(text, {childList: true, characterData: true, subtree: true});",
            vec![],
        )
        .await
        .unwrap();
    fill(&browser, "steps", &STEPS.to_string()).await;
    click(&browser, "submit").await;
    let id = wait_until(
        &browser,
        &gateway,
        "the job panel shows the new job",
        "!document.getElementById('job').hidden && document.getElementById('job-id').textContent",
        Duration::from_secs(20),
    )
    .await;
    let id = id.as_str().unwrap().to_string();
    assert!(
        browser
            .execute("return document.getElementById('error').hidden", vec![])
            .await
            .unwrap()
            == json!(true),
        "the earlier error is cleared"
    );

    assert_progress_climbs_to_100(&browser, &gateway).await;
    assert_video_plays(&browser, &gateway).await;
    assert_gallery_shows(&browser, &gateway, &id).await;
    // For people to look at.
    let shot = browser.screenshot().await.unwrap();
    let dir = workspace_root().join("build/console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("console.png"), &shot).unwrap();
    assert_eq!(&shot[..8], b"\x89PNG\r\n\x1a\n");
    browser.close().await.unwrap();
}

/// The text of the job panel's state line once `expression` (over `state`, that line's text,
/// and `data`, its job state) holds.
async fn wait_job_state(
    browser: &Client,
    gateway: &GatewayProcess,
    what: &str,
    expression: &str,
) -> String {
    let check = format!(
        "(() => {{ const line = document.getElementById('job-state'); \
           const state = line.textContent, data = line.dataset.state; \
           return ({expression}) && state; }})()"
    );
    let text = wait_until(browser, gateway, what, &check, Duration::from_secs(60)).await;
    text.as_str().unwrap().to_string()
}

async fn show_in_gallery(browser: &Client, gateway: &GatewayProcess, id: &str) {
    let button = format!("#gallery li[data-id='{id}'] button");
    wait_until(
        browser,
        gateway,
        "the job is in the gallery",
        &format!("document.querySelector(\"{button}\") !== null"),
        Duration::from_secs(20),
    )
    .await;
    browser
        .find(Locator::Css(&button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn the_console_shows_the_queue_position_live_and_cancels_a_running_job() {
    let setup = WorkerSetup::new("gw-console-queue", 1).await;
    let key = SigningKey::generate("k1");
    let gateway = GatewayProcess::start(&setup, &fresh_database(), &key, &[]).await;
    let acme = key.token("acme", json!({}));
    // No worker yet: both wait, the second behind the first.
    let mut long = t2v_tests::gateway::video_body(200);
    long["prompt"] = json!("a long one, to be canceled");
    let first = gateway.submit_job(&acme, &long, None).await;
    let second = gateway
        .submit_job(&acme, &t2v_tests::gateway::video_body(4), None)
        .await;
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    assert_eq!(gateway.job(&acme, second).await["queuePosition"], 2);

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    open_console(&browser, &gateway).await;
    sign_in(&browser, &gateway, &acme).await;

    show_in_gallery(&browser, &gateway, second).await;
    // The gallery's row carries no place in line; the panel shows plain "Queued" until the
    // job's event stream delivers its first resource, which does.
    let line = wait_job_state(
        &browser,
        &gateway,
        "second in line",
        "data === 'queued' && state.includes('position')",
    )
    .await;
    assert_eq!(line, "Queued — position 2 in the queue");

    // A worker takes the first job: the stream moves the second one up.
    let worker = setup.start_worker(&[("T2V_MODEL__SYNTHETIC_STEP_MS", "100")]);
    let line = wait_job_state(
        &browser,
        &gateway,
        "first in line",
        "state.includes('position 1')",
    )
    .await;
    assert_eq!(
        line,
        "Queued — position 1 in the queue",
        "{}",
        worker.logs()
    );

    // Cancel the running one from its panel.
    show_in_gallery(&browser, &gateway, first).await;
    wait_job_state(
        &browser,
        &gateway,
        "the first job runs",
        "data === 'running'",
    )
    .await;
    click(&browser, "cancel").await;
    let line = wait_job_state(&browser, &gateway, "canceled", "data === 'canceled'").await;
    assert_eq!(line, "Canceled");
    assert_eq!(gateway.job(&acme, first).await["state"], "canceled");
    wait_until(
        &browser,
        &gateway,
        "the gallery shows it canceled, the cancel button gone",
        &format!(
            "document.querySelector(\"#gallery li[data-id='{first}'][data-state='canceled']\") !== null \
             && document.getElementById('cancel').hidden"
        ),
        Duration::from_secs(20),
    )
    .await;
    browser.close().await.unwrap();
}

/// An identity provider for one sign-in: discovery, an authorization endpoint that signs the
/// user in at once (redirecting back with a code), and a token endpoint that checks the PKCE
/// verifier against the challenge before it issues `token`.
#[derive(Clone, Default)]
struct FakeIssuer {
    /// The challenge and redirect URI of the authorization request.
    asked: Arc<Mutex<Option<(String, String)>>>,
    /// What the token endpoint was sent, and what it answered.
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

/// A token request's form fields and the status it was answered with.
type Exchange = (Vec<(String, String)>, u16);

const CODE: &str = "one-time-code";

fn json_answer(status: u16, body: &Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = axum::http::StatusCode::from_u16(status).unwrap();
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://q.invalid/?{query}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

impl FakeIssuer {
    async fn start(&self, token: impl Fn(&str) -> String + Send + Sync + 'static) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let token = Arc::new(token);
        let discovery = json!({
            "issuer": base, "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
        });
        let (asked, exchanges) = (self.asked.clone(), self.exchanges.clone());
        let issuer = base.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { json_answer(200, &discovery) }),
            )
            .route(
                "/authorize",
                axum::routing::get(move |uri: axum::http::Uri| async move {
                    let q = query_pairs(uri.query().unwrap_or_default());
                    assert_eq!(pair(&q, "response_type"), "code");
                    assert_eq!(pair(&q, "client_id"), "t2v-console");
                    assert_eq!(pair(&q, "code_challenge_method"), "S256");
                    let redirect = pair(&q, "redirect_uri").to_string();
                    *asked.lock().unwrap() =
                        Some((pair(&q, "code_challenge").to_string(), redirect.clone()));
                    let back = format!("{redirect}?code={CODE}&state={}", pair(&q, "state"));
                    (axum::http::StatusCode::SEE_OTHER, [("location", back)])
                }),
            )
            .route(
                "/token",
                axum::routing::post({
                    let asked = self.asked.clone();
                    move |body: String| async move {
                        let form = query_pairs(&body);
                        let (challenge, redirect) = asked.lock().unwrap().clone().unwrap_or_default();
                        let digest = t2v_contract::sha256_hex(pair(&form, "code_verifier").as_bytes());
                        let bytes: Vec<u8> = (0..digest.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&digest[i..i + 2], 16).unwrap())
                            .collect();
                        let verified = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
                            == challenge;
                        let good = verified
                            && pair(&form, "grant_type") == "authorization_code"
                            && pair(&form, "code") == CODE
                            && pair(&form, "client_id") == "t2v-console"
                            && pair(&form, "redirect_uri") == redirect;
                        let status = if good { 200 } else { 400 };
                        exchanges.lock().unwrap().push((form, status));
                        let answer = if good {
                            json!({"access_token": token(&issuer), "token_type": "Bearer"})
                        } else {
                            json!({"error": "invalid_grant", "error_description": "PKCE or code mismatch"})
                        };
                        json_answer(status, &answer)
                    }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        base
    }
}

#[tokio::test]
async fn signing_in_through_the_issuer_uses_pkce_and_lands_signed_in() {
    let setup = WorkerSetup::new("gw-console-oidc", 1).await;
    let idp = FakeIssuer::default();
    let signer = SigningKey::generate("k1");
    let public = signer.public_pem_path.clone();
    let issuer = idp
        .start(move |iss| signer.token("acme", json!({"iss": iss})))
        .await;
    let port = free_port();
    let console = format!("http://127.0.0.1:{port}/");
    let env = [
        ("T2V_GATEWAY__AUTH__ISSUER", issuer.clone()),
        (
            "T2V_GATEWAY__CONSOLE__OIDC__CLIENT_ID",
            "t2v-console".into(),
        ),
        ("T2V_GATEWAY__CONSOLE__OIDC__REDIRECT_URL", console.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gateway =
        GatewayProcess::start_on_port(&setup, &fresh_database(), Some(&public), port, &env).await;

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser.goto(&console).await.unwrap();
    let ready = "document.body.dataset.ready === 'true' && !document.getElementById('oidc').hidden";
    wait_until(
        &browser,
        &gateway,
        "the sign-in button",
        ready,
        Duration::from_secs(20),
    )
    .await;
    click(&browser, "oidc-sign-in").await;
    let who = wait_until(
        &browser,
        &gateway,
        "signed in through the issuer",
        "document.body.dataset.ready === 'true' && !document.getElementById('create').hidden \
         && document.getElementById('who').textContent",
        Duration::from_secs(30),
    )
    .await;
    assert!(who.as_str().unwrap().contains("acme"), "{who}");
    let exchanges = idp.exchanges.lock().unwrap().clone();
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    assert_eq!(
        exchanges[0].1, 200,
        "the verifier matched the challenge: {exchanges:?}"
    );
    let url = browser.current_url().await.unwrap();
    assert_eq!(
        url.as_str(),
        console,
        "the code is gone from the address bar"
    );
    let left = browser
        .execute(
            "return [sessionStorage.getItem('t2v.oidc'), localStorage.length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(left, json!([null, 0]), "the verifier is dropped once used");

    // A forged answer (a state this tab never made) is refused, and nothing is exchanged.
    browser
        .execute("sessionStorage.clear()", vec![])
        .await
        .unwrap();
    browser
        .goto(&format!("{console}?code={CODE}&state=forged-state-0123"))
        .await
        .unwrap();
    let error = shown_error(&browser, &gateway).await;
    assert!(error.contains("does not match"), "{error}");
    assert_eq!(idp.exchanges.lock().unwrap().len(), 1);
    browser.close().await.unwrap();
}

/// A PNG of pseudo-random pixels (xorshift, fixed seed): noise barely compresses, so its size
/// follows its pixel count.
fn noise_png(width: u32, height: u32) -> Vec<u8> {
    let mut state: u32 = 0x2545_f491 ^ (width << 16) ^ height;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state.to_le_bytes()
    };
    let pixels = image::RgbImage::from_fn(width, height, |_, _| {
        let [r, g, b, _] = next();
        image::Rgb([r, g, b])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode a test PNG");
    out
}

/// Writes `bytes` to `dir/name`: the absolute path a file input is given.
fn write_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// Picks `path` in the form's image file input, as a user choosing a file does.
async fn pick_image_file(browser: &Client, path: &str) {
    let input = browser.find(Locator::Id("image-file")).await.unwrap();
    input.send_keys(path).await.unwrap();
}

/// The form, filled for a small synthetic video (no image yet).
async fn fill_video_form(browser: &Client, prompt: &str) {
    fill(browser, "prompt", prompt).await;
    fill(browser, "model", MODEL).await;
    browser
        .find(Locator::Id("size"))
        .await
        .unwrap()
        .select_by_value("64x64")
        .await
        .unwrap();
    fill(browser, "frames", &FRAMES.to_string()).await;
    fill(browser, "fps", &FPS.to_string()).await;
    fill(browser, "steps", &STEPS.to_string()).await;
}

/// Submits the form and returns the error the page shows instead of a job.
async fn submit_refused(browser: &Client, gateway: &GatewayProcess) -> String {
    click(browser, "submit").await;
    shown_error(browser, gateway).await
}

/// Submits the form and waits for the job panel to show a job other than `previous`: its id.
async fn submit_accepted(browser: &Client, gateway: &GatewayProcess, previous: &str) -> String {
    click(browser, "submit").await;
    let id = wait_until(
        browser,
        gateway,
        "the job panel shows the new job",
        &format!(
            "!document.getElementById('job').hidden \
             && document.getElementById('job-id').textContent !== '{previous}' \
             && document.getElementById('job-id').textContent"
        ),
        Duration::from_secs(20),
    )
    .await;
    id.as_str().unwrap().to_string()
}

/// The job panel's image line once it reads `expected`.
async fn assert_job_image_line(browser: &Client, gateway: &GatewayProcess, expected: &str) {
    let check = format!(
        "(() => {{ const line = document.getElementById('job-image'); \
           return !line.hidden && line.textContent === {}; }})()",
        json!(expected)
    );
    wait_until(
        browser,
        gateway,
        &format!("the job panel shows {expected:?}"),
        &check,
        Duration::from_secs(20),
    )
    .await;
}

/// How the console writes an image's size: bytes below 1 KiB, else KiB with one decimal.
fn shown_size(len: usize) -> String {
    if len < 1024 {
        format!("{len} bytes")
    } else {
        format!("{:.1} KiB", len as f64 / 1024.0)
    }
}

/// The requests on the topic, by job id.
fn queued_requests(topic: &str, count: usize) -> Vec<GenerationRequest> {
    use rdkafka::Message as _;
    let records = read_topic(topic, count, Duration::from_secs(20));
    assert_eq!(records.len(), count, "{count} requests on {topic}");
    records
        .iter()
        .map(|r| GenerationRequest::decode(r.payload().unwrap_or_default()).expect("a request"))
        .collect()
}

/// Refusals in the browser: a file over the inline limit, a file that is not an image, and a
/// file with a URI. None of them sends anything.
async fn assert_bad_images_refused_in_the_browser(
    browser: &Client,
    gateway: &GatewayProcess,
    files: &std::path::Path,
    small_png: &str,
) {
    let large = noise_png(160, 120);
    assert!(
        large.len() > MAX_INLINE_IMAGE_BYTES,
        "{} bytes",
        large.len()
    );
    pick_image_file(browser, &write_file(files, "large.png", &large)).await;
    let error = submit_refused(browser, gateway).await;
    for part in [
        "large.png".to_string(),
        format!("({} bytes)", large.len()),
        format!("48 KiB ({MAX_INLINE_IMAGE_BYTES} bytes) limit"),
        "image URI field".to_string(),
    ] {
        assert!(error.contains(&part), "{part:?} missing from: {error}");
    }

    pick_image_file(browser, &write_file(files, "still.gif", &gif())).await;
    let error = submit_refused(browser, gateway).await;
    assert!(
        error.contains("still.gif is not a PNG, JPEG or WebP image"),
        "{error}"
    );

    pick_image_file(browser, small_png).await;
    fill(browser, "image-uri", "s3://inputs/cat.png").await;
    let error = submit_refused(browser, gateway).await;
    assert!(
        error.contains("Both an image file and an image URI") && error.contains("clear"),
        "{error}"
    );
}

#[tokio::test]
async fn an_image_picked_in_the_console_reaches_kafka_and_shows_only_as_its_digest() {
    // No worker: the requests stay on the topic to be read back.
    let setup = WorkerSetup::new("gw-console-image", 1).await;
    let key = SigningKey::generate("k1");
    let db = fresh_database();
    let gateway = GatewayProcess::start(&setup, &db, &key, &[]).await;
    let acme = key.token("acme", json!({}));
    let files = tempfile::tempdir().unwrap();
    let png = noise_png(32, 24);
    assert!(png.len() <= MAX_INLINE_IMAGE_BYTES);
    let small_png = write_file(files.path(), "first-frame.png", &png);

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    open_console(&browser, &gateway).await;
    sign_in(&browser, &gateway, &acme).await;
    let prompt = "a paper boat on a pond";
    fill_video_form(&browser, prompt).await;

    assert_bad_images_refused_in_the_browser(&browser, &gateway, files.path(), &small_png).await;
    assert_eq!(record_count(&setup.requests), 0, "nothing was queued");
    let listed = gateway.get(&acme, "/v1/videos").await.json::<Value>().await;
    assert_eq!(listed.unwrap()["videos"], json!([]), "no job was made");

    // A URI the gateway refuses: its words, as they are.
    click(&browser, "clear-image").await;
    let bad_uri = "https://example.com/cat.png";
    fill(&browser, "image-uri", bad_uri).await;
    let body = json!({
        "model": MODEL, "prompt": prompt, "width": 64, "height": 64,
        "numFrames": FRAMES, "fps": FPS, "numInferenceSteps": STEPS,
        "image": {"uri": bad_uri},
    });
    let refused = submit_refused(&browser, &gateway).await;
    assert_eq!(refused, api_error(&gateway, &acme, &body).await);

    // A good URI: sent as it is, shown as it is.
    let uri = format!(
        "s3://{}/inputs/console-cat.png",
        stack_env()["T2V_S3_BUCKET"]
    );
    fill(&browser, "image-uri", &uri).await;
    let by_uri = submit_accepted(&browser, &gateway, "").await;
    assert_job_image_line(&browser, &gateway, &format!("Image: {uri}")).await;

    // The file, inline: its size and digest are shown, never its bytes.
    click(&browser, "clear-image").await;
    pick_image_file(&browser, &small_png).await;
    let inline = submit_accepted(&browser, &gateway, &by_uri).await;
    let digest = sha256_hex(&png);
    let expected = format!(
        "Image: {}, sha256 {}…",
        shown_size(png.len()),
        &digest[..12]
    );
    assert_job_image_line(&browser, &gateway, &expected).await;
    let error_hidden = browser
        .execute("return document.getElementById('error').hidden", vec![])
        .await
        .unwrap();
    assert_eq!(error_hidden, json!(true), "the earlier error is cleared");

    // Kafka carries exactly the picked file's bytes and the URI as typed.
    let requests = queued_requests(&setup.requests, 2);
    let source = |id: &str| {
        let request = requests.iter().find(|r| r.job_id == id).expect(id);
        request.image.as_ref().and_then(|i| i.source.clone())
    };
    assert_eq!(source(&inline), Some(Source::Inline(png.clone())));
    assert_eq!(source(&by_uri), Some(Source::Uri(uri.clone())));

    // The job resource and its row name the image by digest and size.
    let named = json!({"sha256": digest, "sizeBytes": png.len()});
    assert_eq!(
        gateway.job(&acme, &inline).await["settings"]["image"],
        named
    );
    let row = psql(
        &db,
        &format!("SELECT request->'image' FROM jobs WHERE job_id = '{inline}'"),
    );
    assert_eq!(serde_json::from_str::<Value>(&row).unwrap(), named);

    // The gallery names it too, and nowhere does the page hold the bytes as base64.
    wait_until(
        &browser,
        &gateway,
        "the gallery names the image",
        &format!(
            "(() => {{ const li = document.querySelector(\"#gallery li[data-id='{inline}']\"); \
               return li && li.textContent.includes({}); }})()",
            json!(expected)
        ),
        Duration::from_secs(20),
    )
    .await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(&png);
    let page_holds_bytes = browser
        .execute(
            "const page = document.documentElement.outerHTML + document.body.innerText; \
             return page.includes(arguments[0]) || page.includes(arguments[0].slice(64, 128));",
            vec![json!(encoded)],
        )
        .await
        .unwrap();
    assert_eq!(
        page_holds_bytes,
        json!(false),
        "the page holds the image's base64"
    );
    browser.close().await.unwrap();
}

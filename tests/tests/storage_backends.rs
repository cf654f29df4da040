//! The worker's `Storage` on each cloud backend it supports. Against real servers on loopback:
//! the stack's S3 server (VersityGW) and Azurite (Azure Blob), which this file starts in memory on
//! a free port (`make deps` installs it under `~/.cache/t2v-fleet/tools/bin`). Each gets the
//! same workout: content types, a create-only conflict (what the manifest and attempt markers
//! rely on), get, list, delete, attempt markers, a multipart upload and the URIs that events
//! report. GCS has no usable emulator, so its requests are checked on the wire instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use t2v_contract::sha256_hex;
use t2v_tests::{free_port, stack_env, unique_name};
use t2v_worker::config::JobsConfig;
use t2v_worker::job::attempts;
use t2v_worker::storage::{Storage, StorageError};

/// Azurite's well-known development account and key (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Creates a container in Azurite (object_store has no API for it): one Shared Key-signed
/// `PUT ?restype=container`, in the Node.js that Azurite itself runs on.
const AZURITE_CREATE_CONTAINER_JS: &str = r#"
const crypto = require('crypto');
const http = require('http');
const [port, account, key, container] = process.argv.slice(1);
const date = new Date().toUTCString();
const version = '2021-10-04';
const toSign = ['PUT', '', '', '', '', '', '', '', '', '', '', '',
  `x-ms-date:${date}`, `x-ms-version:${version}`,
  `/${account}/${account}/${container}`, 'restype:container'].join('\n');
const signature = crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(toSign, 'utf8').digest('base64');
http.request({ host: '127.0.0.1', port, method: 'PUT', path: `/${account}/${container}?restype=container`,
  headers: { 'x-ms-date': date, 'x-ms-version': version, 'Content-Length': 0,
             Authorization: `SharedKey ${account}:${signature}` } },
  (res) => { let body = ''; res.on('data', (c) => (body += c));
             res.on('end', () => { console.log(res.statusCode, body); process.exit(res.statusCode === 201 ? 0 : 1); }); })
  .on('error', (e) => { console.error(e.message); process.exit(1); }).end();
"#;

/// An emulator process, killed when dropped.
struct Emulator {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    /// Starts `tool` (from `make deps`) in a fresh directory and waits until `port` accepts
    /// connections.
    fn start(tool: &str, args: &[String], port: u16) -> Self {
        let tools = std::env::var_os("T2V_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                    .join(".cache/t2v-fleet/tools")
            });
        let program = tools.join("bin").join(tool);
        assert!(
            program.exists(),
            "{} not installed — run `make deps` (scripts/deps.sh installs it)",
            program.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("emulator.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&program)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut emulator = Emulator {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = emulator.child.try_wait() {
                panic!("{tool} exited with {status}: {}", emulator.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{tool} not listening on port {port} after 20 s: {}",
                emulator.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        emulator
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn fast_retries() -> JobsConfig {
    JobsConfig {
        retry_times: 2,
        retry_min_delay_ms: 50,
        retry_max_delay_ms: 200,
        ..JobsConfig::default()
    }
}

/// The same workout on every backend. `raw` reads what landed, past `Storage`; `uri_base` is
/// `storage.url` as configured.
async fn exercise(storage: &Storage, raw: &dyn ObjectStore, uri_base: &str, prefix: &str) {
    let job = unique_name("job");
    let job_dir = object_store::path::Path::from(format!("{prefix}/{job}"));

    // Content types are kept.
    let video = storage.job_path(&job, "video.mp4");
    assert_eq!(
        storage.uri(&video),
        format!("{uri_base}/{job}/video.mp4"),
        "event URI"
    );
    storage
        .put(&video, Bytes::from_static(b"mp4 bytes"), "video/mp4", false)
        .await
        .unwrap();
    let stored = raw.get(&video).await.unwrap();
    assert_eq!(
        stored
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("video/mp4"),
        "content type of {video}"
    );
    assert_eq!(
        stored.bytes().await.unwrap(),
        Bytes::from_static(b"mp4 bytes")
    );
    assert_eq!(video.as_ref(), format!("{prefix}/{job}/video.mp4"));

    // Create-only: the first write wins, the second finds it there and changes nothing. Every
    // backend here must refuse it (a server that overwrites would break the manifest commit).
    let manifest = storage.job_path(&job, "manifest.json");
    storage
        .put(
            &manifest,
            Bytes::from_static(b"{\"v\":1}"),
            "application/json",
            true,
        )
        .await
        .unwrap();
    let again = storage
        .put(
            &manifest,
            Bytes::from_static(b"{\"v\":2}"),
            "application/json",
            true,
        )
        .await;
    assert!(
        matches!(&again, Err(StorageError::AlreadyExists(uri)) if uri.ends_with("manifest.json")),
        "{again:?}"
    );
    assert_eq!(
        storage.get(&manifest).await.unwrap(),
        Some(Bytes::from_static(b"{\"v\":1}"))
    );
    assert_eq!(
        raw.get(&manifest)
            .await
            .unwrap()
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("application/json")
    );
    assert_eq!(
        storage
            .get(&storage.job_path(&job, "missing"))
            .await
            .unwrap(),
        None
    );

    // Attempt markers: create-only plus list.
    assert_eq!(attempts::claim(storage, &job, 0, "w1").await.unwrap().0, 0);
    let (n, marker) = attempts::claim(storage, &job, 0, "w2").await.unwrap();
    assert_eq!(n, 1);

    // Objects of 16 MiB and more go up in parts.
    let big: Vec<u8> = (0..17 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let checkpoint = storage.job_path(&job, "checkpoint.bin");
    storage
        .put(
            &checkpoint,
            Bytes::from(big.clone()),
            "application/octet-stream",
            false,
        )
        .await
        .unwrap();
    let back = storage.get(&checkpoint).await.unwrap().unwrap();
    assert_eq!(sha256_hex(&back), sha256_hex(&big), "multipart round trip");

    let mut listed: Vec<String> = storage
        .list(&job_dir)
        .await
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    listed.sort();
    let expected: Vec<String> = [
        "attempts/0/0000",
        "attempts/0/0001",
        "checkpoint.bin",
        "manifest.json",
        "video.mp4",
    ]
    .iter()
    .map(|name| format!("{prefix}/{job}/{name}"))
    .collect();
    assert_eq!(listed, expected);

    // Delete; a missing object is fine.
    storage.delete(&marker).await.unwrap();
    storage.delete(&marker).await.unwrap();
    assert_eq!(storage.get(&marker).await.unwrap(), None);
    assert_eq!(attempts::claim(storage, &job, 0, "w3").await.unwrap().0, 1);
    for key in [&video, &manifest, &checkpoint] {
        storage.delete(key).await.unwrap();
    }
    assert_eq!(storage.list(&job_dir).await.unwrap().len(), 2);
}

#[tokio::test]
async fn azure_blob_on_azurite() {
    let port = free_port();
    let _azurite = Emulator::start(
        "azurite-blob",
        &[
            "--blobHost".into(),
            "127.0.0.1".into(),
            "--blobPort".into(),
            port.to_string(),
            "--inMemoryPersistence".into(),
            "--skipApiVersionCheck".into(),
            "--disableTelemetry".into(),
            "--silent".into(),
        ],
        port,
    );
    let container = "t2v";
    let created = Command::new("node")
        .args(["-e", AZURITE_CREATE_CONTAINER_JS])
        .args([&port.to_string(), AZURITE_ACCOUNT, AZURITE_KEY, container])
        .output()
        .expect("run node (Azurite's runtime)");
    assert!(
        created.status.success(),
        "creating the container: {}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );

    // Path-style endpoint with the account in the path, as for any Azure-compatible server;
    // AZURE_STORAGE_USE_EMULATOR=true does the same for Azurite on its default port.
    let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
    let settings = [
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT),
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY),
        ("AZURE_STORAGE_ENDPOINT", endpoint.as_str()),
        ("AZURE_ALLOW_HTTP", "true"),
    ];
    let raw = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_endpoint(endpoint.clone())
        .with_allow_http(true)
        .with_container_name(container)
        .build()
        .unwrap();
    for scheme in ["az", "azure", "abfs"] {
        let url = format!("{scheme}://{container}/outputs");
        let storage = Storage::from_url_with(&url, &fast_retries(), &settings).unwrap();
        exercise(&storage, &raw, &url, "outputs").await;
    }
}

/// A loopback HTTP server that answers one request per connection with the next of `replies`
/// (status, extra header lines), then 503 to any more, and keeps each request's head,
/// lowercased.
fn scripted_http_server(replies: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for i in 0.. {
            let (status, headers) = replies.get(i).copied().unwrap_or((503, ""));
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            seen.lock().unwrap().push(head);
            let reply = format!(
                "HTTP/1.1 {status} T2V\r\ncontent-length: 0\r\nconnection: close\r\n{headers}\r\n"
            );
            reader.get_mut().write_all(reply.as_bytes()).unwrap();
        }
    });
    (base_url, heads)
}

/// GCS has no emulator here that speaks object_store's dialect (fake-gcs-server 1.56 answers
/// its XML-API `PUT /bucket/object` with 400 "invalid uploadType" and ignores
/// `x-goog-if-generation-match`), so this checks what goes on the wire instead: the
/// create-only precondition, the content type, the credentials, the mapping of 412 to
/// "already exists", and that one attempt of ours is exactly one request (object_store's own
/// retries are off).
#[tokio::test]
async fn google_cloud_storage_requests_on_the_wire() {
    let generation = "etag: \"1\"\r\nx-goog-generation: 1\r\n";
    let (base_url, heads) = scripted_http_server(vec![(200, generation), (412, "")]);
    let settings = [
        ("GOOGLE_BASE_URL", base_url.as_str()),
        ("GOOGLE_BEARER_TOKEN", "t2v-test-token"),
        ("GOOGLE_ALLOW_HTTP", "true"),
    ];
    let url = "gs://t2v-gcs/outputs";
    let storage = Storage::from_url_with(url, &fast_retries(), &settings).unwrap();
    let manifest = storage.job_path("job-1", "manifest.json");
    assert_eq!(
        storage.uri(&manifest),
        "gs://t2v-gcs/outputs/job-1/manifest.json"
    );

    let put = || {
        storage.put(
            &manifest,
            Bytes::from_static(b"{}"),
            "application/json",
            true,
        )
    };
    put().await.unwrap();
    let again = put().await;
    assert!(
        matches!(&again, Err(StorageError::AlreadyExists(uri)) if uri == "gs://t2v-gcs/outputs/job-1/manifest.json"),
        "{again:?}"
    );
    let down = put().await;
    assert!(
        matches!(&down, Err(StorageError::Unavailable { .. })),
        "{down:?}"
    );

    let heads = heads.lock().unwrap().clone();
    assert_eq!(
        heads.len(),
        5,
        "one request per attempt of ours: 1 + 1 + (1 + retry_times 2): {heads:#?}"
    );
    for head in &heads {
        assert!(
            // object_store percent-encodes the whole object name (and the head is lowercased).
            head.starts_with("put /t2v%2dgcs/outputs%2fjob%2d1%2fmanifest%2ejson http/1.1\r\n"),
            "{head}"
        );
        for header in [
            "x-goog-if-generation-match: 0\r\n",
            "content-type: application/json\r\n",
            "authorization: bearer t2v-test-token\r\n",
        ] {
            assert!(head.contains(header), "{header:?} missing from {head}");
        }
    }
}

#[tokio::test]
async fn s3_on_the_stack_server() {
    let env = stack_env();
    let settings = [
        ("AWS_ENDPOINT_URL", env["T2V_S3_ENDPOINT"].as_str()),
        ("AWS_REGION", env["T2V_S3_REGION"].as_str()),
        ("AWS_ACCESS_KEY_ID", env["AWS_ACCESS_KEY_ID"].as_str()),
        (
            "AWS_SECRET_ACCESS_KEY",
            env["AWS_SECRET_ACCESS_KEY"].as_str(),
        ),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let prefix = unique_name("storage-backends");
    let url = format!("s3://{}/{prefix}", env["T2V_S3_BUCKET"]);
    let storage = Storage::from_url_with(&url, &fast_retries(), &settings).unwrap();
    let raw: Arc<dyn ObjectStore> = t2v_tests::bucket();
    exercise(&storage, raw.as_ref(), &url, &prefix).await;
}

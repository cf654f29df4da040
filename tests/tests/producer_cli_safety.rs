//! Safety of the `t2v` CLI against the real broker of `make up`: Kafka properties (credentials)
//! from a file and the environment instead of the command line, stable job ids for
//! `submit --batch` so that a rerun after a partial failure renders nothing twice, and the
//! documented exit codes of `t2v cancel`. Each test works on its own fresh topics.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::message::Message;
use t2v_proto::v1::GenerationRequest;
use t2v_tests::{binary, brokers, create_topics, read_topic, record_count, unique_name};

struct Topics {
    requests: String,
    events: String,
    control: String,
}

async fn fresh_topics() -> Topics {
    let t = Topics {
        requests: unique_name("requests"),
        events: unique_name("events"),
        control: unique_name("control"),
    };
    create_topics(&[(&t.requests, 3), (&t.events, 1), (&t.control, 1)]).await;
    t
}

/// `t2v` with no `T2V_*` variable inherited from the test's environment.
fn bare_t2v() -> Command {
    let mut cmd = Command::new(binary("t2v"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("T2V_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `t2v` on `topics` of the stack's broker.
fn t2v(topics: &Topics) -> Command {
    let mut cmd = bare_t2v();
    cmd.args(["--brokers", &brokers()])
        .args(["--requests-topic", &topics.requests])
        .args(["--events-topic", &topics.events])
        .args(["--control-topic", &topics.control])
        .args(["--connect-timeout-secs", "5"]);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run t2v")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn write(path: &Path, contents: &str) -> String {
    std::fs::write(path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

// --- Kafka properties from a file and the environment ----------------------------------------

#[test]
fn help_documents_the_properties_file_and_the_environment() {
    let out = run(bare_t2v().arg("--help"));
    let help = text(&out.stdout);
    assert!(out.status.success(), "{}", show(&out));
    for needle in [
        "--kafka-properties-file",
        "T2V_KAFKA_PROPERTIES_FILE",
        "T2V_KAFKA_PROPERTY_",
        "sasl.password",
    ] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

#[tokio::test]
async fn a_property_from_the_file_reaches_librdkafka() {
    let topics = fresh_topics().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir.path().join("client.properties"),
        "# the cluster's client settings\n\n  security.protocol = BOGUS_PROTOCOL\r\n# sasl.password=not-read\n",
    );
    for via_env in [false, true] {
        let mut cmd = t2v(&topics);
        if via_env {
            cmd.env("T2V_KAFKA_PROPERTIES_FILE", &file);
        } else {
            cmd.args(["--kafka-properties-file", &file]);
        }
        let out = run(cmd.args(["submit", "a cat"]));
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "via_env={via_env}: {}",
            show(&out)
        );
        assert!(
            stderr.contains("security.protocol"),
            "librdkafka's error names the property: {stderr}"
        );
    }
    let out = run(t2v(&topics).args([
        "--kafka-properties-file",
        &write(&dir.path().join("bad.properties"), "no equals sign here\n"),
        "submit",
        "a cat",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("bad.properties:1"),
        "{}",
        show(&out)
    );
    assert_eq!(record_count(&topics.requests), 0, "nothing may be produced");
}

#[tokio::test]
async fn env_properties_override_the_file_and_flags_override_both() {
    let topics = fresh_topics().await;
    let dir = tempfile::tempdir().unwrap();
    let bogus_file = write(
        &dir.path().join("bogus.properties"),
        "security.protocol=BOGUS_PROTOCOL\n",
    );

    // From the environment alone: it reaches librdkafka.
    let out = run(t2v(&topics)
        .env("T2V_KAFKA_PROPERTY_SECURITY__PROTOCOL", "BOGUS_PROTOCOL")
        .args(["submit", "a cat"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("security.protocol"),
        "{}",
        show(&out)
    );

    // file < env
    let out = run(t2v(&topics)
        .args(["--kafka-properties-file", &bogus_file])
        .env("T2V_KAFKA_PROPERTY_SECURITY__PROTOCOL", "PLAINTEXT")
        .args(["submit", "a cat", "--job-id", "env-wins"]));
    assert!(out.status.success(), "{}", show(&out));

    // env < --kafka-property
    let out = run(t2v(&topics)
        .env("T2V_KAFKA_PROPERTY_SECURITY__PROTOCOL", "BOGUS_PROTOCOL")
        .args(["--kafka-property", "security.protocol=PLAINTEXT"])
        .args(["submit", "a cat", "--job-id", "flag-wins"]));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(record_count(&topics.requests), 2);
}

#[tokio::test]
async fn secret_values_never_reach_the_output() {
    let topics = fresh_topics().await;
    let sentinel = "SENTINEL-pw-7f3a";
    // An unknown property whose name says it holds a secret: librdkafka refuses it, and the
    // message names the key but not the value.
    let out = run(t2v(&topics)
        .env("T2V_KAFKA_PROPERTY_SASL__PASSWORDX", sentinel)
        .args(["submit", "a cat"]));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(all.contains("sasl.passwordx"), "{}", show(&out));
    assert!(!all.contains(sentinel), "the secret leaked: {all}");

    // A real secret on a client that then fails to connect, with every log on.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir.path().join("sasl.properties"),
        &format!("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\nsasl.password={sentinel}\n"),
    );
    let out = run(t2v(&topics)
        .env("T2V_LOG", "trace")
        .args(["--connect-timeout-secs", "3"])
        .args(["--kafka-properties-file", &file, "submit", "a cat"]));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(!all.contains(sentinel), "the secret leaked: {all}");
}

// --- submit --batch: stable job ids, and what was sent after a failure ------------------------

/// Job id of every record on `topic`, by prompt (and first-seen order of ids per prompt).
fn ids_by_prompt(topic: &str, expected: usize) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in read_topic(topic, expected, Duration::from_secs(20)) {
        let req = GenerationRequest::decode(record.payload().unwrap()).unwrap();
        assert_eq!(record.key(), Some(req.job_id.as_bytes()));
        out.entry(req.prompt).or_default().push(req.job_id);
    }
    out
}

fn submitted_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("submitted "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_batch_submitted_twice_gets_the_same_job_ids() {
    let topics = fresh_topics().await;
    let dir = tempfile::tempdir().unwrap();
    let batch = write(
        &dir.path().join("batch.jsonl"),
        "{\"model\":\"m\",\"prompt\":\"one\"}\n{\"model\":\"m\",\"prompt\":\"two\",\"jobId\":\"given-2\"}\n\n{\"model\":\"m\",\"prompt\":\"one\"}\n",
    );
    let first = run(t2v(&topics).args(["submit", "--batch", &batch]));
    assert!(first.status.success(), "{}", show(&first));
    let second = run(t2v(&topics).args(["submit", "--batch", &batch]));
    assert!(second.status.success(), "{}", show(&second));

    let (a, b) = (
        submitted_ids(&text(&first.stdout)),
        submitted_ids(&text(&second.stdout)),
    );
    assert_eq!(a.len(), 3, "{}", show(&first));
    assert_eq!(a, b, "a rerun must submit the same job ids");
    assert_eq!(a[1], "given-2");
    assert_ne!(a[0], a[2], "the same text on another line is another job");

    let ids = ids_by_prompt(&topics.requests, 6);
    assert_eq!(ids["two"], ["given-2", "given-2"]);
    let mut one = ids["one"].clone();
    one.sort();
    one.dedup();
    assert_eq!(
        one.len(),
        2,
        "two distinct ids for the two `one` lines: {ids:?}"
    );
    for id in &one {
        t2v_contract::validate::job_id(id).unwrap();
    }
}

#[tokio::test]
async fn a_partial_batch_failure_lists_what_was_sent_and_a_rerun_reuses_the_ids() {
    let topics = fresh_topics().await;
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(3000);
    let batch = write(
        &dir.path().join("batch.jsonl"),
        &format!(
            "{{\"model\":\"m\",\"prompt\":\"small one\"}}\n{{\"model\":\"m\",\"prompt\":\"{big}\"}}\n{{\"model\":\"m\",\"prompt\":\"small two\"}}\n"
        ),
    );
    // Records above 1000 bytes are refused by the client: the middle line fails, the others go.
    let out = run(t2v(&topics).args([
        "--kafka-property",
        "message.max.bytes=1000",
        "submit",
        "--batch",
        &batch,
    ]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{}", show(&out));
    let sent = submitted_ids(&stdout);
    assert_eq!(
        sent.len(),
        2,
        "the two acknowledged lines are listed: {}",
        show(&out)
    );
    assert!(
        stderr.contains("batch.jsonl:2"),
        "the failed line is named: {stderr}"
    );
    assert!(
        stderr.contains("1 of 3"),
        "a summary of what failed: {stderr}"
    );
    assert_eq!(record_count(&topics.requests), 2);

    // Rerun without the limit: every line goes, the first two under the ids they had.
    let rerun = run(t2v(&topics).args(["submit", "--batch", &batch]));
    assert!(rerun.status.success(), "{}", show(&rerun));
    let all = submitted_ids(&text(&rerun.stdout));
    assert_eq!(all.len(), 3, "{}", show(&rerun));
    assert_eq!(vec![all[0].clone(), all[2].clone()], sent);
    let ids = ids_by_prompt(&topics.requests, 5);
    assert_eq!(ids["small one"], [sent[0].clone(), sent[0].clone()]);
    assert_eq!(ids["small two"], [sent[1].clone(), sent[1].clone()]);
}

// --- t2v cancel exit codes -----------------------------------------------------------------

#[test]
fn cancel_help_documents_every_exit_code() {
    let out = run(bare_t2v().args(["cancel", "--help"]));
    let help = text(&out.stdout);
    assert!(out.status.success(), "{}", show(&out));
    assert!(help.contains("Exit codes:"), "{help}");
    for code in ["0", "1", "2", "3"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code}  "))),
            "cancel --help should document exit code {code}:\n{help}"
        );
    }
}

#[tokio::test]
async fn cancel_with_an_invalid_job_id_exits_2_and_sends_nothing() {
    let topics = fresh_topics().await;
    let out = run(t2v(&topics).args(["cancel", "bad id!"]));
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("invalid job_id:"),
        "{}",
        show(&out)
    );
    assert_eq!(record_count(&topics.control), 0);
}

#[test]
fn cancel_with_unreachable_brokers_exits_3_within_the_connect_timeout() {
    let start = Instant::now();
    let out = run(bare_t2v().args([
        "--brokers",
        "127.0.0.1:1",
        "--connect-timeout-secs",
        "3",
        "cancel",
        "job-1",
    ]));
    let elapsed = start.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("cannot reach Kafka brokers at 127.0.0.1:1"),
        "{}",
        show(&out)
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
}

#[tokio::test]
async fn cancel_on_a_missing_control_topic_exits_3_and_says_how_to_create_it() {
    let mut topics = fresh_topics().await;
    topics.control = unique_name("absent");
    let out = run(t2v(&topics).args(["cancel", "job-1"]));
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("t2v topics apply"),
        "{}",
        show(&out)
    );
}

#[tokio::test]
async fn cancel_that_lands_exits_0() {
    let topics = fresh_topics().await;
    let out = run(t2v(&topics).args(["cancel", "job-1"]));
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(record_count(&topics.control), 1);
}

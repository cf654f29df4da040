//! `t2v-worker doctor`: one line per finding, exit 0 when the deployment is sound, non-zero
//! with the cause and the fix when a topic is missing or the object store is unreachable; and
//! `t2v-worker run` stopping at start when one of doctor's host checks fails.

use std::process::{Command, Output};
use std::time::Duration;

use t2v_tests::{aws_env, binary, brokers, create_topics, stack_env, unique_name, WorkerSetup};

fn doctor(requests: &str, others: &str, storage_url: &str, aws_endpoint: &str) -> Output {
    Command::new(binary("t2v-worker"))
        .arg("doctor")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--brokers", &brokers(), "--requests-topics", requests])
        .args([
            "--events-topic",
            others,
            "--control-topic",
            others,
            "--dlq-topic",
            others,
        ])
        .args(["--storage-url", storage_url])
        .env("T2V_MODEL__BACKEND", "synthetic")
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("T2V_JOBS__RETRY_TIMES", "1")
        .output()
        .expect("run t2v-worker doctor")
}

#[tokio::test]
async fn doctor_passes_on_the_stack_and_names_the_fix_for_each_failure() {
    let present = unique_name("doctor.present");
    create_topics(&[(&present, 1)]).await;
    let env = stack_env();
    let bucket_url = format!(
        "s3://{}/{}",
        env["T2V_S3_BUCKET"],
        unique_name("doctor").replace('.', "-")
    );

    let ok = doctor(&present, &present, &bucket_url, &env["T2V_S3_ENDPOINT"]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The stack's VersityGW refuses a create-only write over an existing object, so doctor
    // reports create-only as enforced (a store that overwrites would get a WARN line); every
    // line is ok.
    let create_only: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("create-only write"))
        .collect();
    assert_eq!(create_only.len(), 1, "{stdout}");
    assert!(create_only[0].starts_with("ok   storage"), "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("ok ")), "{stdout}");
    assert!(
        stdout.contains("writable, readable and deletable"),
        "{stdout}"
    );

    let missing = unique_name("doctor.missing");
    let bad = doctor(&missing, &present, &bucket_url, "http://127.0.0.1:9");
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    let fails: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 2, "{stdout}");
    assert!(
        fails[0].contains(&missing) && fails[0].contains("t2v topics apply"),
        "{stdout}"
    );
    assert!(fails[1].starts_with("FAIL storage"), "{stdout}");
    assert!(stdout.contains("ok   shm"), "{stdout}");
}

/// `t2v-worker run` makes the host checks before it loads anything: an incomplete model
/// directory stops it at once (exit 1) with the doctor line that names the fix, instead of a
/// worker that joins the group and fails every job.
#[tokio::test]
async fn run_stops_at_start_when_a_host_check_fails() {
    let setup = WorkerSetup::new("startup", 1).await;
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().display().to_string();
    let mut worker = setup.start_worker(&[
        ("T2V_MODEL__BACKEND", "wan"),
        ("T2V_MODEL__DEVICE", "cpu"),
        ("T2V_MODEL__DIR", &dir),
    ]);
    let code = worker.wait_exit(Duration::from_secs(30));
    let logs = worker.logs();
    assert_eq!(code, Some(1), "logs:\n{logs}");
    assert!(logs.contains("start-up checks failed"), "logs:\n{logs}");
    assert!(
        logs.contains("FAIL model") && logs.contains(&dir) && logs.contains("model_index.json"),
        "the model line names the directory and what is missing; logs:\n{logs}"
    );
    assert!(
        !logs.contains("partitions assigned") && !logs.contains("model loaded"),
        "nothing loaded or joined; logs:\n{logs}"
    );
}

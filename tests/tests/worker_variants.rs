//! Model variants (`[model] preset`, `[[model.loras]]`) on the tiny random-weight two-expert
//! model of `make fixtures`, through the real binaries and the local stack (`make up`):
//! `t2v-worker doctor` checks each configured LoRA against its expert of the base, one line
//! each, and `t2v-worker run` configured with a LoRA file that is not there stops at start with
//! one line naming the file and the fix.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use t2v_tests::{
    aws_env, binary, brokers, create_topics, stack_env, tiny_model_dir, unique_name, WorkerSetup,
};

/// A safetensors file of f32 tensors `(name, shape)`, every value 0.01 (written by hand: this
/// crate has no libtorch).
fn write_safetensors(path: &Path, tensors: &[(&str, [usize; 2])]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = shape[0] * shape[1] * 4;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header.as_bytes());
    for _ in 0..offset / 4 {
        file.extend(0.01f32.to_le_bytes());
    }
    std::fs::write(path, file).unwrap();
}

/// A rank-2 PEFT LoRA on the first self-attention query of a model `dim` wide (the tiny
/// model's is 32).
fn lora(dir: &Path, name: &str, dim: usize) -> String {
    let path = dir.join(name);
    write_safetensors(
        &path,
        &[
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", [2, dim]),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", [dim, 2]),
        ],
    );
    path.display().to_string()
}

/// `t2v-worker doctor` for the tiny model on the CPU with `loras` (`T2V_MODEL__LORAS`).
async fn doctor(loras: &str) -> Output {
    let topic = unique_name("variants.doctor");
    create_topics(&[(&topic, 1)]).await;
    let env = stack_env();
    let storage = format!(
        "s3://{}/{}",
        env["T2V_S3_BUCKET"],
        unique_name("variants").replace('.', "-")
    );
    Command::new(binary("t2v-worker"))
        .arg("doctor")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["--brokers", &brokers(), "--requests-topics", &topic])
        .args(["--events-topic", &topic, "--control-topic", &topic])
        .args(["--dlq-topic", &topic, "--storage-url", &storage])
        .envs(aws_env())
        .env("AWS_ENDPOINT_URL", &env["T2V_S3_ENDPOINT"])
        .env("T2V_MODEL__BACKEND", "wan")
        .env("T2V_MODEL__DEVICE", "cpu")
        .env("T2V_MODEL__DIR", tiny_model_dir())
        .env("T2V_MODEL__NAME", "tiny-lightning")
        .env("T2V_MODEL__PRESET", "lightning")
        .env("T2V_MODEL__LORAS", loras)
        .output()
        .expect("run t2v-worker doctor")
}

fn lora_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" lora "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn doctor_checks_each_lora_against_its_expert_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let fits = lora(tmp.path(), "fits.safetensors", 32);
    let ok = doctor(&format!("both:1.0:{fits}")).await;
    let lines = lora_lines(&ok);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(lines.len(), 2, "one line per expert: {lines:#?}");
    assert!(lines[0].starts_with("ok") && lines[0].contains("fits transformer "));
    assert!(lines[1].starts_with("ok") && lines[1].contains("fits transformer_2"));

    let other_base = lora(tmp.path(), "other.safetensors", 48);
    let missing = tmp.path().join("missing.safetensors").display().to_string();
    let bad = doctor(&format!(
        "transformer_2:1.0:{other_base},transformer:1.0:{missing}"
    ))
    .await;
    let lines = lora_lines(&bad);
    assert!(!bad.status.success(), "{lines:#?}");
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("FAIL")
            && lines[0].contains(&other_base)
            && lines[0].contains("another base model"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("FAIL")
            && lines[1].contains(&missing)
            && lines[1].contains("[[model.loras]]"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn a_missing_lora_file_stops_the_start_in_one_line() {
    let setup = WorkerSetup::new("variants", 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp
        .path()
        .join("high_noise.safetensors")
        .display()
        .to_string();
    let loras = format!("transformer:1.0:{missing}");
    let mut worker = setup.start_tiny_model_worker(&[
        ("T2V_MODEL__NAME", "tiny-lightning"),
        ("T2V_MODEL__PRESET", "lightning"),
        ("T2V_MODEL__LORAS", &loras),
    ]);
    let code = worker.wait_exit(Duration::from_secs(60));
    let logs = worker.logs();
    assert_eq!(code, Some(1), "logs:\n{logs}");
    let failed: Vec<&str> = logs.lines().filter(|l| l.contains("FAIL lora")).collect();
    assert!(!failed.is_empty(), "logs:\n{logs}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains(&missing) && l.contains("[[model.loras]]")),
        "the line names the file and the fix; logs:\n{logs}"
    );
    assert!(
        !logs.contains("model loaded") && !logs.contains("partitions assigned"),
        "nothing loaded or joined; logs:\n{logs}"
    );
}

/// `t2v-worker run` serving the `lightning` variant of the tiny model with a LoRA on both
/// experts: a request naming the variant with zero steps and unset guidance runs the preset's
/// 4 steps, and its revision is the variant's, not the base directory's.
#[tokio::test]
async fn a_variant_worker_renders_a_job_with_the_presets_steps() {
    use t2v_tests::{completed, started_events, tiny_model_request, wait_job_end};

    let setup = WorkerSetup::new("variants.render", 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let loras = format!("both:1.0:{}", lora(tmp.path(), "fits.safetensors", 32));
    let worker = setup.start_tiny_model_worker(&[
        ("T2V_MODEL__NAME", "tiny-lightning"),
        ("T2V_MODEL__PRESET", "lightning"),
        ("T2V_MODEL__LORAS", &loras),
    ]);
    let request = t2v_proto::v1::GenerationRequest {
        model: "tiny-lightning".into(),
        guidance_scale: None,
        guidance_scale_2: None,
        ..tiny_model_request("variant-1", 0)
    };
    setup.submitter().submit(request).await.unwrap();
    let events = wait_job_end(&setup.events, Duration::from_secs(120));
    let done = completed(&events);
    assert_eq!(
        done.len(),
        1,
        "events: {events:?}\nlogs:\n{}",
        worker.logs()
    );
    let (_, started) = *started_events(&events).first().expect("a Started event");
    assert_eq!(started.total_steps, 4, "the preset's steps: {started:?}");
    assert_eq!(started.model, "tiny-lightning");
    let c = done[0].1;
    assert_eq!(c.model_revision, started.model_revision);
    assert_eq!(c.model_revision.len(), 12);
}

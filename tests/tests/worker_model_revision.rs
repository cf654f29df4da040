//! The model revision covers the weights, not only the configs (docs/design.md "Delivery
//! semantics"): `backend = wan` on a copy of the tiny two-expert model of `make fixtures`,
//! through the real broker and S3 server. A worker checkpointing every step is SIGTERMed mid-job
//! and leaves a checkpoint; then one tensor of the transformer's safetensors is rewritten (same
//! dtype and shape, configs untouched — a "fine-tune" of the same architecture). A second worker
//! on the changed directory serves another revision: it must not resume from the old checkpoint
//! (`Started.resumed_from_step == 0`) and stamps the new revision on Completed.
//!
//! Fixtures: `$T2V_FIXTURES` (default `<workspace>/build/fixtures`); the stack: `make up`.

use std::path::Path;
use std::time::Duration;

use t2v_tests::{
    completed, copy_dir, list_keys, started_events, tiny_model_dir, wait_events, wait_taken_over,
    WorkerSetup,
};

/// Enough steps that the SIGTERM lands mid-run on the tiny model.
const STEPS: u32 = 200;

/// The weights file whose tensor the test rewrites.
const WEIGHTS: &str = "transformer/diffusion_pytorch_model.safetensors";

/// Rewrites the data of the largest f32 tensor of the safetensors file at `path` in place: every
/// value halved and negated. Same header, same size, same shapes: only the weights differ.
fn retrain_one_tensor(path: &Path) -> String {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (name, start, end) = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, t)| *name != "__metadata__" && t["dtype"] == "F32")
        .map(|(name, t)| {
            let offsets = t["data_offsets"].as_array().unwrap();
            let start = offsets[0].as_u64().unwrap() as usize;
            let end = offsets[1].as_u64().unwrap() as usize;
            (name.clone(), start, end)
        })
        .max_by_key(|(_, start, end)| end - start)
        .expect("an f32 tensor");
    let data = &mut bytes[8 + n + start..8 + n + end];
    for value in data.chunks_exact_mut(4) {
        let v = f32::from_le_bytes(value.try_into().unwrap());
        value.copy_from_slice(&(-0.5 * v).to_le_bytes());
    }
    let size = std::fs::metadata(path).unwrap().len();
    std::fs::write(path, &bytes).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), size, "same size");
    name
}

#[tokio::test]
async fn changed_weights_with_the_same_configs_do_not_resume_old_checkpoints() {
    let model = tempfile::tempdir().unwrap();
    copy_dir(&tiny_model_dir(), model.path());
    let dir = model.path().display().to_string();

    let setup = WorkerSetup::new("revision", 1).await;
    let env = [
        ("T2V_CHECKPOINT__EVERY_STEPS", "1"),
        ("T2V_MODEL__DIR", dir.as_str()),
    ];

    // 1. SIGTERM once a periodic checkpoint is stored.
    let first = setup
        .interrupt_tiny_model_job(&env, "revision-1", STEPS)
        .await;
    let first_events = wait_events(&setup.events, Duration::from_secs(30), |e| {
        !started_events(e).is_empty()
    });
    let first_revision = started_events(&first_events)
        .first()
        .map(|(_, s)| s.model_revision.clone())
        .expect("the first worker's Started");

    // 2. A "fine-tune": one tensor re-trained, configs untouched.
    let tensor = retrain_one_tensor(&model.path().join(WEIGHTS));
    eprintln!(
        "rewrote {WEIGHTS} tensor {tensor}; checkpoint left: {:?}",
        first.left
    );

    // 3. A worker on the changed weights starts over and stamps another revision.
    let second = setup.start_tiny_model_worker(&env);
    let (events, starts) = wait_taken_over(&setup.events, &second, Duration::from_secs(240));
    assert_eq!(
        starts[1].1,
        0,
        "the changed weights must not resume the old checkpoint; logs:\n{}",
        second.logs()
    );
    let second_started_revision = started_events(&events)
        .into_iter()
        .find(|(e, _)| e.worker_id == starts[1].0)
        .map(|(_, s)| s.model_revision.clone())
        .unwrap();
    let completed = completed(&events)
        .first()
        .map(|(_, c)| (*c).clone())
        .unwrap_or_else(|| panic!("Completed; events {events:?}\n{}", second.logs()));
    assert_ne!(
        completed.model_revision, first_revision,
        "the new weights have a new revision"
    );
    assert_eq!(completed.model_revision, second_started_revision);
    assert!(
        list_keys(&first.checkpoints).await.is_empty(),
        "checkpoints deleted after the manifest"
    );
}

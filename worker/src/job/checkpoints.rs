//! A job's checkpoints. What one is: a t2v-pipeline checkpoint file whose metadata names the
//! request digest, conditioning image (SHA-256 of its bytes), model revision and precision (weights dtype, device class) it belongs to ([`checkpoint_metadata`], read back by
//! [`check_checkpoint`]). Where they go: `<job>/checkpoint/step-NNNNNN.safetensors`, found and checked
//! before Started, asked for by [`JobHooks`] on the generator thread (every `[checkpoint]
//! every_steps` / `every_secs`, and at a stop), uploaded one at a time by a writer task (the older
//! one deleted once the newer is stored), and deleted when the job ends for good.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use super::failure::Stop;
use super::lifecycle::Job;
use t2v_pipeline::checkpoint;

use super::manifest;
use crate::generate::{JobSpec, ModelInfo, StepHooks, StepInfo};

/// A saved denoising state: a checkpoint file (t2v-pipeline's format) covering `step` steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u32,
    pub bytes: Vec<u8>,
}

/// Metadata keys of the checkpoints the worker writes.
pub mod meta {
    pub const REQUEST_DIGEST: &str = "request_digest";
    pub const MODEL: &str = "model";
    pub const MODEL_REVISION: &str = "model_revision";
    /// The weights dtype of the run that wrote it: `bf16`, `f32`, ….
    pub const DTYPE: &str = "dtype";
    /// The device class of the run that wrote it: `cuda`, `cpu`, ….
    pub const DEVICE: &str = "device";
    pub const STEP: &str = "step";
    pub const TOTAL_STEPS: &str = "total_steps";
    /// SHA-256 of the conditioning image's bytes the run read (absent: no image). The request
    /// digest names a URI; this names what was behind it, so a resumed attempt that finds
    /// another object there starts over instead of mixing two images.
    pub const IMAGE_SHA256: &str = "image_sha256";
}

/// The metadata a checkpoint of `job` after `step` steps carries.
pub fn checkpoint_metadata(
    job: &JobSpec,
    model: &ModelInfo,
    step: u32,
) -> BTreeMap<String, String> {
    let (dtype, device) = model.dtype_and_device();
    let image = job
        .image
        .as_ref()
        .map(|image| (meta::IMAGE_SHA256.to_string(), image.sha256.clone()));
    let mut metadata = BTreeMap::from([
        (meta::REQUEST_DIGEST.into(), job.digest()),
        (meta::MODEL.into(), model.name.clone()),
        (meta::MODEL_REVISION.into(), model.revision.clone()),
        (meta::DTYPE.into(), dtype.to_string()),
        (meta::DEVICE.into(), device.to_string()),
        (meta::STEP.into(), step.to_string()),
        (meta::TOTAL_STEPS.into(), job.steps.to_string()),
    ]);
    metadata.extend(image);
    metadata
}

/// Why a stored checkpoint cannot resume a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointRejected {
    #[error("it does not read as a checkpoint: {0}")]
    Unreadable(String),
    #[error("it was written for a different request (request digest differs)")]
    OtherRequest,
    #[error("it was written with another conditioning image (sha256 {written:?}, this attempt read {read:?})")]
    OtherImage { written: String, read: String },
    #[error("it was written by model revision {written:?}, this worker serves {serving:?}")]
    OtherRevision { written: String, serving: String },
    #[error("it was written by a {written} run (dtype/device), this worker runs {serving}")]
    OtherPrecision { written: String, serving: String },
    #[error("it records no dtype/device (written before checkpoints carried their precision), so it cannot be trusted to match this worker's {serving}")]
    UnknownPrecision { serving: String },
    #[error("step {step:?} is not inside the schedule of {total} steps")]
    StepOutsideSchedule { step: String, total: u32 },
}

/// The step a stored checkpoint resumes `job` at, or why it cannot (another request digest,
/// model revision or precision — dtype and device class, a missing one included —, a step
/// outside the schedule, an unreadable or truncated file).
pub fn check_checkpoint(
    bytes: &[u8],
    job: &JobSpec,
    model: &ModelInfo,
) -> Result<u32, CheckpointRejected> {
    let metadata = checkpoint::read_metadata(bytes)
        .map_err(|e| CheckpointRejected::Unreadable(e.to_string()))?;
    let get = |key: &str| metadata.get(key).map(String::as_str).unwrap_or_default();
    if get(meta::REQUEST_DIGEST) != job.digest() {
        return Err(CheckpointRejected::OtherRequest);
    }
    let read = job.image.as_ref().map_or("", |image| image.sha256.as_str());
    if get(meta::IMAGE_SHA256) != read {
        return Err(CheckpointRejected::OtherImage {
            written: get(meta::IMAGE_SHA256).to_string(),
            read: read.to_string(),
        });
    }
    if get(meta::MODEL_REVISION) != model.revision {
        return Err(CheckpointRejected::OtherRevision {
            written: get(meta::MODEL_REVISION).to_string(),
            serving: model.revision.clone(),
        });
    }
    let (dtype, device) = (metadata.get(meta::DTYPE), metadata.get(meta::DEVICE));
    let (Some(dtype), Some(device)) = (dtype, device) else {
        return Err(CheckpointRejected::UnknownPrecision {
            serving: model.precision.clone(),
        });
    };
    let written = format!("{dtype}/{device}");
    if written != model.precision {
        return Err(CheckpointRejected::OtherPrecision {
            written,
            serving: model.precision.clone(),
        });
    }
    match get(meta::STEP).parse::<u32>() {
        Ok(step) if step > 0 && step < job.steps => Ok(step),
        _ => Err(CheckpointRejected::StepOutsideSchedule {
            step: get(meta::STEP).to_string(),
            total: job.steps,
        }),
    }
}

/// Content type of checkpoint objects (safetensors).
const CHECKPOINT_CONTENT_TYPE: &str = "application/octet-stream";

/// Folder of a job's checkpoints, under its outputs.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// The file name (in [`CHECKPOINT_DIR`]) of the checkpoint after `step` steps.
pub fn checkpoint_name(step: u32) -> String {
    format!("step-{step:06}.safetensors")
}

/// The step of a checkpoint object's name (`None`: not a checkpoint).
fn checkpoint_step(key: &Path) -> Option<u32> {
    key.filename()?
        .strip_prefix("step-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// When to checkpoint, decided on the generator thread at every step boundary.
pub(super) struct JobHooks<F> {
    pub(super) on_step: F,
    pub(super) every_steps: u32,
    pub(super) every_secs: u64,
    pub(super) last_step: u32,
    pub(super) last_at: Instant,
    pub(super) in_flight: Arc<AtomicBool>,
    pub(super) shutdown: CancellationToken,
    pub(super) writer: tokio::sync::mpsc::UnboundedSender<Checkpoint>,
}

impl<F: FnMut(StepInfo) -> ControlFlow<()>> StepHooks for JobHooks<F> {
    fn on_step(&mut self, step: StepInfo) -> ControlFlow<()> {
        (self.on_step)(step)
    }

    fn checkpoint_due(&mut self, step: StepInfo, stopping: bool) -> bool {
        if step.step >= step.total {
            return false;
        }
        if stopping {
            // A shutdown or hand-over stop resumes elsewhere; a cancel never resumes.
            return self.shutdown.is_cancelled();
        }
        if self.in_flight.load(Ordering::Acquire) {
            return false;
        }
        let by_steps =
            self.every_steps > 0 && step.step.saturating_sub(self.last_step) >= self.every_steps;
        let by_time =
            self.every_secs > 0 && self.last_at.elapsed() >= Duration::from_secs(self.every_secs);
        by_steps || by_time
    }

    fn on_checkpoint(&mut self, checkpoint: Checkpoint) {
        self.last_step = checkpoint.step;
        self.last_at = Instant::now();
        self.in_flight.store(true, Ordering::Release);
        let _ = self.writer.send(checkpoint);
    }
}

impl Job<'_> {
    /// The newest stored checkpoint that resumes `spec`; others are ignored with a warning.
    pub(super) async fn find_checkpoint(&self, spec: &JobSpec) -> Result<Option<Checkpoint>, Stop> {
        let storage = &self.ctx.storage;
        let dir = storage.job_path(&spec.job_id, CHECKPOINT_DIR);
        let mut found: Vec<(u32, Path)> = storage
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|key| Some((checkpoint_step(&key)?, key)))
            .collect();
        found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
        for (_, key) in found {
            let Some(bytes) = storage.get(&key).await? else {
                continue;
            };
            match check_checkpoint(&bytes, spec, &self.ctx.model) {
                Ok(step) => {
                    tracing::info!(%key, step, bytes = bytes.len(), "resuming from a checkpoint");
                    return Ok(Some(Checkpoint {
                        step,
                        bytes: bytes.to_vec(),
                    }));
                }
                Err(why) => tracing::warn!(%key, why = %why, "ignoring a checkpoint"),
            }
        }
        Ok(None)
    }

    /// Deletes the job's checkpoints (after the manifest, or a cancel); failures only warn.
    pub(super) async fn delete_checkpoints(&self) {
        let storage = &self.ctx.storage;
        let dir = storage.job_path(&self.req.job_id, CHECKPOINT_DIR);
        let keys = match storage.list(&dir).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the checkpoints to delete them");
                return;
            }
        };
        for key in keys {
            if let Err(e) = storage.delete(&key).await {
                tracing::warn!(%key, error = %e, "cannot delete a checkpoint");
            }
        }
    }

    /// Uploads the checkpoints the generator hands over, in order, each within
    /// `max_write_secs`; after one is stored the previous one (or the one resumed from) is
    /// deleted. Ends when the generator dropped its hooks.
    pub(super) async fn write_checkpoints(
        &self,
        mut checkpoints: tokio::sync::mpsc::UnboundedReceiver<Checkpoint>,
        in_flight: Arc<AtomicBool>,
        resumed_from: Option<u32>,
    ) {
        let storage = &self.ctx.storage;
        let limit = Duration::from_secs(self.ctx.cfg.checkpoint.max_write_secs.max(1));
        let job_id = &self.req.job_id;
        let manifest_key = storage.job_path(job_id, manifest::FILE_NAME);
        let mut previous = resumed_from.map(|step| {
            storage
                .job_path(job_id, CHECKPOINT_DIR)
                .join(checkpoint_name(step).as_str())
        });
        while let Some(checkpoint) = checkpoints.recv().await {
            let key = storage
                .job_path(job_id, CHECKPOINT_DIR)
                .join(checkpoint_name(checkpoint.step).as_str());
            let size = checkpoint.bytes.len();
            let started = Instant::now();
            let put = storage.put(
                &key,
                Bytes::from(checkpoint.bytes),
                CHECKPOINT_CONTENT_TYPE,
                false,
            );
            match tokio::time::timeout(limit, put).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        %key,
                        step = checkpoint.step,
                        bytes = size,
                        write_s = started.elapsed().as_secs_f64(),
                        "checkpoint stored"
                    );
                    if let Some(old) = previous.replace(key.clone()).filter(|old| *old != key) {
                        if let Err(e) = storage.delete(&old).await {
                            tracing::warn!(key = %old, error = %e, "cannot delete an older checkpoint");
                        }
                    }
                    // A stop checkpoint of a handed-over job can land after the new owner
                    // committed and cleaned up (a slow write during a storage hiccup): the
                    // manifest is then there, and this checkpoint would be left behind.
                    if self.stop.is_cancelled()
                        && matches!(storage.get(&manifest_key).await, Ok(Some(_)))
                    {
                        tracing::info!(%key, "the job was committed elsewhere meanwhile: deleting this checkpoint");
                        if let Err(e) = storage.delete(&key).await {
                            tracing::warn!(%key, error = %e, "cannot delete the checkpoint");
                        }
                    }
                }
                Ok(Err(e)) => tracing::warn!(%key, error = %e, "checkpoint not stored"),
                Err(_) => tracing::warn!(
                    %key,
                    limit_s = limit.as_secs(),
                    "checkpoint not stored within checkpoint.max_write_secs"
                ),
            }
            in_flight.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::tests::spec;

    fn model(precision: &str) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            revision: "0123456789ab".into(),
            precision: precision.into(),
            defaults: t2v_contract::defaults::WAN22_T2V_A14B,
            kind: crate::generate::ModelKind::default(),
            size_multiple: 16,
        }
    }

    #[test]
    fn a_checkpoint_resumes_only_with_the_image_bytes_it_was_written_with() {
        let with_image = |sha256: &str| JobSpec {
            steps: 6,
            ..crate::generate::tests::spec_with_image(3, "s3://b/cat.png", sha256)
        };
        let info = model("f32/cpu");
        let first = with_image("aaaa");
        let metadata = checkpoint_metadata(&first, &info, 2);
        assert_eq!(metadata[meta::IMAGE_SHA256], "aaaa");
        let bytes = checkpoint::metadata_only(&metadata);
        assert_eq!(check_checkpoint(&bytes, &first, &info), Ok(2));
        // Same URI, another object behind it: the run starts over.
        let why = check_checkpoint(&bytes, &with_image("bbbb"), &info).unwrap_err();
        assert!(
            matches!(why, CheckpointRejected::OtherImage { .. }),
            "{why}"
        );
        // A text-to-video checkpoint carries no image digest.
        let text = JobSpec {
            steps: 6,
            ..spec(3)
        };
        let bytes = checkpoint::metadata_only(&checkpoint_metadata(&text, &info, 2));
        assert_eq!(check_checkpoint(&bytes, &text, &info), Ok(2));
    }

    #[test]
    fn checkpoints_carry_their_precision_and_resume_only_the_same() {
        let job = JobSpec {
            steps: 6,
            ..spec(3)
        };
        let bf16 = model("bf16/cuda");
        let metadata = checkpoint_metadata(&job, &bf16, 2);
        assert_eq!(metadata[meta::DTYPE], "bf16");
        assert_eq!(metadata[meta::DEVICE], "cuda");
        let bytes = checkpoint::metadata_only(&metadata);
        assert_eq!(check_checkpoint(&bytes, &job, &bf16), Ok(2));

        let why = check_checkpoint(&bytes, &job, &model("f32/cpu")).unwrap_err();
        assert_eq!(
            why,
            CheckpointRejected::OtherPrecision {
                written: "bf16/cuda".into(),
                serving: "f32/cpu".into()
            }
        );
        assert!(
            why.to_string().contains("bf16/cuda") && why.to_string().contains("f32/cpu"),
            "{why}"
        );
        // Another dtype on the same device class, or the same dtype on another, is refused too.
        assert!(check_checkpoint(&bytes, &job, &model("f32/cuda")).is_err());
        assert!(check_checkpoint(&bytes, &job, &model("bf16/cpu")).is_err());
        // And the other way round: an f32 CPU checkpoint resumes only an f32 CPU run.
        let f32_cpu = checkpoint::metadata_only(&checkpoint_metadata(&job, &model("f32/cpu"), 4));
        assert_eq!(check_checkpoint(&f32_cpu, &job, &model("f32/cpu")), Ok(4));
        assert!(check_checkpoint(&f32_cpu, &job, &bf16).is_err());
    }

    #[test]
    fn checkpoints_without_a_precision_are_refused() {
        let job = JobSpec {
            steps: 6,
            ..spec(3)
        };
        let serving = model("f32/cpu");
        for missing in [
            &[meta::DTYPE, meta::DEVICE][..],
            &[meta::DTYPE],
            &[meta::DEVICE],
        ] {
            let mut metadata = checkpoint_metadata(&job, &serving, 2);
            for key in missing {
                metadata.remove(*key);
            }
            let why = check_checkpoint(&checkpoint::metadata_only(&metadata), &job, &serving)
                .unwrap_err();
            assert_eq!(
                why,
                CheckpointRejected::UnknownPrecision {
                    serving: "f32/cpu".into()
                },
                "{missing:?}"
            );
            assert!(why.to_string().contains("no dtype/device"), "{why}");
        }
    }

    #[test]
    fn checkpoint_names_sort_and_parse() {
        assert_eq!(checkpoint_name(7), "step-000007.safetensors");
        let key = Path::from("out/job-1")
            .join("checkpoint")
            .join("step-000012.safetensors");
        assert_eq!(checkpoint_step(&key), Some(12));
        assert_eq!(
            checkpoint_step(&Path::from("out/job-1/checkpoint/tmp")),
            None
        );
    }

    #[test]
    fn checkpoints_are_due_by_steps_time_and_shutdown_one_in_flight() {
        let (writer, _rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let mut hooks = JobHooks {
            on_step: |_: StepInfo| ControlFlow::Continue(()),
            every_steps: 2,
            every_secs: 0,
            last_step: 0,
            last_at: Instant::now(),
            in_flight: Arc::new(AtomicBool::new(false)),
            shutdown: shutdown.clone(),
            writer,
        };
        let at = |step| StepInfo {
            step,
            total: 10,
            timestep: 0.0,
        };
        assert!(!hooks.checkpoint_due(at(1), false));
        assert!(hooks.checkpoint_due(at(2), false));
        hooks.on_checkpoint(Checkpoint {
            step: 2,
            bytes: Vec::new(),
        });
        assert!(!hooks.checkpoint_due(at(4), false), "one write in flight");
        hooks.in_flight.store(false, Ordering::Release);
        assert!(hooks.checkpoint_due(at(4), false));
        assert!(
            !hooks.checkpoint_due(at(10), false),
            "the last step needs none"
        );
        assert!(
            !hooks.checkpoint_due(at(3), true),
            "a cancel does not resume"
        );
        shutdown.cancel();
        hooks.in_flight.store(true, Ordering::Release);
        assert!(
            hooks.checkpoint_due(at(3), true),
            "a shutdown stop always saves"
        );
        hooks.every_steps = 0;
        hooks.every_secs = 1;
        hooks.in_flight.store(false, Ordering::Release);
        hooks.last_at = Instant::now() - Duration::from_secs(2);
        assert!(hooks.checkpoint_due(at(5), false), "by time");
    }
}

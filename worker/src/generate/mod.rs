//! Video generation behind one trait (docs/design.md "Where each concern lives").
//!
//! - [`VideoGenerator`]: what a backend implements, with [`JobSpec`] (a request after the model's
//!   defaults filled its zero fields), [`StepHooks`] (the job's side of every step boundary) and
//!   [`Generated`] frames.
//! - [`thread`]: [`GeneratorThread`] owns the generator on a dedicated OS thread (the GPU never
//!   blocks the runtime); the async side sends it one job at a time.
//! - [`synthetic`]: [`SyntheticGenerator`], the deterministic TEST/DEMO backend without a model.
//! - [`wan`]: [`WanGenerator`], the Wan2.2 pipeline (t2v-pipeline) behind the trait.
//! - [`preflight`]: a job's estimated peak memory against the limit, and the settings that fit.
//! - [`variant`]: the served variant — LoRAs per expert and the sampling preset a request's zero
//!   fields take.
//!
//! What a checkpoint is and when it resumes a job lives in [`crate::job::checkpoints`].

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

pub use t2v_contract::ModelDefaults;
use t2v_proto::v1::Sampler;

use crate::job::checkpoints::Checkpoint;

pub mod faults;
pub mod preflight;
pub mod synthetic;
pub mod thread;
pub mod variant;
pub mod wan;

pub use synthetic::SyntheticGenerator;
pub use t2v_pipeline::image::ConditionImage;
pub use thread::{GeneratorThread, Loaded};
pub use wan::WanGenerator;

/// The settings of one job after the model's defaults filled the zero fields.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub job_id: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: u32,
    pub steps: u32,
    pub guidance_scale: Option<f32>,
    pub guidance_scale_2: Option<f32>,
    pub shift: Option<f32>,
    pub sampler: Sampler,
    pub seed: u64,
    /// The request's step-cache threshold (unset = the variant's setting).
    pub cache_threshold: Option<f32>,
    /// What the request's image is, as the request digest names it: the URI, or
    /// `inline sha256:<hex>`; `None` = text-to-video.
    pub image_reference: Option<String>,
    /// The width and height come from the image (the request left both unset): the digest
    /// says so instead of naming the numbers, which depend on the image's pixels.
    pub size_from_image: bool,
    /// The conditioning image the worker read and decoded before any GPU work.
    pub image: Option<JobImage>,
}

/// A request's conditioning image after the worker read and decoded it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobImage {
    /// SHA-256 (hex) of the encoded bytes the worker read: a checkpoint resumes only with the
    /// same bytes, whatever happened to the object behind a URI in between.
    pub sha256: String,
    /// Size of the encoded bytes.
    pub size_bytes: u64,
    /// The decoded pixels (shared, not copied, between the job and the generator thread).
    pub decoded: Arc<ConditionImage>,
}

impl JobSpec {
    /// SHA-256 (hex) of every setting that shapes the video — all fields but the job id. A
    /// checkpoint resumes only a request with the same digest.
    pub fn digest(&self) -> String {
        let bits = |v: Option<f32>| v.map(f32::to_bits);
        let mut canonical = serde_json::json!({
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "width": self.width,
            "height": self.height,
            "num_frames": self.num_frames,
            "fps": self.fps,
            "steps": self.steps,
            "guidance_scale": bits(self.guidance_scale),
            "guidance_scale_2": bits(self.guidance_scale_2),
            "shift": bits(self.shift),
            "sampler": self.sampler.as_str_name(),
            "seed": self.seed,
        });
        if let Some(threshold) = self.cache_threshold {
            canonical["cache_threshold"] = threshold.to_bits().into();
        }
        if let Some(reference) = &self.image_reference {
            canonical["image"] = reference.clone().into();
        }
        if self.size_from_image {
            canonical["width"] = "from image".into();
            canonical["height"] = "from image".into();
        }
        t2v_contract::sha256_hex(canonical.to_string().as_bytes())
    }
}

/// The job's side of a generation's step boundaries.
pub trait StepHooks {
    /// After every step; `Break` stops the run at this boundary.
    fn on_step(&mut self, step: StepInfo) -> ControlFlow<()>;

    /// Asked after `on_step`: whether to save the state here (`stopping`: the run ends at this
    /// boundary because `on_step` said `Break`).
    fn checkpoint_due(&mut self, _step: StepInfo, _stopping: bool) -> bool {
        false
    }

    /// The state after `checkpoint.step` steps, when `checkpoint_due` asked for it.
    fn on_checkpoint(&mut self, _checkpoint: Checkpoint) {}
}

/// A plain step callback: progress and stop, no checkpoints.
impl<F: FnMut(StepInfo) -> ControlFlow<()>> StepHooks for F {
    fn on_step(&mut self, step: StepInfo) -> ControlFlow<()> {
        self(step)
    }
}

/// The model a generator serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Model id requests name, e.g. `wan2.2-t2v-a14b`.
    pub name: String,
    /// Revision of the weights, e.g. a checkpoint digest (the Wan backend:
    /// [`wan::model_revision`], covering configs and weights).
    pub revision: String,
    /// The weights dtype and device class the generator computes in, `<dtype>/<device>`:
    /// `bf16/cuda`, `f32/cpu`, … ([`wan::precision`]). A checkpoint resumes only a run of the
    /// same precision.
    pub precision: String,
    pub defaults: ModelDefaults,
    /// Which requests the model takes: with an image, without one, or both.
    pub kind: ModelKind,
    /// The frame sides a request's image picks are multiples of this (the VAE's spatial stride
    /// × the transformer's patch size: 16 for A14B, 32 for TI2V-5B).
    pub size_multiple: u32,
}

/// What a model generates from: text, an image, or either. A request that does not fit is
/// refused before any work.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Text-to-video only (Wan2.2 T2V-A14B): a request with an image is refused.
    TextToVideo,
    /// Image-to-video only (Wan2.2 I2V-A14B): a request without an image is refused.
    ImageToVideo,
    /// Text-to-video and text+image-to-video (Wan2.2 TI2V-5B): both are taken.
    #[default]
    TextImageToVideo,
}

impl ModelKind {
    /// Whether a request with (or without) an image fits, else the one-line reason.
    pub fn check_request(self, model: &str, has_image: bool) -> Result<(), String> {
        match (self, has_image) {
            (Self::TextToVideo, true) => Err(format!(
                "model {model:?} is text-to-video only and takes no image — leave image unset, or submit to an image-to-video model"
            )),
            (Self::ImageToVideo, false) => Err(format!(
                "model {model:?} is image-to-video only and needs an image — set image (t2v submit --image PATH|URI)"
            )),
            _ => Ok(()),
        }
    }
}

impl ModelInfo {
    /// The dtype and device class of [`Self::precision`] (`("bf16", "cuda")`); without a `/`
    /// the whole string is the dtype and the device is empty.
    pub fn dtype_and_device(&self) -> (&str, &str) {
        self.precision
            .split_once('/')
            .unwrap_or((&self.precision, ""))
    }
}

/// One denoising step finished.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Steps done so far, 1..=total.
    pub step: u32,
    pub total: u32,
    /// Diffusion timestep of the step just finished.
    pub timestep: f32,
}

/// Decoded video: `count` frames of `width`×`height` RGB24, frame after frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    pub width: u32,
    pub height: u32,
    pub count: u32,
    pub rgb: Vec<u8>,
}

impl Frames {
    pub fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// Frame `i` (0-based) as RGB24 bytes.
    pub fn frame(&self, i: u32) -> &[u8] {
        let len = self.frame_len();
        &self.rgb[i as usize * len..(i as usize + 1) * len]
    }
}

/// Where the pipeline's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineTimings {
    pub text_encode: Duration,
    pub denoise: Duration,
    pub vae_decode: Duration,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub frames: Frames,
    pub timings: PipelineTimings,
    /// What the step cache did, when the job ran with one.
    pub step_cache: Option<variant::StepCacheSummary>,
}

/// Why a generation ended without frames.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// `on_step` asked to stop (cancel or shutdown) after `at_step` steps.
    #[error("stopped after step {at_step}")]
    Stopped { at_step: u32 },
    /// Not enough GPU or host memory; `message` names settings that would fit.
    #[error("out of memory: {message}")]
    OutOfMemory { message: String },
    /// The model cannot run these settings (beyond the request bounds).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The model could not be loaded; the message names the cause and the fix.
    #[error("model load failed: {0}")]
    Load(String),
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A text-to-video backend. `generate` blocks (it runs on the generator thread), continues from
/// `resume` (a checkpoint [`check_checkpoint`] accepted for `job`) when given, and calls the
/// hooks after every denoising step: `ControlFlow::Break` stops it at that boundary, and a due
/// checkpoint is handed over before the next step starts.
pub trait VideoGenerator: Send {
    fn model(&self) -> ModelInfo;

    fn generate(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<Generated, GenerateError>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn spec(seed: u64) -> JobSpec {
        JobSpec {
            job_id: "j".into(),
            prompt: "p".into(),
            negative_prompt: String::new(),
            width: 64,
            height: 48,
            num_frames: 5,
            fps: 8,
            steps: 4,
            guidance_scale: None,
            guidance_scale_2: None,
            shift: None,
            sampler: Sampler::Unspecified,
            seed,
            cache_threshold: None,
            image_reference: None,
            size_from_image: false,
            image: None,
        }
    }

    /// A job with a 1×1 image read from `reference` whose bytes hash to `sha256`.
    pub(crate) fn spec_with_image(seed: u64, reference: &str, sha256: &str) -> JobSpec {
        JobSpec {
            image_reference: Some(reference.into()),
            image: Some(JobImage {
                sha256: sha256.into(),
                size_bytes: 3,
                decoded: Arc::new(ConditionImage::from_rgb(1, 1, vec![1, 2, 3]).unwrap()),
            }),
            ..spec(seed)
        }
    }

    #[test]
    fn the_digest_covers_the_image_reference_and_the_cache_threshold() {
        let text = spec(1);
        let a = spec_with_image(1, "s3://b/a.png", "aa");
        assert_ne!(text.digest(), a.digest());
        assert_ne!(
            a.digest(),
            spec_with_image(1, "s3://b/b.png", "aa").digest()
        );
        // The digest names what the request said; the bytes are checked at resume.
        assert_eq!(
            a.digest(),
            spec_with_image(1, "s3://b/a.png", "bb").digest()
        );
        let before_reading = JobSpec {
            image: None,
            ..a.clone()
        };
        assert_eq!(a.digest(), before_reading.digest());
        let auto = JobSpec {
            size_from_image: true,
            ..a.clone()
        };
        assert_eq!(
            auto.digest(),
            JobSpec {
                width: 999,
                ..auto.clone()
            }
            .digest(),
            "a size taken from the image is not part of the digest"
        );
        let cached = JobSpec {
            cache_threshold: Some(0.1),
            ..spec(1)
        };
        assert_ne!(text.digest(), cached.digest());
    }

    #[test]
    fn model_kinds_refuse_requests_that_do_not_fit_in_one_line() {
        assert!(ModelKind::TextImageToVideo.check_request("m", true).is_ok());
        assert!(ModelKind::TextImageToVideo
            .check_request("m", false)
            .is_ok());
        assert!(ModelKind::TextToVideo.check_request("m", false).is_ok());
        assert!(ModelKind::ImageToVideo.check_request("m", true).is_ok());
        let no_image = ModelKind::TextToVideo
            .check_request("t2v", true)
            .unwrap_err();
        assert!(no_image.contains("text-to-video only") && !no_image.contains('\n'));
        let needs = ModelKind::ImageToVideo
            .check_request("i2v", false)
            .unwrap_err();
        assert!(needs.contains("--image"), "{needs}");
    }

    #[test]
    fn the_digest_covers_every_setting_but_the_job_id() {
        let a = spec(1);
        assert_eq!(
            a.digest(),
            JobSpec {
                job_id: "other".into(),
                ..a.clone()
            }
            .digest()
        );
        assert_ne!(a.digest(), spec(2).digest());
        assert_ne!(
            a.digest(),
            JobSpec {
                shift: Some(3.0),
                ..a.clone()
            }
            .digest()
        );
        assert_ne!(
            a.digest(),
            JobSpec {
                sampler: Sampler::FlowEuler,
                ..a.clone()
            }
            .digest()
        );
    }
}

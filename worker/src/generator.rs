//! Video generation behind one trait, on its own thread (STYLE item 8: the GPU never blocks the
//! runtime).
//!
//! - [`VideoGenerator`]: what a backend implements — the Wan pipeline (plugged in with
//!   t2v-pipeline) or [`SyntheticGenerator`], a deterministic TEST/DEMO backend without a model.
//! - [`GeneratorThread`]: owns the generator on a dedicated OS thread; the async side sends it one
//!   job at a time and awaits the result, while `/healthz` and Kafka polling stay responsive.
//! - [`StepHooks`]: the job's side of every step boundary — progress, stop, and when to take a
//!   [`Checkpoint`] (t2v-pipeline's checkpoint file, with [`checkpoint_metadata`] naming the
//!   request digest and model revision it belongs to; [`check_checkpoint`] reads that back).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use t2v_pipeline::checkpoint;
use t2v_proto::v1::Sampler;
use tokio::sync::oneshot;

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
}

impl JobSpec {
    /// SHA-256 (hex) of every setting that shapes the video — all fields but the job id. A
    /// checkpoint resumes only a request with the same digest.
    pub fn digest(&self) -> String {
        let bits = |v: Option<f32>| v.map(f32::to_bits);
        let canonical = serde_json::json!({
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
        crate::storage::sha256_hex(canonical.to_string().as_bytes())
    }
}

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
    pub const STEP: &str = "step";
    pub const TOTAL_STEPS: &str = "total_steps";
}

/// The metadata a checkpoint of `job` after `step` steps carries.
pub fn checkpoint_metadata(
    job: &JobSpec,
    model: &ModelInfo,
    step: u32,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (meta::REQUEST_DIGEST.into(), job.digest()),
        (meta::MODEL.into(), model.name.clone()),
        (meta::MODEL_REVISION.into(), model.revision.clone()),
        (meta::STEP.into(), step.to_string()),
        (meta::TOTAL_STEPS.into(), job.steps.to_string()),
    ])
}

/// The step a stored checkpoint resumes `job` at, or why it cannot (another request digest or
/// model revision, a step outside the schedule, an unreadable or truncated file).
pub fn check_checkpoint(bytes: &[u8], job: &JobSpec, model: &ModelInfo) -> Result<u32, String> {
    let metadata = checkpoint::read_metadata(bytes).map_err(|e| e.to_string())?;
    let get = |key: &str| metadata.get(key).map(String::as_str).unwrap_or_default();
    if get(meta::REQUEST_DIGEST) != job.digest() {
        return Err("it was written for a different request (request digest differs)".into());
    }
    if get(meta::MODEL_REVISION) != model.revision {
        return Err(format!(
            "it was written by model revision {:?}, this worker serves {:?}",
            get(meta::MODEL_REVISION),
            model.revision
        ));
    }
    match get(meta::STEP).parse::<u32>() {
        Ok(step) if step > 0 && step < job.steps => Ok(step),
        _ => Err(format!(
            "step {:?} is not inside the schedule of {} steps",
            get(meta::STEP),
            job.steps
        )),
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

/// What the model uses for a request's zero fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDefaults {
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: u32,
    pub steps: u32,
}

/// The Wan2.2 defaults (diffusers `WanPipeline`: 832×480, 81 frames at 16 fps, 40 steps).
pub const WAN_DEFAULTS: ModelDefaults = ModelDefaults {
    width: 832,
    height: 480,
    num_frames: 81,
    fps: 16,
    steps: 40,
};

/// The model a generator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model id requests name, e.g. `wan2.2-t2v-a14b`.
    pub name: String,
    /// Revision of the weights, e.g. a checkpoint digest.
    pub revision: String,
    pub defaults: ModelDefaults,
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

/// TEST/DEMO BACKEND — not a model. Renders moving colour gradients determined by the seed
/// (same seed and size → identical frames), sleeping `step_delay` per "denoising step" so tests
/// can run long, cancellable jobs. Selected with `[model] backend = "synthetic"`.
pub struct SyntheticGenerator {
    info: ModelInfo,
    step_delay: Duration,
}

impl SyntheticGenerator {
    pub fn new(name: &str, step_delay: Duration) -> Self {
        Self {
            info: ModelInfo {
                name: name.to_string(),
                revision: "synthetic-v1".into(),
                defaults: WAN_DEFAULTS,
            },
            step_delay,
        }
    }

    /// The frames for `job`: a diagonal gradient whose hue comes from the seed and which moves
    /// one pixel per frame per direction.
    pub fn render(job: &JobSpec) -> Frames {
        let (w, h, n) = (job.width, job.height, job.num_frames);
        let base = job.seed.to_le_bytes();
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3 * n as usize);
        for t in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let r = (x + 2 * t) * 255 / w.max(1);
                    let g = (y + t) * 255 / h.max(1);
                    rgb.push((r as u8).wrapping_add(base[0]));
                    rgb.push((g as u8).wrapping_add(base[1]));
                    rgb.push(base[2].wrapping_add((t * 4) as u8));
                }
            }
        }
        Frames {
            width: w,
            height: h,
            count: n,
            rgb,
        }
    }
}

impl VideoGenerator for SyntheticGenerator {
    fn model(&self) -> ModelInfo {
        self.info.clone()
    }

    fn generate(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<Generated, GenerateError> {
        let started = Instant::now();
        // The frames depend on the seed alone: the state to save is the step count.
        let first = resume.map_or(1, |c| c.step + 1);
        for step in first..=job.steps {
            std::thread::sleep(self.step_delay);
            let info = StepInfo {
                step,
                total: job.steps,
                timestep: 1000.0 * (1.0 - step as f32 / job.steps as f32),
            };
            let stop = hooks.on_step(info).is_break();
            if hooks.checkpoint_due(info, stop) {
                let metadata = checkpoint_metadata(job, &self.info, step);
                hooks.on_checkpoint(Checkpoint {
                    step,
                    bytes: checkpoint::metadata_only(&metadata),
                });
            }
            if stop {
                return Err(GenerateError::Stopped { at_step: step });
            }
        }
        let denoise = started.elapsed();
        let decode = Instant::now();
        let frames = Self::render(job);
        Ok(Generated {
            frames,
            timings: PipelineTimings {
                text_encode: Duration::ZERO,
                denoise,
                vae_decode: decode.elapsed(),
            },
        })
    }
}

/// Resolves once the generator is built: the model and how long loading took.
pub type Loaded = oneshot::Receiver<Result<(ModelInfo, Duration), GenerateError>>;

struct Work {
    job: JobSpec,
    resume: Option<Checkpoint>,
    hooks: Box<dyn StepHooks + Send>,
    reply: oneshot::Sender<Result<Generated, GenerateError>>,
}

/// The generator on its own thread. Cloneable handle; one job runs at a time.
#[derive(Clone)]
pub struct GeneratorThread {
    tx: mpsc::Sender<Work>,
}

impl GeneratorThread {
    /// Starts the thread and builds the generator there (loading weights may take minutes);
    /// `loaded` resolves with the model info and the load time once it is ready.
    pub fn start<F>(build: F) -> (Self, Loaded)
    where
        F: FnOnce() -> Result<Box<dyn VideoGenerator>, GenerateError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Work>();
        let (loaded_tx, loaded_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("t2v-generator".into())
            .spawn(move || {
                let started = Instant::now();
                let mut generator = match build() {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                let _ = loaded_tx.send(Ok((generator.model(), started.elapsed())));
                while let Ok(mut work) = rx.recv() {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        generator.generate(&work.job, work.resume.as_ref(), &mut *work.hooks)
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(GenerateError::Internal(format!(
                            "the generator panicked: {what}"
                        )))
                    });
                    let _ = work.reply.send(result);
                }
            })
            .expect("spawning the generator thread");
        (Self { tx }, loaded_rx)
    }

    /// Runs `job` on the generator thread (from `resume` when given). The hooks are dropped
    /// on that thread once the run ended.
    pub async fn generate(
        &self,
        job: JobSpec,
        resume: Option<Checkpoint>,
        hooks: impl StepHooks + Send + 'static,
    ) -> Result<Generated, GenerateError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Work {
                job,
                resume,
                hooks: Box::new(hooks),
                reply,
            })
            .map_err(|_| GenerateError::Internal("the generator thread is gone".into()))?;
        result
            .await
            .map_err(|_| GenerateError::Internal("the generator thread is gone".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> JobSpec {
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
        }
    }

    #[test]
    fn synthetic_frames_depend_only_on_the_seed() {
        let a = SyntheticGenerator::render(&spec(1));
        assert_eq!(a, SyntheticGenerator::render(&spec(1)));
        assert_ne!(a, SyntheticGenerator::render(&spec(2)));
        assert_eq!(a.rgb.len(), 64 * 48 * 3 * 5);
        assert_ne!(a.frame(0), a.frame(1), "frames move");
    }

    /// Checkpoints every other step and stops after `stop_at`.
    struct EveryOther {
        stop_at: u32,
        saved: Vec<Checkpoint>,
    }

    impl StepHooks for EveryOther {
        fn on_step(&mut self, step: StepInfo) -> ControlFlow<()> {
            if step.step == self.stop_at {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn checkpoint_due(&mut self, step: StepInfo, stopping: bool) -> bool {
            stopping || step.step.is_multiple_of(2)
        }
        fn on_checkpoint(&mut self, checkpoint: Checkpoint) {
            self.saved.push(checkpoint);
        }
    }

    #[test]
    fn synthetic_checkpoints_resume_at_their_step_and_are_checked() {
        let mut generator = SyntheticGenerator::new("m", Duration::ZERO);
        let job = JobSpec {
            steps: 6,
            ..spec(5)
        };
        let mut hooks = EveryOther {
            stop_at: 3,
            saved: Vec::new(),
        };
        let stopped = generator.generate(&job, None, &mut hooks);
        assert_eq!(stopped, Err(GenerateError::Stopped { at_step: 3 }));
        let steps: Vec<u32> = hooks.saved.iter().map(|c| c.step).collect();
        assert_eq!(steps, [2, 3], "every other step, and at the stop");
        let last = hooks.saved.pop().unwrap();
        let info = generator.model();
        assert_eq!(check_checkpoint(&last.bytes, &job, &info), Ok(3));

        let mut seen = Vec::new();
        let done = generator
            .generate(&job, Some(&last), &mut |s: StepInfo| {
                seen.push(s.step);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen, [4, 5, 6]);
        assert_eq!(done.frames, SyntheticGenerator::render(&job));

        let other_request = JobSpec {
            prompt: "another".into(),
            ..job.clone()
        };
        assert!(check_checkpoint(&last.bytes, &other_request, &info).is_err());
        let other_model = ModelInfo {
            revision: "v2".into(),
            ..info.clone()
        };
        let why = check_checkpoint(&last.bytes, &job, &other_model).unwrap_err();
        assert!(why.contains("revision"), "{why}");
        assert!(check_checkpoint(&last.bytes[..40], &job, &info).is_err());
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

    #[tokio::test]
    async fn the_thread_reports_steps_and_stops_on_break() {
        let (thread, loaded) = GeneratorThread::start(|| {
            Ok(Box::new(SyntheticGenerator::new("m", Duration::ZERO)) as Box<dyn VideoGenerator>)
        });
        let (info, _) = loaded.await.unwrap().unwrap();
        assert_eq!(info.name, "m");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = thread
            .generate(spec(3), None, move |s: StepInfo| {
                tx.send(s.step).unwrap();
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        assert_eq!(out.frames.count, 5);
        let mut steps = Vec::new();
        while let Ok(s) = rx.try_recv() {
            steps.push(s);
        }
        assert_eq!(steps, [1, 2, 3, 4]);
        let stopped = thread
            .generate(spec(3), None, |s: StepInfo| {
                if s.step == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        assert_eq!(stopped, Err(GenerateError::Stopped { at_step: 2 }));
    }
}

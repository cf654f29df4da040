//! Video generation behind one trait, on its own thread (STYLE item 8: the GPU never blocks the
//! runtime).
//!
//! - [`VideoGenerator`]: what a backend implements — the Wan pipeline (plugged in with
//!   t2v-pipeline) or [`SyntheticGenerator`], a deterministic TEST/DEMO backend without a model.
//! - [`GeneratorThread`]: owns the generator on a dedicated OS thread; the async side sends it one
//!   job at a time and awaits the result, while `/healthz` and Kafka polling stay responsive.

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// A text-to-video backend. `generate` blocks (it runs on the generator thread) and calls
/// `on_step` after every denoising step; `ControlFlow::Break` stops it at that boundary.
pub trait VideoGenerator: Send {
    fn model(&self) -> ModelInfo;

    fn generate(
        &mut self,
        job: &JobSpec,
        on_step: &mut dyn FnMut(StepInfo) -> ControlFlow<()>,
    ) -> Result<Generated, GenerateError>;

    /// GPU memory `(allocated, reserved)` in bytes, when on a GPU.
    fn gpu_memory(&self) -> Option<(u64, u64)> {
        None
    }
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
        on_step: &mut dyn FnMut(StepInfo) -> ControlFlow<()>,
    ) -> Result<Generated, GenerateError> {
        let started = Instant::now();
        for step in 1..=job.steps {
            std::thread::sleep(self.step_delay);
            let timestep = 1000.0 * (1.0 - step as f32 / job.steps as f32);
            if on_step(StepInfo {
                step,
                total: job.steps,
                timestep,
            })
            .is_break()
            {
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

type StepCallback = Box<dyn FnMut(StepInfo) -> ControlFlow<()> + Send>;

struct Work {
    job: JobSpec,
    on_step: StepCallback,
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
                        generator.generate(&work.job, &mut *work.on_step)
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

    /// Runs `job` on the generator thread.
    pub async fn generate(
        &self,
        job: JobSpec,
        on_step: impl FnMut(StepInfo) -> ControlFlow<()> + Send + 'static,
    ) -> Result<Generated, GenerateError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send(Work {
                job,
                on_step: Box::new(on_step),
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

    #[tokio::test]
    async fn the_thread_reports_steps_and_stops_on_break() {
        let (thread, loaded) = GeneratorThread::start(|| {
            Ok(Box::new(SyntheticGenerator::new("m", Duration::ZERO)) as Box<dyn VideoGenerator>)
        });
        let (info, _) = loaded.await.unwrap().unwrap();
        assert_eq!(info.name, "m");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let out = thread
            .generate(spec(3), move |s| {
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
            .generate(spec(3), |s| {
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

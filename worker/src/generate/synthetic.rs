//! TEST/DEMO BACKEND — not a model: deterministic moving gradients, a sleep per "step", and the
//! checkpoints a real backend would take, so tests can run long, cancellable, resumable jobs.
//! A request's conditioning image becomes the first frame, resized to the frame size as the
//! reference pipelines resize it, so tests can see that the image reached the generator.

use std::time::{Duration, Instant};

use t2v_contract::defaults::WAN22_T2V_A14B;
use t2v_pipeline::checkpoint;

use super::{
    Frames, GenerateError, Generated, JobSpec, ModelInfo, ModelKind, PipelineTimings, StepHooks,
    StepInfo, VideoGenerator,
};
use crate::job::checkpoints::{checkpoint_metadata, Checkpoint};

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
                precision: "f32/cpu".into(),
                defaults: WAN22_T2V_A14B,
                kind: ModelKind::default(),
                size_multiple: t2v_contract::validate::SIDE_MULTIPLE,
            },
            step_delay,
        }
    }

    /// Pretends to be a model of `kind` (`[model] synthetic_kind`), so tests can see requests
    /// that do not fit refused.
    pub fn with_kind(mut self, kind: ModelKind) -> Self {
        self.info.kind = kind;
        self
    }

    /// [`Self::render`], with the job's conditioning image (resized with Pillow's Lanczos to
    /// the frame size, as diffusers' `VideoProcessor.preprocess` does) as the first frame.
    pub fn render_with_image(job: &JobSpec) -> Result<Frames, GenerateError> {
        let mut frames = Self::render(job);
        if let Some(image) = &job.image {
            let first = image
                .decoded
                .resize_lanczos(job.width, job.height)
                .map_err(|e| GenerateError::InvalidInput(e.to_string()))?;
            let len = frames.frame_len();
            frames.rgb[..len].copy_from_slice(first.rgb());
        }
        Ok(frames)
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
        let frames = Self::render_with_image(job)?;
        Ok(Generated {
            frames,
            step_cache: None,
            timings: PipelineTimings {
                text_encode: Duration::ZERO,
                denoise,
                vae_decode: decode.elapsed(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use std::sync::Arc;

    use super::*;
    use crate::generate::tests::spec;
    use crate::generate::{ConditionImage, JobImage};
    use crate::job::checkpoints::check_checkpoint;

    #[test]
    fn the_conditioning_image_is_the_first_frame_resized() {
        let job = spec(1);
        // 2x2 quadrants: red, green / blue, white — stretched to 64x48.
        let rgb = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255];
        let decoded = ConditionImage::from_rgb(2, 2, rgb).unwrap();
        let with_image = JobSpec {
            image: Some(JobImage {
                sha256: "00".into(),
                size_bytes: 12,
                decoded: Arc::new(decoded.clone()),
            }),
            ..job.clone()
        };
        let frames = SyntheticGenerator::render_with_image(&with_image).unwrap();
        let expected = decoded.resize_lanczos(64, 48).unwrap();
        assert_eq!(frames.frame(0), expected.rgb());
        assert_eq!(&frames.frame(0)[..3], [255, 0, 0], "top left stays red");
        let plain = SyntheticGenerator::render(&job);
        assert_ne!(frames.frame(0), plain.frame(0));
        assert_eq!(
            frames.frame(1),
            plain.frame(1),
            "later frames are the gradient"
        );
        assert_eq!(SyntheticGenerator::render_with_image(&job).unwrap(), plain);
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
        assert!(why.to_string().contains("revision"), "{why}");
        assert!(check_checkpoint(&last.bytes[..40], &job, &info).is_err());
    }
}

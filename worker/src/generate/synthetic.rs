//! TEST/DEMO BACKEND — not a model: deterministic moving gradients, a sleep per "step", and the
//! checkpoints a real backend would take, so tests can run long, cancellable, resumable jobs.

use std::time::{Duration, Instant};

use t2v_contract::defaults::WAN22_T2V_A14B;
use t2v_pipeline::checkpoint;

use super::{
    Frames, GenerateError, Generated, JobSpec, ModelInfo, PipelineTimings, StepHooks, StepInfo,
    VideoGenerator,
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

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;
    use crate::generate::tests::spec;
    use crate::job::checkpoints::check_checkpoint;

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

//! TEST BACKEND FAULTS — injected into the synthetic backend (`[model] synthetic_hang_marker`,
//! `synthetic_fail_after_jobs`) so the fault tests and `make soak` can drive what a sick GPU
//! does: a call that never returns, and every job failing after a context-poisoning error.

use super::{GenerateError, Generated, JobSpec, ModelInfo, StepHooks, VideoGenerator};
use crate::job::checkpoints::Checkpoint;

/// A generator that misbehaves on cue.
pub struct FaultInjecting {
    inner: Box<dyn VideoGenerator>,
    /// A prompt containing this hangs forever (empty: never).
    hang_marker: String,
    /// After this many generations every one fails (0: never).
    fail_after_jobs: u32,
    jobs: u32,
}

impl FaultInjecting {
    pub fn new(inner: Box<dyn VideoGenerator>, hang_marker: &str, fail_after_jobs: u32) -> Self {
        Self {
            inner,
            hang_marker: hang_marker.to_string(),
            fail_after_jobs,
            jobs: 0,
        }
    }
}

impl VideoGenerator for FaultInjecting {
    fn model(&self) -> ModelInfo {
        self.inner.model()
    }

    fn generate(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<Generated, GenerateError> {
        self.jobs += 1;
        if !self.hang_marker.is_empty() && job.prompt.contains(&self.hang_marker) {
            tracing::warn!("fault injection: this generation hangs");
            loop {
                std::thread::park();
            }
        }
        if self.fail_after_jobs > 0 && self.jobs > self.fail_after_jobs {
            return Err(GenerateError::Internal(
                "CUDA error: an illegal memory access was encountered (injected fault)".into(),
            ));
        }
        self.inner.generate(job, resume, hooks)
    }
}

//! The memory preflight of [`WanGenerator`]: the budget it is turned on with, the estimate of a
//! job's peak checked before any work, and the settings that fit named after an out-of-memory.

use t2v_pipeline::memory::{
    estimate, estimate_per_gpu, EstimateRequest, ImageEncode, MemoryEstimate, MemoryPolicy,
    ModelConfigs,
};
use t2v_pipeline::{GenerationParams, PipelineError};

use super::WanGenerator;
use crate::generate::preflight::{fit_hint, torch_oom_room, MemoryLimit};
use crate::generate::GenerateError;
use crate::gpu::{human, Gpu};

impl WanGenerator {
    /// Turns on the preflight for `[model] memory_budget_gib` (0 = the GPU's total memory, read
    /// with NVML; on the CPU only a budget is checked).
    pub fn with_memory_budget(mut self, budget_gib: f64) -> Self {
        let device = self.pipe.options().device;
        let gpu_total = if device.is_cuda() && budget_gib <= 0.0 {
            match Gpu::shared().map(Gpu::memory) {
                Some(Ok(m)) => Some(m.total),
                _ => {
                    tracing::warn!("NVML cannot tell the GPU's memory: no preflight memory check — set model.memory_budget_gib to have one");
                    None
                }
            }
        } else {
            None
        };
        self.limit = MemoryLimit::new(budget_gib, device, gpu_total);
        if let Some(limit) = &self.limit {
            tracing::info!(
                limit = %human(limit.bytes),
                overhead = %human(limit.overhead),
                "jobs whose estimated peak exceeds the memory limit are refused before they start"
            );
        }
        self
    }

    pub fn memory_limit(&self) -> Option<MemoryLimit> {
        self.limit
    }

    /// The estimate's request for `params` (sizes as the pipeline rounds them), or the
    /// pipeline's error for settings it refuses.
    pub(super) fn estimate_request(
        &self,
        params: &GenerationParams,
        policy: MemoryPolicy,
    ) -> Result<EstimateRequest, PipelineError> {
        let resolved = self.pipe.resolve(params)?;
        let options = self.pipe.options();
        Ok(EstimateRequest {
            width: resolved.width,
            height: resolved.height,
            num_frames: resolved.num_frames,
            dtype: options.dtype,
            vae_dtype: options.vae_dtype,
            text_len: params.max_sequence_length as i64,
            policy,
            image: ImageEncode::of(self.pipe.kind(), params.image.is_some()),
        })
    }

    /// The estimated peak of each GPU: the one-device estimate, or with a parallel plan one
    /// rank's share of the activations ([`estimate_per_gpu`]); checked against GPU 0's memory,
    /// the doctor having checked that every GPU is the same model.
    pub(super) fn estimate_per_gpu(
        &self,
        configs: &ModelConfigs,
        request: &EstimateRequest,
    ) -> Result<MemoryEstimate, PipelineError> {
        match self.pipe.parallel_plan() {
            Some(plan) => {
                estimate_per_gpu(configs, request, plan.layout, plan.distinct_devices().len())
            }
            None => estimate(configs, request),
        }
    }

    /// Refuses `params` when its estimated peak does not fit the memory limit.
    pub(super) fn preflight(
        &self,
        params: &GenerationParams,
        limit: MemoryLimit,
    ) -> Result<(), GenerateError> {
        let request = match self.estimate_request(params, self.pipe.options().memory) {
            Ok(r) => r,
            Err(PipelineError::InvalidInput { field, message }) => {
                return Err(GenerateError::InvalidInput(format!("{field}: {message}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no preflight memory estimate; running the job unchecked");
                return Ok(());
            }
        };
        let (configs, peak) = match self
            .pipe
            .configs()
            .and_then(|c| self.estimate_per_gpu(&c, &request).map(|e| (c, e.peak)))
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "no preflight memory estimate; running the job unchecked");
                return Ok(());
            }
        };
        if peak <= limit.room() {
            return Ok(());
        }
        let overhead = if limit.overhead > 0 {
            format!(" (+{} CUDA context)", human(limit.overhead))
        } else {
            String::new()
        };
        Err(GenerateError::OutOfMemory {
            message: format!(
                "{}×{}×{} needs an estimated {}{overhead} but {} — {}",
                request.width,
                request.height,
                request.num_frames,
                human(peak),
                limit.describe(),
                fit_hint(&configs, &request, limit.room())
            ),
        })
    }

    /// libtorch's out-of-memory `message` with the job's estimated peak and the settings that
    /// fit the memory the process could use (from libtorch's message, else the memory limit);
    /// without either, settings with about half the peak.
    pub(super) fn what_fits(&self, params: &GenerationParams, message: &str) -> String {
        let policy = self.pipe.options().memory;
        let (Ok(configs), Ok(request)) =
            (self.pipe.configs(), self.estimate_request(params, policy))
        else {
            return message.to_string();
        };
        let Ok(now) = self.estimate_per_gpu(&configs, &request) else {
            return message.to_string();
        };
        let (w, h, f) = (request.width, request.height, request.num_frames);
        let overhead = self.limit.map_or(0, |l| l.overhead);
        let room = torch_oom_room(message)
            .map(|r| r.saturating_sub(overhead))
            .or(self.limit.map(|l| l.room()))
            .filter(|&room| room < now.peak)
            .unwrap_or(now.peak / 2);
        format!(
            "{message} (estimated peak {} for {w}×{h}×{f}; {})",
            human(now.peak),
            fit_hint(&configs, &request, room)
        )
    }
}

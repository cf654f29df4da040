//! A job's request mapped onto the pipeline's [`GenerationParams`]: its unset fields take the
//! variant's sampling defaults.

use t2v_pipeline::scheduler::SamplerKind;
use t2v_pipeline::GenerationParams;
use t2v_proto::v1::Sampler;

use super::WanGenerator;
use crate::generate::JobSpec;

impl WanGenerator {
    /// The pipeline settings of `job`: its zero/unset fields take the variant's defaults.
    pub fn params(&self, job: &JobSpec) -> GenerationParams {
        let two_experts = self.pipe.model_dir().boundary_ratio().is_some();
        let defaults = &self.sampling.defaults;
        let (guidance, guidance_2) = if two_experts {
            (
                f64::from(defaults.guidance_scale),
                Some(f64::from(defaults.guidance_scale_2)),
            )
        } else {
            (f64::from(self.sampling.single_expert_guidance), None)
        };
        let guidance_scale = job.guidance_scale.map_or(guidance, f64::from);
        GenerationParams {
            prompt: job.prompt.clone(),
            negative_prompt: Some(job.negative_prompt.clone()),
            width: i64::from(job.width),
            height: i64::from(job.height),
            num_frames: i64::from(job.num_frames),
            num_inference_steps: job.steps as usize,
            guidance_scale,
            // An explicit high-noise scale without a low-noise one applies to both (as diffusers).
            guidance_scale_2: match (job.guidance_scale_2, job.guidance_scale) {
                (Some(g2), _) => Some(f64::from(g2)),
                (None, Some(_)) => None,
                (None, None) => guidance_2,
            },
            shift: self.sampling.shift_for(job.shift).map(f64::from),
            sampler: match self.sampling.sampler_for(job.sampler) {
                Sampler::Unspecified => None,
                Sampler::Unipc => Some(SamplerKind::UniPc),
                Sampler::FlowEuler => Some(SamplerKind::FlowEuler),
            },
            seed: Some(job.seed),
            reject_long_prompts: true,
            image: job.image.as_ref().map(|image| (*image.decoded).clone()),
            ..GenerationParams::default()
        }
    }
}

//! [`WanT2V::resolve`]: step 1 of a run — the request's inputs checked, the frame count and size
//! rounded as the reference does (with warnings), the seed drawn and the latent shape fixed.

use super::{random_seed, GenerationParams, ResolvedParams, WanT2V, SIZE_MULTIPLE};
use crate::error::{PipelineError, Result};

impl WanT2V {
    /// `WanPipeline.check_inputs` and the adjustments `__call__` makes before encoding.
    pub fn resolve(&self, params: &GenerationParams) -> Result<ResolvedParams> {
        let mut warnings = Vec::new();
        // 1. check_inputs: sizes divisible by 16; guidance_scale_2 only with a boundary; an
        //    image exactly when the model takes one
        self.kind.check_request(params.image.is_some())?;
        self.check_inputs(params)?;
        // 2. frames: `num_frames − 1` divisible by the VAE's temporal factor
        let num_frames = self.round_num_frames(params.num_frames, &mut warnings);
        // 3. size: whole patches of the latent
        let (height, width) = self.round_size(params, &mut warnings)?;
        // The reference's default for the low-noise expert: the high-noise scale.
        let guidance_scale_2 = self
            .model_dir
            .boundary_ratio()
            .map(|_| params.guidance_scale_2.unwrap_or(params.guidance_scale));
        let (temporal, spatial) = self.vae_scale_factors();
        Ok(ResolvedParams {
            width,
            height,
            num_frames,
            latent_shape: [
                1,
                // the noise's channels: the transformer's output (its input adds the image's)
                self.high.model.config().out_channels(),
                (num_frames - 1) / temporal + 1,
                height / spatial,
                width / spatial,
            ],
            guidance_scale: params.guidance_scale,
            guidance_scale_2,
            seed: params.seed.unwrap_or_else(random_seed),
            warnings,
        })
    }

    /// Step 1 of [`Self::resolve`]: the reference's `check_inputs`, plus the ranges it leaves to
    /// later failures (finite guidance, at least one step, frame and token).
    fn check_inputs(&self, params: &GenerationParams) -> Result<()> {
        for (field, value) in [("height", params.height), ("width", params.width)] {
            if value <= 0 || value % SIZE_MULTIPLE != 0 {
                return Err(PipelineError::invalid(
                    field,
                    format!("{value} must be a positive multiple of {SIZE_MULTIPLE} (e.g. 480×832 or 720×1280)"),
                ));
            }
        }
        if self.model_dir.boundary_ratio().is_none() && params.guidance_scale_2.is_some() {
            return Err(PipelineError::invalid(
                "guidance_scale_2",
                "only supported by two-expert models (boundary_ratio in model_index.json); leave it unset",
            ));
        }
        for (field, value) in [
            ("guidance_scale", Some(params.guidance_scale)),
            ("guidance_scale_2", params.guidance_scale_2),
            ("shift", params.shift),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(PipelineError::invalid(field, "must be a finite number"));
            }
        }
        if params.num_inference_steps == 0 {
            return Err(PipelineError::invalid(
                "num_inference_steps",
                "must be at least 1",
            ));
        }
        if params.max_sequence_length == 0 {
            return Err(PipelineError::invalid(
                "max_sequence_length",
                "must be at least 1",
            ));
        }
        if params.num_frames < 1 {
            return Err(PipelineError::invalid(
                "num_frames",
                format!("{} must be at least 1", params.num_frames),
            ));
        }
        if params.reject_long_prompts {
            self.check_prompt_lengths(params)?;
        }
        Ok(())
    }

    /// The VAE's (temporal, spatial) compression: frames and pixels per latent.
    pub(super) fn vae_scale_factors(&self) -> (i64, i64) {
        let vae = self.vae.config();
        let temporal = vae.scale_factor_temporal.unwrap_or(vae.temporal_ratio());
        (temporal, vae.spatial_ratio())
    }

    /// Step 2 of [`Self::resolve`]: `num_frames` rounded down to `temporal·k + 1`, with the
    /// reference's warning.
    fn round_num_frames(&self, num_frames: i64, warnings: &mut Vec<String>) -> i64 {
        let (temporal, _) = self.vae_scale_factors();
        let mut num_frames = num_frames;
        if num_frames % temporal != 1 {
            warnings.push(format!(
                "`num_frames - 1` has to be divisible by {temporal}. Rounding to the nearest number."
            ));
            num_frames = num_frames / temporal * temporal + 1;
        }
        num_frames.max(1)
    }

    /// Step 3 of [`Self::resolve`]: `(height, width)` rounded down to whole latent patches, with
    /// the reference's warning; an error when nothing is left.
    fn round_size(
        &self,
        params: &GenerationParams,
        warnings: &mut Vec<String>,
    ) -> Result<(i64, i64)> {
        let (_, spatial) = self.vae_scale_factors();
        let [_, p_h, p_w] = self.high.model.config().patch_size;
        let (h_multiple, w_multiple) = (spatial * p_h, spatial * p_w);
        let height = params.height / h_multiple * h_multiple;
        let width = params.width / w_multiple * w_multiple;
        if (height, width) != (params.height, params.width) {
            if height == 0 || width == 0 {
                return Err(PipelineError::invalid(
                    if height == 0 { "height" } else { "width" },
                    format!("must be at least ({h_multiple}, {w_multiple}) pixels for this model"),
                ));
            }
            warnings.push(format!(
                "`height` and `width` must be multiples of ({h_multiple}, {w_multiple}) for proper patchification. \
                 Adjusting ({}, {}) -> ({height}, {width}).",
                params.height, params.width
            ));
        }
        Ok((height, width))
    }

    fn check_prompt_lengths(&self, params: &GenerationParams) -> Result<()> {
        let limit = params
            .max_prompt_tokens
            .unwrap_or(params.max_sequence_length);
        let text = self.text_encoder()?;
        let prompts = [
            ("prompt", Some(&params.prompt)),
            ("negative_prompt", params.negative_prompt.as_ref()),
        ];
        for (field, prompt) in prompts {
            let Some(prompt) = prompt else { continue };
            let tokens = text.count_tokens(prompt)?;
            if tokens > limit {
                return Err(PipelineError::invalid(
                    field,
                    format!("{tokens} tokens (with </s>) exceed the limit of {limit}; shorten it"),
                ));
            }
        }
        Ok(())
    }
}

//! Image conditioning of the Wan image pipelines: diffusers `WanImageToVideoPipeline`
//! `prepare_latents` and the model input it builds every step.
//!
//! - **I2V-A14B** ([`LatentCondition::Concat`]): the image followed by `num_frames − 1`
//!   zero (mid-grey) frames goes through the VAE encoder; its normalised latents, after a
//!   4-channel mask (1 on the first latent frame — the first pixel frame repeated over the
//!   VAE's 4 — and 0 after), are concatenated to the noisy latents on the channel axis at every
//!   step (16 + 4 + 16 = 36 transformer input channels).
//! - **TI2V-5B** ([`LatentCondition::FirstFrame`]): the image alone is encoded; at every step
//!   the first latent frame of the model input is that latent (`(1 − mask)·condition +
//!   mask·latents`), and the tokens of that frame get timestep 0 (`mask[:, ::2, ::2] · t`, one
//!   timestep per token). After the loop the final latents get the same first frame.
//!
//! The scheduler always steps on the plain latents, so a saved checkpoint holds what an
//! uninterrupted run holds; the condition is rebuilt from the image on resume.

use tch::{Device, Kind, Tensor};

use crate::denoise::NoisePredictor;
use crate::error::{PipelineError, Result};
use crate::image::ConditionImage;
use crate::model_dir::ModelKind;
use crate::wan::vae::{normalize_latents, AutoencoderKLWan};

/// The conditioning of one request, on the denoising device.
#[derive(Debug)]
pub enum LatentCondition {
    /// `[1, 4 + z, T, h, w]` f32: mask, then the normalised latents of (image, zero frames).
    Concat { condition: Tensor },
    /// The normalised latent of the image `[1, z, 1, h, w]` f32, the frame mask
    /// `[1, 1, T, h, w]` (0 on the first frame, 1 after) and its per-token form `[tokens]`.
    FirstFrame {
        condition: Tensor,
        mask: Tensor,
        token_mask: Tensor,
    },
}

/// Where a request's video is: pixel size and frame count (after the reference's rounding).
#[derive(Debug, Clone, Copy)]
pub struct VideoSize {
    pub width: i64,
    pub height: i64,
    pub num_frames: i64,
}

impl LatentCondition {
    /// `prepare_latents` of `WanImageToVideoPipeline` for `kind`: the image resized to the
    /// video's size (Pillow's Lanczos), encoded by `vae` (posterior mean, in the VAE's kind),
    /// normalised in f32 and placed on `device`. `None` for a text-to-video model.
    pub fn prepare(
        kind: ModelKind,
        vae: &AutoencoderKLWan,
        image: &ConditionImage,
        size: VideoSize,
        device: Device,
    ) -> Result<Option<Self>> {
        let pixels = image.preprocess(size.width, size.height)?.f_unsqueeze(2)?;
        match kind {
            ModelKind::TextToVideo { .. } => Ok(None),
            ModelKind::ImageToVideo { .. } => {
                // the image, then num_frames − 1 zero frames (mid grey in [-1, 1])
                let rest = Tensor::f_zeros(
                    [1, 3, size.num_frames - 1, size.height, size.width],
                    (Kind::Float, Device::Cpu),
                )?;
                let video = Tensor::f_cat(&[pixels, rest], 2)?;
                let latents = encode_normalized(vae, &video, device)?;
                let mask = first_frame_mask(&latents, vae_temporal_ratio(vae))?;
                let condition = Tensor::f_cat(&[mask, latents], 1)?;
                Ok(Some(Self::Concat { condition }))
            }
            ModelKind::TextImageToVideo => {
                let condition = encode_normalized(vae, &pixels, device)?;
                let latent_frames = (size.num_frames - 1) / vae_temporal_ratio(vae) + 1;
                let [_, _, _, h, w] = size5(&condition)?;
                let mask = Tensor::f_ones([1, 1, latent_frames, h, w], (Kind::Float, device))?;
                let _ = mask.f_narrow(2, 0, 1)?.f_fill_(0.0)?;
                let token_mask = token_mask(&mask)?;
                Ok(Some(Self::FirstFrame {
                    condition,
                    mask,
                    token_mask,
                }))
            }
        }
    }

    /// The transformer's input and timestep for `latents` (already in the model dtype) at
    /// `timestep` (`[B]`, or `[B, tokens]` with `expand_timesteps`).
    pub fn model_input(&self, latents: &Tensor, timestep: &Tensor) -> Result<(Tensor, Tensor)> {
        match self {
            Self::Concat { condition } => {
                let condition = condition.f_to_device(latents.device())?;
                let condition = condition.f_to_kind(latents.kind())?;
                let batch = latents.size()[0];
                let condition = condition.f_expand([batch, -1, -1, -1, -1], false)?;
                let input = Tensor::f_cat(&[latents, &condition], 1)?;
                Ok((input, timestep.shallow_clone()))
            }
            Self::FirstFrame {
                condition,
                mask,
                token_mask,
            } => {
                let input = blend_first_frame(latents, condition, mask)?;
                if timestep.dim() != 2 {
                    return Err(PipelineError::invalid(
                        "timestep",
                        "TI2V conditioning needs one timestep per token (expand_timesteps in model_index.json)",
                    ));
                }
                let timestep =
                    timestep.f_mul(&token_mask.f_to_device(timestep.device())?.f_unsqueeze(0)?)?;
                Ok((input, timestep))
            }
        }
    }

    /// The latents the VAE decodes: TI2V's first frame replaced by the image's latent, as the
    /// reference does after the loop; unchanged for I2V.
    pub fn final_latents(&self, latents: Tensor) -> Result<Tensor> {
        match self {
            Self::Concat { .. } => Ok(latents),
            Self::FirstFrame {
                condition, mask, ..
            } => blend_first_frame(&latents, condition, mask),
        }
    }
}

/// `(1 − mask)·condition + mask·latents` in the latents' kind and device (with a 0/1 mask this
/// picks exact values, so the order of casting does not matter).
fn blend_first_frame(latents: &Tensor, condition: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (kind, device) = (latents.kind(), latents.device());
    let mask = mask.f_to_device(device)?.f_to_kind(kind)?;
    let condition = condition.f_to_device(device)?.f_to_kind(kind)?;
    let keep = mask.f_neg()?.f_add_scalar(1.0)?;
    Ok(keep.f_mul(&condition)?.f_add(&mask.f_mul(latents)?)?)
}

/// The VAE's frames per latent frame.
fn vae_temporal_ratio(vae: &AutoencoderKLWan) -> i64 {
    let cfg = vae.config();
    cfg.scale_factor_temporal.unwrap_or(cfg.temporal_ratio())
}

/// `retrieve_latents(vae.encode(video), "argmax")`, then `(x − mean) · (1/std)` in f32 on
/// `device`.
fn encode_normalized(vae: &AutoencoderKLWan, video: &Tensor, device: Device) -> Result<Tensor> {
    let latents = vae
        .encode(video)?
        .f_to_device(device)?
        .f_to_kind(Kind::Float)?;
    normalize_latents(&latents, vae.config())
}

/// The I2V mask `[1, r, T, h, w]` (r = 4 frames per latent frame): the first pixel frame's 1
/// repeated over the r frames of the first latent frame, 0 for every later frame.
fn first_frame_mask(latents: &Tensor, frames_per_latent: i64) -> Result<Tensor> {
    let [_, _, frames, h, w] = size5(latents)?;
    let mask = Tensor::f_zeros(
        [1, frames_per_latent, frames, h, w],
        (Kind::Float, latents.device()),
    )?;
    let _ = mask.f_narrow(2, 0, 1)?.f_fill_(1.0)?;
    Ok(mask)
}

/// `mask[0][0][:, ::2, ::2].flatten()`: one value per (1, 2, 2) patch token.
fn token_mask(mask: &Tensor) -> Result<Tensor> {
    Ok(mask
        .f_select(0, 0)?
        .f_select(0, 0)?
        .f_slice(1, 0, None, 2)?
        .f_slice(2, 0, None, 2)?
        .f_flatten(0, -1)?)
}

fn size5(t: &Tensor) -> Result<[i64; 5]> {
    let size = t.size();
    size.as_slice().try_into().map_err(|_| {
        PipelineError::invalid("latents", format!("shape {size:?}; expected 5 dimensions"))
    })
}

/// A noise predictor whose every forward sees the conditioned input: the plain latents from
/// the denoising loop, the condition added here.
pub struct Conditioned<'a, P: NoisePredictor + ?Sized> {
    pub inner: &'a P,
    pub condition: &'a LatentCondition,
}

impl<P: NoisePredictor + ?Sized> NoisePredictor for Conditioned<'_, P> {
    fn dtype(&self) -> Kind {
        self.inner.dtype()
    }

    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        let (input, timestep) = self.condition.model_input(latents, timestep)?;
        self.inner.predict(&input, &timestep, text)
    }

    fn predict_guided(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        guidance: f64,
    ) -> Result<Tensor> {
        let (input, timestep) = self.condition.model_input(latents, timestep)?;
        self.inner
            .predict_guided(&input, &timestep, prompt, negative, guidance)
    }
}

//! The model defaults a request's zero (or unset) values stand for — the one home of these
//! numbers: the producer documents them, the worker and `t2v-worker generate` apply them, and
//! t2v-pipeline's `GenerationParams::default` is built from them.
//!
//! Source: Wan2.2 T2V-A14B as published (Wan-Video/Wan2.2 `wan/configs/wan_t2v_A14B.py`: 40
//! sampling steps, guidance 4.0 for the high-noise expert and 3.0 for the low-noise one, 81
//! frames at 16 fps; 832×480 is one of its published sizes and diffusers' `WanPipeline` default).
//! The flow shift is not here: an unset shift means the model directory's scheduler config.

/// What a model uses for a request's zero fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelDefaults {
    pub width: u32,
    pub height: u32,
    pub num_frames: u32,
    pub fps: u32,
    pub steps: u32,
    /// Guidance of the high-noise expert (the only expert of single-expert models).
    pub guidance_scale: f32,
    /// Guidance of the low-noise expert of two-expert models.
    pub guidance_scale_2: f32,
}

/// Wan2.2 T2V-A14B, the model the fleet serves.
pub const WAN22_T2V_A14B: ModelDefaults = ModelDefaults {
    width: 832,
    height: 480,
    num_frames: 81,
    fps: 16,
    steps: 40,
    guidance_scale: 4.0,
    guidance_scale_2: 3.0,
};

/// Guidance of single-expert Wan models (Wan2.1, diffusers' `WanPipeline` default), used when a
/// model directory has one transformer and the request leaves guidance unset.
pub const SINGLE_EXPERT_GUIDANCE: f32 = 5.0;

/// Wan2.2 I2V-A14B (Wan-Video/Wan2.2 `wan/configs/wan_i2v_A14B.py`: 40 sampling steps, guidance
/// 3.5 for both experts, 81 frames at 16 fps, boundary 0.900; 832×480 is its published 480P size
/// and diffusers' `WanImageToVideoPipeline` default). A request that leaves the size unset takes
/// the image's aspect ratio at `width × height` pixels.
pub const WAN22_I2V_A14B: ModelDefaults = ModelDefaults {
    width: 832,
    height: 480,
    num_frames: 81,
    fps: 16,
    steps: 40,
    guidance_scale: 3.5,
    guidance_scale_2: 3.5,
};

/// Wan2.2 TI2V-5B, text-to-video and text+image-to-video (Wan-Video/Wan2.2
/// `wan/configs/wan_ti2v_5B.py`: 50 sampling steps, guidance 5.0, 121 frames at 24 fps,
/// 1280×704). One expert: `guidance_scale_2` is not used.
pub const WAN22_TI2V_5B: ModelDefaults = ModelDefaults {
    width: 1280,
    height: 704,
    num_frames: 121,
    fps: 24,
    steps: 50,
    guidance_scale: 5.0,
    guidance_scale_2: 5.0,
};

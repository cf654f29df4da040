//! The Wan VAE's building blocks (diffusers `autoencoder_kl_wan.py`): causal 3-D convolution,
//! channel RMS norm, residual block, single-head frame attention, up- and down-resampling, and
//! the per-chunk feature cache that lets the decoder run one latent frame at a time (and the
//! encoder one chunk of frames).

use tch::{nn, Kind, Tensor};

use crate::error::Result;
use crate::wan::TensorMap;

/// Frames of a causal convolution's input kept for the next chunk (diffusers `CACHE_T`).
const CACHE_T: i64 = 2;

/// What the previous chunk left for one cached layer (diffusers `feat_cache[idx]`).
enum Slot {
    /// First chunk not seen yet (`None`).
    Empty,
    /// An `upsample3d` layer passed the first chunk through unchanged (`"Rep"`).
    Rep,
    /// The last input frames of the previous chunk.
    Frames(Tensor),
}

/// The decoder's feature cache: one slot per cached layer, visited in a fixed order each chunk
/// (diffusers `_feat_map` with `_conv_idx`).
pub struct FeatCache {
    slots: Vec<Slot>,
    idx: usize,
    chunks: usize,
}

impl FeatCache {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            idx: 0,
            chunks: 0,
        }
    }

    /// Rewinds to the first layer before the model runs on the next chunk.
    pub fn start_chunk(&mut self) {
        self.idx = 0;
        self.chunks += 1;
    }

    /// The chunk being run is the first (diffusers `first_chunk=True`).
    pub fn first_chunk(&self) -> bool {
        self.chunks <= 1
    }

    fn next_slot(&mut self) -> &mut Slot {
        if self.idx == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

/// The last `CACHE_T` frames of `x` as a fresh tensor (so the chunk itself can be freed),
/// preceded by the last frame of `previous` when `x` has fewer.
fn tail_frames(x: &Tensor, previous: Option<&Tensor>) -> Result<Tensor> {
    let t = x.size()[2];
    let keep = t.min(CACHE_T);
    let tail = x.f_narrow(2, t - keep, keep)?.f_contiguous()?;
    Ok(match previous {
        Some(prev) if keep < CACHE_T => {
            let last = prev.f_narrow(2, prev.size()[2] - 1, 1)?;
            Tensor::f_cat(&[&last, &tail], 2)?
        }
        _ => tail,
    })
}

/// A convolution weight and bias named `weight` / `bias` under `vs`.
fn conv_params(vs: &nn::Path<'_>, out: i64, shape: &[i64]) -> (Tensor, Tensor) {
    let mut dims = vec![out];
    dims.extend_from_slice(shape);
    (
        vs.var("weight", &dims, nn::Init::Const(0.)),
        vs.var("bias", &[out], nn::Init::Const(0.)),
    )
}

/// `WanCausalConv3d`: a Conv3d that pads `2·p_t` frames in the past and none in the future;
/// frames cached from the previous chunk replace that many zero frames.
pub struct CausalConv3d {
    weight: Tensor,
    bias: Tensor,
    past: i64,
    spatial_padding: [i64; 2],
    stride: [i64; 3],
}

impl CausalConv3d {
    /// The same layer with every weight mapped by `f` (see [`crate::wan::TensorMap`]).
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            weight: f(&self.weight)?,
            bias: f(&self.bias)?,
            past: self.past,
            spatial_padding: self.spatial_padding,
            stride: self.stride,
        })
    }

    pub fn new(
        vs: nn::Path<'_>,
        c_in: i64,
        c_out: i64,
        kernel: [i64; 3],
        padding: [i64; 3],
    ) -> Self {
        let (weight, bias) = conv_params(&vs, c_out, &[c_in, kernel[0], kernel[1], kernel[2]]);
        Self {
            weight,
            bias,
            past: 2 * padding[0],
            spatial_padding: [padding[1], padding[2]],
            stride: [1; 3],
        }
    }

    /// The layer with a stride (the `downsample3d` time convolution strides 2 in time).
    pub fn with_stride(self, stride: [i64; 3]) -> Self {
        Self { stride, ..self }
    }

    /// The kind and device of the weights.
    pub fn kind_device(&self) -> (Kind, tch::Device) {
        (self.weight.kind(), self.weight.device())
    }

    /// The convolution with `cache` (earlier frames) in front of `x`, zero-padded in the past
    /// to `2·p_t` frames. Spatial zero padding is the convolution's own (same values as the
    /// reference's `F.pad` followed by an unpadded convolution).
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        let mut past = self.past;
        if past > 0 {
            if let Some(cache) = cache {
                x = Tensor::f_cat(&[cache, &x], 2)?;
                past -= cache.size()[2];
            }
            if past > 0 {
                x = x.f_constant_pad_nd([0, 0, 0, 0, past, 0])?;
            }
        }
        let [ph, pw] = self.spatial_padding;
        Ok(x.f_conv3d(
            &self.weight,
            Some(&self.bias),
            self.stride,
            [0, ph, pw],
            [1, 1, 1],
            1,
        )?)
    }

    /// One chunk through the convolution, updating its cache slot (the reference's pattern
    /// around every cached `conv_in` / `conv1` / `conv2` / `conv_out`).
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let slot = cache.next_slot();
        let previous = match slot {
            Slot::Frames(t) => Some(t.shallow_clone()),
            _ => None,
        };
        let tail = tail_frames(x, previous.as_ref())?;
        let out = self.forward(x, previous.as_ref())?;
        *slot = Slot::Frames(tail);
        Ok(out)
    }
}

/// `WanRMS_norm`: L2-normalise over channels (dim 1), times √dim and a learned `gamma`;
/// half-precision inputs are normalised in f32.
pub struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            gamma: f(&self.gamma)?,
            scale: self.scale,
        })
    }

    /// `spatial_dims` is 3 for video tensors (B,C,T,H,W) and 2 for frames (N,C,H,W).
    pub fn new(vs: nn::Path<'_>, dim: i64, spatial_dims: usize) -> Self {
        let mut shape = vec![dim];
        shape.resize(1 + spatial_dims, 1);
        Self {
            gamma: vs.var("gamma", &shape, nn::Init::Const(1.)),
            scale: (dim as f64).sqrt(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let wide = match kind {
            Kind::Half | Kind::BFloat16 => x.f_to_kind(Kind::Float)?,
            _ => x.shallow_clone(),
        };
        // F.normalize: x / max(‖x‖₂, 1e-12)
        let norm = wide
            .f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?
            .f_clamp_min(1e-12)?;
        let normalized = wide.f_div(&norm)?.f_to_kind(kind)?;
        Ok(normalized.f_mul_scalar(self.scale)?.f_mul(&self.gamma)?)
    }
}

/// `WanResidualBlock`: (RMS norm, SiLU, causal conv) twice, plus a 1×1×1 shortcut when the
/// width changes. Dropout is identity at inference.
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    conv_shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            norm1: self.norm1.map_tensors(f)?,
            conv1: self.conv1.map_tensors(f)?,
            norm2: self.norm2.map_tensors(f)?,
            conv2: self.conv2.map_tensors(f)?,
            conv_shortcut: self
                .conv_shortcut
                .as_ref()
                .map(|c| c.map_tensors(f))
                .transpose()?,
        })
    }

    pub fn new(vs: nn::Path<'_>, c_in: i64, c_out: i64) -> Self {
        Self {
            norm1: RmsNorm::new(&vs / "norm1", c_in, 3),
            conv1: CausalConv3d::new(&vs / "conv1", c_in, c_out, [3, 3, 3], [1, 1, 1]),
            norm2: RmsNorm::new(&vs / "norm2", c_out, 3),
            conv2: CausalConv3d::new(&vs / "conv2", c_out, c_out, [3, 3, 3], [1, 1, 1]),
            conv_shortcut: (c_in != c_out)
                .then(|| CausalConv3d::new(&vs / "conv_shortcut", c_in, c_out, [1; 3], [0; 3])),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        // 1. shortcut
        let h = match &self.conv_shortcut {
            Some(conv) => conv.forward(x, None)?,
            None => x.shallow_clone(),
        };
        // 2. norm, SiLU, conv
        let x = self.norm1.forward(x)?.f_silu()?;
        let x = self.conv1.forward_cached(&x, cache)?;
        // 3. norm, SiLU, (dropout), conv
        let x = self.norm2.forward(&x)?.f_silu()?;
        let x = self.conv2.forward_cached(&x, cache)?;
        // 4. residual
        Ok(x.f_add(&h)?)
    }
}

/// `WanAttentionBlock`: single-head self-attention within each frame over its H·W positions.
pub struct AttentionBlock {
    norm: RmsNorm,
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor,
}

impl AttentionBlock {
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            norm: self.norm.map_tensors(f)?,
            qkv_weight: f(&self.qkv_weight)?,
            qkv_bias: f(&self.qkv_bias)?,
            proj_weight: f(&self.proj_weight)?,
            proj_bias: f(&self.proj_bias)?,
        })
    }

    pub fn new(vs: nn::Path<'_>, dim: i64) -> Self {
        let (qkv_weight, qkv_bias) = conv_params(&(&vs / "to_qkv"), 3 * dim, &[dim, 1, 1]);
        let (proj_weight, proj_bias) = conv_params(&(&vs / "proj"), dim, &[dim, 1, 1]);
        Self {
            norm: RmsNorm::new(&vs / "norm", dim, 2),
            qkv_weight,
            qkv_bias,
            proj_weight,
            proj_bias,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.size5()?;
        // 1. frames as a batch of images, normalised
        let frames = x.f_permute([0, 2, 1, 3, 4])?.f_reshape([b * t, c, h, w])?;
        let frames = self.norm.forward(&frames)?;
        // 2. q, k, v: (B·T, 1, H·W, C) each
        let qkv = frames
            .f_conv2d(
                &self.qkv_weight,
                Some(&self.qkv_bias),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )?
            .f_reshape([b * t, 1, 3 * c, h * w])?
            .f_permute([0, 1, 3, 2])?
            .f_contiguous()?;
        let qkv = qkv.f_chunk(3, -1)?;
        // 3. attention (scale 1/√C)
        let out = Tensor::f_scaled_dot_product_attention(
            &qkv[0],
            &qkv[1],
            &qkv[2],
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        )?;
        // 4. back to images, output projection, back to video, residual
        let out = out
            .f_squeeze_dim(1)?
            .f_permute([0, 2, 1])?
            .f_reshape([b * t, c, h, w])?
            .f_conv2d(
                &self.proj_weight,
                Some(&self.proj_bias),
                [1, 1],
                [0, 0],
                [1, 1],
                1,
            )?
            .f_view([b, t, c, h, w])?
            .f_permute([0, 2, 1, 3, 4])?;
        Ok(out.f_add(x)?)
    }
}

/// `WanResample` in its decoder modes: `upsample2d` (2× nearest-exact in H, W then a 3×3
/// conv) and `upsample3d` (first a causal time conv that doubles the frames).
pub struct Upsample {
    conv: (Tensor, Tensor),
    time_conv: Option<CausalConv3d>,
}

impl Upsample {
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            conv: (f(&self.conv.0)?, f(&self.conv.1)?),
            time_conv: self
                .time_conv
                .as_ref()
                .map(|c| c.map_tensors(f))
                .transpose()?,
        })
    }

    /// `dim` channels in, `c_out` out (diffusers `upsample_out_dim`, default `dim / 2`).
    pub fn new(vs: nn::Path<'_>, dim: i64, c_out: i64, temporal: bool) -> Self {
        Self {
            conv: conv_params(&(&vs / "resample" / 1), c_out, &[dim, 3, 3]),
            time_conv: temporal
                .then(|| CausalConv3d::new(&vs / "time_conv", dim, 2 * dim, [3, 1, 1], [1, 0, 0])),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let (b, c, _, h, w) = x.size5()?;
        let mut x = x.shallow_clone();
        // 1. upsample3d: the first chunk passes through; later ones get twice the frames
        if let Some(time_conv) = &self.time_conv {
            let slot = cache.next_slot();
            let doubled = match slot {
                Slot::Empty => {
                    *slot = Slot::Rep;
                    None
                }
                Slot::Rep => {
                    // The reference caches zeros in front of a lone frame here.
                    let tail = tail_frames(&x, None)?;
                    let tail = if tail.size()[2] < CACHE_T {
                        Tensor::f_cat(&[&tail.f_zeros_like()?, &tail], 2)?
                    } else {
                        tail
                    };
                    let out = time_conv.forward(&x, None)?;
                    *slot = Slot::Frames(tail);
                    Some(out)
                }
                Slot::Frames(previous) => {
                    let previous = previous.shallow_clone();
                    let tail = tail_frames(&x, Some(&previous))?;
                    let out = time_conv.forward(&x, Some(&previous))?;
                    *slot = Slot::Frames(tail);
                    Some(out)
                }
            };
            if let Some(out) = doubled {
                // (B, 2·C, T, H, W) → (B, C, 2·T, H, W), the two halves interleaved in time
                let t = out.size()[2];
                x = out
                    .f_reshape([b, 2, c, t, h, w])?
                    .f_permute([0, 2, 3, 1, 4, 5])?
                    .f_reshape([b, c, 2 * t, h, w])?;
            }
        }
        // 2. each frame: 2× nearest-exact, 3×3 conv (nearest copies values, so the reference's
        //    round trip through f32 changes nothing and is skipped)
        let t = x.size()[2];
        let frames = x
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([b * t, c, h, w])?
            .f_internal_upsample_nearest_exact2d([2 * h, 2 * w], 2.0, 2.0)?
            .f_conv2d(&self.conv.0, Some(&self.conv.1), [1, 1], [1, 1], [1, 1], 1)?;
        let c_out = frames.size()[1];
        Ok(frames
            .f_view([b, t, c_out, 2 * h, 2 * w])?
            .f_permute([0, 2, 1, 3, 4])?)
    }
}

/// `WanResample` in its encoder modes: `downsample2d` (each frame zero-padded by one pixel on
/// the right and bottom, then a 3×3 conv of stride 2) and `downsample3d` (then a causal time conv
/// of stride 2 over the last frame of the previous chunk and this chunk's frames; the first
/// chunk passes through in time).
pub struct Downsample {
    conv: (Tensor, Tensor),
    time_conv: Option<CausalConv3d>,
}

impl Downsample {
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            conv: (f(&self.conv.0)?, f(&self.conv.1)?),
            time_conv: self
                .time_conv
                .as_ref()
                .map(|c| c.map_tensors(f))
                .transpose()?,
        })
    }

    pub fn new(vs: nn::Path<'_>, dim: i64, temporal: bool) -> Self {
        Self {
            conv: conv_params(&(&vs / "resample" / 1), dim, &[dim, 3, 3]),
            time_conv: temporal.then(|| {
                CausalConv3d::new(&vs / "time_conv", dim, dim, [3, 1, 1], [0; 3])
                    .with_stride([2, 1, 1])
            }),
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let (b, c, t, h, w) = x.size5()?;
        // 1. each frame: ZeroPad2d((0, 1, 0, 1)), 3×3 conv with stride 2
        let frames = x
            .f_permute([0, 2, 1, 3, 4])?
            .f_reshape([b * t, c, h, w])?
            .f_constant_pad_nd([0, 1, 0, 1])?
            .f_conv2d(&self.conv.0, Some(&self.conv.1), [2, 2], [0, 0], [1, 1], 1)?;
        let (c_out, h, w) = (frames.size()[1], frames.size()[2], frames.size()[3]);
        let x = frames
            .f_view([b, t, c_out, h, w])?
            .f_permute([0, 2, 1, 3, 4])?;
        // 2. downsample3d: the time conv sees the previous chunk's last frame first
        let Some(time_conv) = &self.time_conv else {
            return Ok(x);
        };
        let slot = cache.next_slot();
        let last = x.f_narrow(2, t - 1, 1)?.f_contiguous()?;
        let out = match slot {
            Slot::Frames(previous) => {
                let previous = previous.f_narrow(2, previous.size()[2] - 1, 1)?;
                time_conv.forward(&Tensor::f_cat(&[&previous, &x], 2)?, None)?
            }
            _ => x,
        };
        *slot = Slot::Frames(last);
        Ok(out)
    }
}

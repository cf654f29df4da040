"""Reference fixtures for the Wan2.1 VAE decoder (`AutoencoderKLWan`, z_dim 16).

Writes, under ROOT/vae/:
  vae/                     a tiny random-weight AutoencoderKLWan (save_pretrained layout)
  decode.safetensors       latents (the pipeline's normalised latents), denormalized (what the
                           pipeline hands to vae.decode), video (vae.decode(...).sample, clamped
                           to [-1, 1]), frames (VideoProcessor.postprocess_video(..., "np")[0],
                           F×H×W×3 in [0, 1]), frames_u8 ((frames * 255).round() as uint8, as
                           numpy_to_pil does), video_tiled (the same decode after
                           vae.enable_tiling(24, 24, 16, 16)), and the same path with the VAE in
                           bfloat16: denormalized_bf16, video_bf16, frames_bf16 (stored as f32)
  variant/vae/ + variant/decode.safetensors
                           a second tiny VAE with decoder_base_dim, one res block and a
                           different temporal pattern, to show the module tree follows the config

`make_tiny_vae(dir_root, seed)` is reusable: it writes dir_root/vae/ and returns the model, so
a whole tiny WanPipeline directory can be assembled from it.

Usage: python pipeline/parity/vae.py --out ROOT
"""

import argparse
import os

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from diffusers.video_processor import VideoProcessor
from safetensors.torch import save_file

Z_DIM = 16
# Tiles for the tiled case, in pixels: 3×3 latent tiles with a stride of 2 latents, so a 4×6
# latent is cut into 2×3 overlapping tiles (edge tiles are smaller) with an 8-pixel blend.
TILING = dict(
    tile_sample_min_height=24,
    tile_sample_min_width=24,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
)


def make_tiny_vae(dir_root, seed=0, **overrides):
    """Builds a tiny random-weight Wan2.1 VAE and saves it to dir_root/vae/.

    Weights are the default init except the RMS-norm gammas, which are perturbed so that
    loading them matters; latents_mean/std are random so that reading them from config.json
    matters. Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    config = dict(
        base_dim=16,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
        latents_mean=(torch.randn(Z_DIM, generator=generator) * 0.5).tolist(),
        latents_std=(torch.rand(Z_DIM, generator=generator) * 2.0 + 0.5).tolist(),
    )
    config.update(overrides)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**config).eval()
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith(".gamma"):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
    vae.save_pretrained(os.path.join(dir_root, "vae"))
    return vae


def denormalize(vae, latents):
    """The end of WanPipeline.__call__: latents / (1 / std) + mean, in the VAE's dtype."""
    latents = latents.to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.dtype)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents.dtype)
    return latents / std + mean


def reference(vae, latents, tiling=None):
    denormalized = denormalize(vae, latents)
    with torch.no_grad():
        video = vae.decode(denormalized).sample
        tensors = dict(latents=latents, denormalized=denormalized, video=video)
        frames = VideoProcessor(vae_scale_factor=8).postprocess_video(video, output_type="np")[0]
        tensors["frames"] = torch.from_numpy(np.ascontiguousarray(frames))
        tensors["frames_u8"] = torch.from_numpy((frames * 255).round().astype("uint8"))
        if tiling is not None:
            vae.enable_tiling(**tiling)
            tensors["video_tiled"] = vae.decode(denormalized).sample
            vae.disable_tiling()
    return {k: v.contiguous() for k, v in tensors.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="fixtures root; writes ROOT/vae/")
    args = parser.parse_args()
    root = os.path.join(args.out, "vae")
    torch.set_grad_enabled(False)

    # 1. The Wan2.1 layout: 3 latent frames of 4×6 (non-square) → 9 frames of 32×48.
    vae = make_tiny_vae(root, seed=0)
    latents = torch.randn(1, Z_DIM, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    tensors = reference(vae, latents, tiling=TILING)
    assert tensors["video"].shape == (1, 3, 9, 32, 48)
    inside = (tensors["video"].abs() < 1).float().mean().item()
    assert inside > 0.9, f"only {inside:.2f} of the output is inside the clamp; the test would be weak"
    # The same latents through the VAE in bfloat16 (the pipeline casts the latents first).
    vae.to(torch.bfloat16)
    half = reference(vae, latents)
    for name in ("denormalized", "video", "frames"):
        tensors[f"{name}_bf16"] = half[name].float()
    save_file(tensors, os.path.join(root, "decode.safetensors"))

    # 2. A variant: separate decoder width, 1 res block, temporal upsampling only in the middle.
    variant_root = os.path.join(root, "variant")
    variant = make_tiny_vae(
        variant_root,
        seed=2,
        base_dim=8,
        decoder_base_dim=12,
        num_res_blocks=1,
        temperal_downsample=[True, False, True],
    )
    latents = torch.randn(1, Z_DIM, 2, 3, 5, generator=torch.Generator().manual_seed(3))
    save_file(reference(variant, latents), os.path.join(variant_root, "decode.safetensors"))


if __name__ == "__main__":
    main()

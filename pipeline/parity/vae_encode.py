"""Reference fixtures for the Wan VAE encoder (both VAEs) and the Wan2.2 VAE decoder.

Writes, under ROOT/vae_encode/:
  wan21/vae/, wan22/vae/   tiny random-weight AutoencoderKLWan models (save_pretrained layout):
                           the Wan2.1 layout (z_dim 16, 8x spatial) and the Wan2.2 one
                           (is_residual, patch_size 2, z_dim 48, decoder_base_dim, 16x spatial)
  wan22_unit/              the Wan2.2 layout at diffusers' own unit-test size (base_dim 3,
                           dim_mult [1, 1, 1, 1], 1 res block), same tensors as wan22/ but bf16
  wan21/encode.safetensors, wan22/encode.safetensors
    video_{T}              input videos in [-1, 1] of T = 1, 5, 9, 13 frames, odd latent sizes
                           (3x5 latents); video_6 also (6 frames: the 5th is past the last
                           whole chunk and is not encoded)
    mean_{T}               retrieve_latents(vae.encode(video), sample_mode="argmax")
    normalized_5           (mean - latents_mean) * (1 / latents_std), as
                           WanImageToVideoPipeline.prepare_latents does
    batch_video, batch_mean
                           a batch of 2 videos of 5 frames
    tiled_video, tiled_mean
                           a larger video encoded after vae.enable_tiling(**TILING)
    decoded_{T}            (wan22 only) vae.decode(latents_{T}).sample, latents_{T} random
                           latents of T = 1..4 frames
    tiled_latents, tiled_decoded
                           (wan22 only) a 4x6 latent decoded after vae.enable_tiling(**TILING)
    decoded_bf16_2, mean_bf16_5
                           (wan22 only) the VAE in bfloat16 (stored as f32)

Usage: python pipeline/parity/vae_encode.py --out ROOT
"""

import argparse
import os

import torch
from safetensors.torch import save_file
from vae import make_tiny_vae

from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

# Tiles of 32 pixels every 16: with the Wan2.1 VAE 4-latent tiles every 2 latents; with the
# Wan2.2 VAE decode tiles of 2 latents every 1, encode tiles of 32 patchified pixels (64 pixels).
TILING = dict(
    tile_sample_min_height=32,
    tile_sample_min_width=32,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
)
FRAME_COUNTS = (1, 5, 9, 13)


def tiny_wan22(root, seed):
    generator = torch.Generator().manual_seed(seed + 100)
    z_dim = 48
    return make_tiny_vae(
        root,
        seed=seed,
        base_dim=8,
        decoder_base_dim=12,
        z_dim=z_dim,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
        latents_mean=(torch.randn(z_dim, generator=generator) * 0.5).tolist(),
        latents_std=(torch.rand(z_dim, generator=generator) * 2.0 + 0.5).tolist(),
    )


def encode_mean(vae, video):
    return retrieve_latents(vae.encode(video), sample_mode="argmax")


def videos(generator, shape, counts):
    b, c, h, w = shape
    return {t: torch.rand(b, c, t, h, w, generator=generator) * 2.0 - 1.0 for t in counts}


def encode_cases(vae, scale, generator):
    """Encode references for one VAE whose latents are `scale` pixels each."""
    tensors = {}
    for t, video in videos(generator, (1, 3, 3 * scale, 5 * scale), FRAME_COUNTS + (6,)).items():
        tensors[f"video_{t}"] = video
        tensors[f"mean_{t}"] = encode_mean(vae, video)
    assert tensors["mean_13"].shape[2:] == (4, 3, 5), tensors["mean_13"].shape
    assert tensors["mean_6"].shape[2] == 2
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
    tensors["normalized_5"] = (tensors["mean_5"].to(torch.float32) - mean) * inv_std
    batch = videos(generator, (2, 3, 2 * scale, 3 * scale), (5,))[5]
    tensors["batch_video"] = batch
    tensors["batch_mean"] = encode_mean(vae, batch)
    # 4×6 latents of video, encoded in overlapping tiles.
    tiled = videos(generator, (1, 3, 4 * scale, 6 * scale), (5,))[5]
    tensors["tiled_video"] = tiled
    vae.enable_tiling(**TILING)
    tensors["tiled_mean"] = encode_mean(vae, tiled)
    vae.disable_tiling()
    untiled = encode_mean(vae, tiled)
    gap = (untiled - tensors["tiled_mean"]).abs().max().item()
    assert gap > 1e-3, f"tiled encode equals the plain one ({gap:.1e}); the test would be weak"
    return tensors


def decode_cases(vae, generator):
    """Decode references for the Wan2.2 VAE, untiled for 1..4 latent frames and tiled."""
    tensors = {}
    z_dim = vae.config.z_dim
    for t in range(1, 5):
        latents = torch.randn(1, z_dim, t, 3, 5, generator=generator)
        tensors[f"latents_{t}"] = latents
        tensors[f"decoded_{t}"] = vae.decode(latents).sample
    assert tensors["decoded_4"].shape == (1, 3, 13, 48, 80), tensors["decoded_4"].shape
    inside = (tensors["decoded_4"].abs() < 1).float().mean().item()
    assert inside > 0.9, f"only {inside:.2f} of the output is inside the clamp; the test would be weak"
    latents = torch.randn(1, z_dim, 2, 4, 6, generator=generator)
    tensors["tiled_latents"] = latents
    vae.enable_tiling(**TILING)
    tensors["tiled_decoded"] = vae.decode(latents).sample
    vae.disable_tiling()
    gap = (vae.decode(latents).sample - tensors["tiled_decoded"]).abs().max().item()
    assert gap > 1e-3, f"tiled decode equals the plain one ({gap:.1e}); the test would be weak"
    return tensors


def bf16_cases(vae, tensors):
    vae.to(torch.bfloat16)
    half = {
        "decoded_bf16_2": vae.decode(tensors["latents_2"].to(torch.bfloat16)).sample,
        "mean_bf16_5": encode_mean(vae, tensors["video_5"].to(torch.bfloat16)),
    }
    vae.to(torch.float32)
    return {k: v.float() for k, v in half.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="fixtures root; writes ROOT/vae_encode/")
    args = parser.parse_args()
    root = os.path.join(args.out, "vae_encode")
    torch.set_grad_enabled(False)

    wan21 = make_tiny_vae(os.path.join(root, "wan21"), seed=5, base_dim=8)
    tensors = encode_cases(wan21, 8, torch.Generator().manual_seed(6))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "wan21", "encode.safetensors"))

    wan22 = tiny_wan22(os.path.join(root, "wan22"), seed=7)
    generator = torch.Generator().manual_seed(8)
    tensors = encode_cases(wan22, 16, generator)
    tensors.update(decode_cases(wan22, generator))
    tensors.update(bf16_cases(wan22, tensors))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "wan22", "encode.safetensors"))

    # The Wan2.2 layout at diffusers' own test size: base_dim 3, all multipliers 1, 1 res block.
    tiny = make_tiny_vae(
        os.path.join(root, "wan22_unit"),
        seed=9,
        base_dim=3,
        z_dim=48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
    )
    generator = torch.Generator().manual_seed(10)
    tensors = encode_cases(tiny, 16, generator)
    tensors.update(decode_cases(tiny, generator))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "wan22_unit", "encode.safetensors"))


if __name__ == "__main__":
    main()

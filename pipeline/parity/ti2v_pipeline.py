"""Reference for Wan2.2 TI2V-5B's two modes on one tiny model directory, compared by
pipeline/tests/ti2v_pipeline_parity.rs: text-to-video through diffusers `WanPipeline` and
text+image-to-video through `WanImageToVideoPipeline` (the same directory loaded as that class,
as diffusers' TI2V-5B example does), both with `expand_timesteps=True` (one timestep per token;
with an image the first latent frame is the image's latent and its tokens get timestep 0).

Writes, under ROOT/ti2v_pipeline/:
  model/                 a complete tiny TI2V-shaped WanPipeline directory (save_pretrained):
                         one transformer (48 → 48 channels), vae/ (Wan2.2: z_dim 48, patch 2,
                         residual, 16× spatial — vae_encode.py's tiny one), text_encoder/ +
                         tokenizer/, scheduler/ (UniPC), model_index.json with expand_timesteps
  model/t2v.safetensors, model/t2v.json
                         noise, latents (after the last step), frames; the call's arguments
  model/i2v.safetensors, model/i2v.json
                         noise, condition (the image's normalised latent, [1, 48, 1, h, w]),
                         latents, frames; the call's arguments
The image is i2v_pipeline.py's 61×37 test image (written there too), stretched to 96×64.

Usage: python pipeline/parity/ti2v_pipeline.py --out ROOT
"""

import argparse
import os
import sys

import torch
from diffusers import WanImageToVideoPipeline, WanPipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from i2v_pipeline import run_image_pipeline, write_test_image  # noqa: E402
from text_encoder import D_MODEL  # noqa: E402
from tiny_pipelines import write_tiny_pipeline  # noqa: E402
from vae_encode import tiny_wan22  # noqa: E402

Z_DIM_22 = 48
TRANSFORMER = dict(in_channels=Z_DIM_22, out_channels=Z_DIM_22, text_dim=D_MODEL)

CASES = {
    "t2v": dict(
        prompt="A paper boat drifting down a rain-soaked street.",
        negative_prompt="worst quality, low quality",
        height=64,
        width=96,
        num_frames=9,
        guidance_scale=5.0,
        seed=21,
    ),
    # 11 frames, rounded to 9 by the reference.
    "i2v": dict(
        prompt="The scene comes alive, leaves swaying in the wind.",
        negative_prompt="static, blurred",
        height=64,
        width=96,
        num_frames=11,
        guidance_scale=4.0,
        seed=5,
    ),
}


def write_tiny_ti2v_model(model_dir, seed=0):
    """A complete tiny TI2V-5B-shaped WanPipeline directory (expand_timesteps, Wan2.2 VAE)."""
    write_tiny_pipeline(model_dir, WanPipeline, TRANSFORMER, seed=seed, write_vae=tiny_wan22, expand_timesteps=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="fixtures root; writes ROOT/ti2v_pipeline/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = os.path.join(args.out, "ti2v_pipeline")
    os.makedirs(root, exist_ok=True)
    image = write_test_image(root)
    model_dir = os.path.join(root, "model")
    write_tiny_ti2v_model(model_dir, seed=0)
    run_image_pipeline(WanPipeline, model_dir, CASES["t2v"], None, name="t2v")
    run_image_pipeline(WanImageToVideoPipeline, model_dir, CASES["i2v"], image, name="i2v")


if __name__ == "__main__":
    main()

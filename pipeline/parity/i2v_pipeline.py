"""Reference for the image-to-video pipeline (diffusers `WanImageToVideoPipeline`, Wan2.2
I2V-A14B layout: two experts, 36 input channels, no CLIP image encoder), compared by
pipeline/tests/i2v_pipeline_parity.rs.

Writes, under ROOT/i2v_pipeline/:
  image.png, image.jpg, image.webp (lossy), image_lossless.webp
                         the conditioning image, 61×37 (an aspect that matches no video size)
  images.safetensors     what Pillow makes of them: `png`, `jpeg`, `webp`, `webp_lossless`
                         (H×W×3 u8, as `load_image` decodes them) and `lanczos_<W>x<H>` (the
                         PNG resized with Image.LANCZOS, for the resampling test)
  two_experts/           a complete tiny WanImageToVideoPipeline directory (save_pretrained):
                         transformer/ + transformer_2/ (in 36 = 16 noise + 4 mask + 16 image
                         latents, out 16) and a boundary_ratio splitting the 4 steps 2 + 2,
                         text_encoder/ + tokenizer/, vae/ (Wan2.1, tiny), scheduler/ (UniPC)
  two_experts/reference.safetensors
                         noise, condition (mask + normalised image latents, [1, 20, T, h, w]),
                         latents (after the last step), frames (F×H×W×3 f32 in [0, 1])
  two_experts/reference.json
                         the call's arguments

The image goes through `diffusers.utils.load_image` (EXIF orientation, RGB) and the pipeline's
own `VideoProcessor.preprocess` (Lanczos resize to the video size), as a user's would.

Usage: python pipeline/parity/i2v_pipeline.py --out ROOT
"""

import argparse
import os
import sys

import numpy as np
import PIL.Image
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.utils import load_image
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_encoder import D_MODEL  # noqa: E402
from tiny_pipelines import (  # noqa: E402
    NUM_STEPS,
    load_pipeline,
    run_reference,
    write_reference,
    write_tiny_pipeline,
)
from vae import Z_DIM  # noqa: E402

# Input: noise (z) + mask (4) + image latents (z); output: the flow of the noise (z).
TRANSFORMER = dict(in_channels=2 * Z_DIM + 4, out_channels=Z_DIM, text_dim=D_MODEL)

IMAGE_SIZE = (61, 37)
# Sizes the resampling test compares (down, up, one axis only, both ways).
LANCZOS_SIZES = [(48, 32), (32, 48), (61, 20), (13, 37), (160, 90), (7, 5)]

CASE = dict(
    prompt="A red kite flying over a windy beach, the camera following it.",
    negative_prompt="worst quality, low quality, blurred details",
    height=32,
    width=48,
    num_frames=9,
    guidance_scale=3.5,
    guidance_scale_2=2.0,
    seed=11,
)


def write_test_image(root):
    """A 61×37 RGB image with edges, gradients and noise (so resampling shows), as PNG and JPEG."""
    w, h = IMAGE_SIZE
    generator = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack(
        [
            (x * 255 // (w - 1)),
            (y * 255 // (h - 1)),
            np.where((x // 8 + y // 8) % 2 == 0, 230, 20),
        ],
        axis=-1,
    ).astype(np.int64)
    rgb = np.clip(rgb + generator.integers(-25, 26, rgb.shape), 0, 255).astype(np.uint8)
    image = PIL.Image.fromarray(rgb, "RGB")
    image.save(os.path.join(root, "image.png"))
    image.save(os.path.join(root, "image.jpg"), quality=90)
    image.save(os.path.join(root, "image.webp"), quality=80)
    image.save(os.path.join(root, "image_lossless.webp"), lossless=True)
    png = load_image(os.path.join(root, "image.png"))

    def pixels(name):
        return torch.from_numpy(np.array(load_image(os.path.join(root, name)))).contiguous()

    tensors = {
        "png": pixels("image.png"),
        "jpeg": pixels("image.jpg"),
        "webp": pixels("image.webp"),
        "webp_lossless": pixels("image_lossless.webp"),
    }
    for size in LANCZOS_SIZES:
        resized = png.resize(size, resample=PIL.Image.LANCZOS)
        tensors[f"lanczos_{size[0]}x{size[1]}"] = torch.from_numpy(np.array(resized)).contiguous()
    save_file(tensors, os.path.join(root, "images.safetensors"))
    return png


def write_tiny_i2v_model(model_dir, seed=0):
    """A complete tiny Wan2.2 I2V-A14B-shaped directory (two experts, 36 input channels)."""
    write_tiny_pipeline(model_dir, WanImageToVideoPipeline, TRANSFORMER, seed=seed, two_experts=True)


def run_image_pipeline(pipe_class, model_dir, case, image, name="reference"):
    """Runs `pipe_class` from `model_dir` on `case` (with `image` when not None) and writes
    model_dir/<name>.safetensors (noise, condition when any, latents, frames) and
    model_dir/<name>.json (the settings)."""
    tensors, frames = run_reference(load_pipeline(pipe_class, model_dir), case, image)
    settings = dict(case, num_inference_steps=NUM_STEPS, num_frames_used=int(frames.shape[0]))
    write_reference(
        os.path.join(model_dir, f"{name}.safetensors"), tensors, os.path.join(model_dir, f"{name}.json"), settings
    )
    print(f"  {model_dir} {name}: frames {tuple(frames.shape)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="fixtures root; writes ROOT/i2v_pipeline/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = os.path.join(args.out, "i2v_pipeline")
    os.makedirs(root, exist_ok=True)
    image = write_test_image(root)
    model_dir = os.path.join(root, "two_experts")
    write_tiny_i2v_model(model_dir, seed=0)
    run_image_pipeline(WanImageToVideoPipeline, model_dir, CASE, image)


if __name__ == "__main__":
    main()

"""Reference for the whole text-to-video pipeline (diffusers `WanPipeline`), compared by
pipeline/tests/wan_pipeline_parity.rs.

Writes, under ROOT/wan_pipeline/:
  two_experts/      a complete tiny WanPipeline directory (save_pretrained): transformer/,
                    transformer_2/ and a boundary_ratio that splits the steps 2 + 2, text_encoder/ +
                    tokenizer/ (text_encoder.py's writer), vae/ (vae.py's writer), scheduler/ (UniPC
                    with the flow config the Wan conversion writes), model_index.json
  single_expert/    the same without transformer_2 (boundary_ratio null)
  <case>/reference.safetensors
                    noise (the initial latents prepare_latents drew from the seed), prompt_embeds,
                    negative_prompt_embeds, latents (after the last step), frames (output_type="np",
                    F×H×W×3 f32 in [0, 1])
  <case>/settings.json
                    the call's arguments (prompt, negative_prompt or null, height, width, num_frames as
                    asked and as used, steps, guidance, seed, max_sequence_length) and the timesteps

The model directories are also what the demo and the worker's integration tests use:
`write_tiny_wan_model(dir, two_experts, seed)` writes one, and
`python pipeline/parity/wan_pipeline.py --model-only DIR [--single-expert]` writes just that.

ftfy: the reference cleans prompts with ftfy, as diffusers does when it is installed (see
text_encoder.py); the prompts are plain ASCII, which ftfy leaves alone anyway.

Usage: python pipeline/parity/wan_pipeline.py --out ROOT
"""

import argparse
import os
import shutil
import sys

import diffusers.pipelines.wan.pipeline_wan as pipeline_wan
import torch
from diffusers import WanPipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_encoder import D_MODEL  # noqa: E402
from tiny_pipelines import (  # noqa: E402
    NUM_STEPS,
    load_pipeline,
    run_reference,
    split_boundary,
    write_reference,
    write_tiny_pipeline,
)
from vae import Z_DIM  # noqa: E402

# A tiny expert whose text width is the tiny umT5's and whose channels are the VAE's latents.
TRANSFORMER = dict(in_channels=Z_DIM, out_channels=Z_DIM, text_dim=D_MODEL)

CASES = {
    "two_experts": dict(
        two_experts=True,
        prompt="A cat and a dog baking a cake together in a kitchen.",
        negative_prompt="worst quality, low quality, blurred details",
        height=32,
        width=48,
        num_frames=9,
        guidance_scale=4.0,
        guidance_scale_2=3.0,
        seed=42,
    ),
    # No negative prompt (the reference's default ""), and 11 frames, which the reference rounds to 9.
    "single_expert": dict(
        two_experts=False,
        prompt="A drone shot over snowy mountains at sunrise, cinematic lighting.",
        negative_prompt=None,
        height=48,
        width=32,
        num_frames=11,
        guidance_scale=4.0,
        guidance_scale_2=None,
        seed=7,
    ),
}


def write_tiny_wan_model(model_dir, two_experts=True, seed=0):
    """Writes a complete tiny WanPipeline directory to model_dir and returns its pipeline (f32).

    Components: tokenizer/ + text_encoder/ (umT5, d_model 32), vae/ (Wan2.1, z_dim 16),
    transformer/ (+ transformer_2/ with a boundary_ratio splitting a 4-step schedule 2 + 2),
    scheduler/ (UniPC, flow_shift 3.0), model_index.json.
    """
    return write_tiny_pipeline(model_dir, WanPipeline, TRANSFORMER, seed=seed, two_experts=two_experts)


def run_case(root, name, case):
    model_dir = os.path.join(root, name)
    write_tiny_wan_model(model_dir, two_experts=case["two_experts"], seed=0)
    pipe = load_pipeline(WanPipeline, model_dir)
    tensors, frames = run_reference(pipe, case, keep_embeds=True)
    _, timesteps = split_boundary()
    settings = dict(case)
    settings.update(
        num_inference_steps=NUM_STEPS,
        num_frames_used=int(frames.shape[0]),
        max_sequence_length=512,
        boundary_ratio=pipe.config.boundary_ratio,
        timesteps=timesteps,
    )
    write_reference(
        os.path.join(model_dir, "reference.safetensors"), tensors, os.path.join(model_dir, "settings.json"), settings
    )
    print(f"  {name}: frames {tuple(frames.shape)}, boundary {pipe.config.boundary_ratio}, timesteps {timesteps}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="fixtures root; writes ROOT/wan_pipeline/")
    parser.add_argument("--model-only", metavar="DIR", help="write only a tiny model directory to DIR")
    parser.add_argument("--single-expert", action="store_true", help="with --model-only: no transformer_2")
    parser.add_argument("--seed", type=int, default=0, help="with --model-only: weight seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert pipeline_wan.is_ftfy_available(), "install ftfy==6.3.1: the reference cleans prompts with it"
    if args.model_only:
        write_tiny_wan_model(args.model_only, two_experts=not args.single_expert, seed=args.seed)
        print(f"wrote {args.model_only}")
        return
    if not args.out:
        parser.error("give --out ROOT or --model-only DIR")
    root = os.path.join(args.out, "wan_pipeline")
    shutil.rmtree(root, ignore_errors=True)
    for name, case in CASES.items():
        run_case(root, name, case)
    print(f"wrote {root}")


if __name__ == "__main__":
    main()

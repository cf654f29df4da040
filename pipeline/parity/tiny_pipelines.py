"""What the whole-pipeline references share (wan_pipeline.py, i2v_pipeline.py, ti2v_pipeline.py,
step_cache.py): the scheduler Wan's conversion configures, a writer for complete tiny pipeline
directories, and a reference run that keeps the tensors the Rust parity tests compare.

Writes no fixtures of its own: given --out (the fixtures convention of pipeline/parity/) it
returns at once.

Usage: imported; `python pipeline/parity/tiny_pipelines.py --out ROOT` does nothing.
"""

import json
import os
import shutil
import sys

import torch
from diffusers import UniPCMultistepScheduler
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_encoder import make_tiny_text_encoder  # noqa: E402
from transformer import make_tiny_transformer  # noqa: E402
from vae import make_tiny_vae  # noqa: E402

NUM_STEPS = 4
FLOW_SHIFT = 3.0


def wan_scheduler():
    """UniPCMultistepScheduler as diffusers' Wan conversion configures it."""
    return UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=FLOW_SHIFT,
    )


def split_boundary():
    """A boundary_ratio between the 2nd and 3rd timestep of the NUM_STEPS schedule."""
    scheduler = wan_scheduler()
    scheduler.set_timesteps(NUM_STEPS)
    ts = [int(t) for t in scheduler.timesteps]
    return (ts[1] + ts[2]) / 2 / 1000, ts


def write_tiny_pipeline(model_dir, pipe_class, transformer, seed=0, two_experts=False, write_vae=make_tiny_vae,
                        **pipe_config):
    """Writes a complete tiny `pipe_class` directory to model_dir (replacing it) and returns the
    pipeline (f32).

    Components: tokenizer/ + text_encoder/ (umT5, d_model 32; weight seed `seed`), vae/
    (`write_vae(model_dir, seed=seed + 10)`), transformer/ (`transformer` are its config
    overrides; seed + 20), with two_experts transformer_2/ (seed + 30) and a boundary_ratio
    splitting the NUM_STEPS schedule 2 + 2, scheduler/ (UniPC, flow_shift 3.0),
    model_index.json; `pipe_config` goes to the pipeline's constructor (e.g. expand_timesteps).
    """
    shutil.rmtree(model_dir, ignore_errors=True)
    os.makedirs(model_dir)
    tokenizer, text_encoder = make_tiny_text_encoder(model_dir, seed=seed)
    vae = write_vae(model_dir, seed=seed + 10)
    transformer_1 = make_tiny_transformer(os.path.join(model_dir, "transformer"), seed=seed + 20, **transformer)
    transformer_2, boundary_ratio = None, None
    if two_experts:
        transformer_2 = make_tiny_transformer(os.path.join(model_dir, "transformer_2"), seed=seed + 30, **transformer)
        boundary_ratio, _ = split_boundary()
    pipe = pipe_class(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=wan_scheduler(),
        transformer=transformer_1,
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
        **pipe_config,
    )
    pipe.save_pretrained(model_dir)
    return pipe


def load_pipeline(pipe_class, model_dir):
    """Loads model_dir back the way users do (f32, no progress bar), so the reference reads
    exactly the files the Rust side reads."""
    pipe = pipe_class.from_pretrained(model_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_reference(pipe, case, image=None, keep_embeds=False):
    """Runs `pipe` on `case` (prompt, negative_prompt, height, width, num_frames, guidance_scale,
    guidance_scale_2 when not None, seed; NUM_STEPS steps) with `image` when not None.

    Returns (tensors, frames): `tensors` holds noise (the initial latents prepare_latents drew from
    the seed), condition (what an image pipeline's prepare_latents adds to them), prompt_embeds and
    negative_prompt_embeds with keep_embeds, latents (after the last step) and frames
    (output_type="np", F×H×W×3 f32 in [0, 1]), each contiguous; `frames` is the numpy array.
    """
    captured = {}
    prepare_latents = pipe.prepare_latents
    encode_prompt = pipe.encode_prompt

    def keep_noise(*args, **kwargs):
        out = prepare_latents(*args, **kwargs)
        if isinstance(out, tuple):
            captured["noise"] = out[0].clone()
            captured["condition"] = out[1].clone()
        else:
            captured["noise"] = out.clone()
        return out

    def keep_prompt_embeds(*args, **kwargs):
        embeds, negative = encode_prompt(*args, **kwargs)
        captured["prompt_embeds"] = embeds.clone()
        captured["negative_prompt_embeds"] = negative.clone()
        return embeds, negative

    def on_step_end(_pipe, i, t, cb):
        captured["latents"] = cb["latents"].clone()
        return {}

    pipe.prepare_latents = keep_noise
    if keep_embeds:
        pipe.encode_prompt = keep_prompt_embeds
    kwargs = dict(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        height=case["height"],
        width=case["width"],
        num_frames=case["num_frames"],
        num_inference_steps=NUM_STEPS,
        guidance_scale=case["guidance_scale"],
        generator=torch.Generator("cpu").manual_seed(case["seed"]),
        output_type="np",
        callback_on_step_end=on_step_end,
    )
    if case.get("guidance_scale_2") is not None:
        kwargs["guidance_scale_2"] = case["guidance_scale_2"]
    if image is not None:
        kwargs["image"] = image
    with torch.no_grad():
        frames = pipe(**kwargs).frames[0]
    tensors = {k: v.contiguous() for k, v in captured.items()}
    tensors["frames"] = torch.from_numpy(frames.copy()).contiguous()
    return tensors, frames


def write_reference(tensors_path, tensors, settings_path, settings):
    """Writes a run's tensors (safetensors) and its settings (JSON, indent 1)."""
    save_file(tensors, tensors_path)
    with open(settings_path, "w") as f:
        json.dump(settings, f, indent=1)

"""Reference for step caching (diffusers' cache hooks on WanPipeline), compared by
pipeline/tests/step_cache_parity.rs.

diffusers keeps one cache state per `enable_cache` call (here: one per expert, `transformer` and
`transformer_2`) and, within it, one per `cache_context` name (the pipeline's "cond" and
"uncond" passes); the hooks sit on the first and the last block of `WanTransformer3DModel.blocks`.

Writes, under ROOT/step_cache/:
  model/                 the tiny two-expert WanPipeline directory (wan_pipeline.py's writer)
  single_expert/         the same without transformer_2
  <case>/reference.safetensors
                         latents (after the last step), frames (output_type="np", F×H×W×3 f32)
  <case>/settings.json   the call (prompt, negative_prompt, size, frames, steps, guidance, seed),
                         the cache (kind, threshold, and for MagCache max_skip_steps,
                         retention_ratio, mag_ratios, calibrate), `forwards`: every transformer
                         call in order as {expert, branch, skipped}, and for calibration runs
                         `calibration`: {expert: {branch: ratios}}

A forward is "skipped" when the last block's feed-forward did not run during it (First-Block-
Cache still runs block 0; MagCache runs no block).

Usage: python pipeline/parity/step_cache.py --out ROOT
"""

import argparse
import os
import shutil
import sys

import diffusers.pipelines.wan.pipeline_wan as pipeline_wan
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, WanPipeline
from diffusers.hooks import HookRegistry
from diffusers.hooks.mag_cache import _MAG_CACHE_LEADER_BLOCK_HOOK

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_pipelines import load_pipeline, write_reference  # noqa: E402
from wan_pipeline import write_tiny_wan_model  # noqa: E402

STEPS = 12
CALL = dict(
    prompt="A red fox running through fresh snow in a pine forest.",
    negative_prompt="blurry, low quality",
    height=32,
    width=48,
    num_frames=9,
    num_inference_steps=STEPS,
    guidance_scale=4.0,
    seed=11,
)
# Magnitude ratios of 9 values for a 12-step run: diffusers interpolates them (nearest_interp).
MAG_RATIOS = [1.0, 1.02, 1.01, 1.005, 1.003, 0.998, 0.995, 0.99, 0.98]

CASES = {
    # thresholds that skip several forwards on the tiny model, and ones that skip none
    # (the relative L1 changes of this random model are 0.3–0.9: these thresholds sit at least
    # 0.01 away from every value compared, so the decisions do not hang on rounding)
    "first_block_skips": dict(model="model", kind="first_block", threshold=0.5),
    "first_block_none": dict(model="model", kind="first_block", threshold=0.001),
    "mag_skips": dict(model="model", kind="mag", threshold=0.05, max_skip_steps=2, retention_ratio=0.2,
                      mag_ratios=MAG_RATIOS, calibrate=False),
    "mag_none": dict(model="model", kind="mag", threshold=0.0001, max_skip_steps=3, retention_ratio=0.2,
                     mag_ratios=MAG_RATIOS, calibrate=False),
    "mag_calibrate": dict(model="model", kind="mag", threshold=0.06, max_skip_steps=3, retention_ratio=0.2,
                          mag_ratios=None, calibrate=True),
    # one expert without CFG: one state, every forward on "cond"
    "first_block_single_no_cfg": dict(model="single_expert", kind="first_block", threshold=0.37,
                                      guidance_scale=1.0, guidance_scale_2=None),
}


def cache_config(case):
    if case["kind"] == "first_block":
        return FirstBlockCacheConfig(threshold=case["threshold"])
    return MagCacheConfig(
        threshold=case["threshold"],
        max_skip_steps=case["max_skip_steps"],
        retention_ratio=case["retention_ratio"],
        num_inference_steps=STEPS,
        mag_ratios=None if case["mag_ratios"] is None else list(case["mag_ratios"]),
        calibrate=case["calibrate"],
    )


def record_forwards(pipe, forwards, captured):
    """Logs every transformer call as {expert, branch, skipped}."""
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name)
        if model is None:
            continue
        ran = []

        def before(module, args, kwargs, name=name, ran=ran):
            ran.clear()
            text = kwargs["encoder_hidden_states"]
            branch = "cond" if torch.equal(text, captured["prompt_embeds"]) else "uncond"
            forwards.append({"expert": name, "branch": branch, "skipped": None})

        def after(module, args, kwargs, output, ran=ran):
            forwards[-1]["skipped"] = len(ran) == 0

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)
        model.blocks[-1].ffn.register_forward_hook(lambda *_, ran=ran: ran.append(1))


def calibration_of(model):
    """The calibration ratios of every cache_context of a MagCache-hooked transformer."""
    hook = HookRegistry.check_if_exists_or_initialize(model.blocks[0]).get_hook(_MAG_CACHE_LEADER_BLOCK_HOOK)
    return {name: [float(r) for r in state.calibration_ratios] for name, state in hook.state_manager._state_cache.items()}


def run_case(root, name, case):
    model_dir = os.path.join(root, case["model"])
    pipe = load_pipeline(WanPipeline, model_dir)
    experts = [n for n in ("transformer", "transformer_2") if getattr(pipe, n) is not None]
    for expert in experts:
        getattr(pipe, expert).enable_cache(cache_config(case))

    call = dict(CALL)
    call.update({k: case[k] for k in ("guidance_scale",) if k in case})
    guidance_2 = case.get("guidance_scale_2", 3.0 if len(experts) == 2 else None)

    captured, forwards, calibration = {}, [], {}
    encode_prompt = pipe.encode_prompt

    def keep_embeds(*args, **kwargs):
        embeds, negative = encode_prompt(*args, **kwargs)
        captured["prompt_embeds"] = embeds
        return embeds, negative

    def on_step_end(_pipe, i, t, cb):
        captured["latents"] = cb["latents"].clone()
        if case["kind"] == "mag" and case["calibrate"]:
            for expert in experts:
                calibration.setdefault(expert, {}).update(calibration_of(getattr(pipe, expert)))
        return {}

    pipe.encode_prompt = keep_embeds
    record_forwards(pipe, forwards, captured)
    kwargs = dict(call)
    seed = kwargs.pop("seed")
    if guidance_2 is not None:
        kwargs["guidance_scale_2"] = guidance_2
    with torch.no_grad():
        frames = pipe(
            **kwargs,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
            callback_on_step_end=on_step_end,
        ).frames[0]

    out_dir = os.path.join(root, name)
    os.makedirs(out_dir)
    tensors = {"latents": captured["latents"].contiguous(), "frames": torch.from_numpy(frames.copy()).contiguous()}
    settings = dict(call, guidance_scale_2=guidance_2, model=case["model"], cache=case_cache(case),
                    forwards=forwards, calibration=calibration)
    write_reference(
        os.path.join(out_dir, "reference.safetensors"), tensors, os.path.join(out_dir, "settings.json"), settings
    )
    skipped = sum(1 for f in forwards if f["skipped"])
    print(f"  {name}: {skipped} of {len(forwards)} forwards skipped")


def case_cache(case):
    return {k: v for k, v in case.items() if k not in ("model", "guidance_scale", "guidance_scale_2")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="fixtures root; writes ROOT/step_cache/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipeline_wan.is_ftfy_available = lambda: False
    root = os.path.join(args.out, "step_cache")
    shutil.rmtree(root, ignore_errors=True)
    write_tiny_wan_model(os.path.join(root, "model"), two_experts=True, seed=3)
    write_tiny_wan_model(os.path.join(root, "single_expert"), two_experts=False, seed=5)
    for name, case in CASES.items():
        run_case(root, name, case)
    print(f"wrote {root}")


if __name__ == "__main__":
    main()

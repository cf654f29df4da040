"""Reference for the two-expert denoising loop (diffusers WanPipeline), compared by
pipeline/tests/denoise_parity.rs.

Writes ROOT/denoise/ with
  transformer/, transformer_2/   two tiny random WanTransformer3DModel (save_pretrained)
  scheduler/                     the Wan UniPC config (flow_shift 3.0)
  model_index.json               WanPipeline with boundary_ratio
  inputs.safetensors             latents (initial noise), prompt_embeds, negative_prompt_embeds
  outputs.safetensors            final latents of WanPipeline(output_type="latent") and the latents after
                                 every step; `expand_*` the same for expand_timesteps=True (TI2V mode,
                                 one expert, one timestep per token)
  calls.json                     which expert ran at each step, on which text, at which timestep

The boundary is chosen equal to one of the timesteps, so `t >= boundary` and `t > boundary` differ.
"""

import argparse
import json
import os

import torch
from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file

TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=32,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=32,
)
NUM_STEPS = 6
GUIDANCE, GUIDANCE_2 = 4.0, 3.0
LATENTS_SHAPE = (1, 4, 3, 8, 8)
TEXT_SHAPE = (1, 8, 16)


def tiny_transformer(seed):
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY)
    # Random init leaves some tables at zero; give every parameter a visible value.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def wan_scheduler():
    return UniPCMultistepScheduler(
        num_train_timesteps=1000, solver_order=2, prediction_type="flow_prediction", predict_x0=True,
        solver_type="bh2", lower_order_final=True, use_flow_sigmas=True, flow_shift=3.0, final_sigmas_type="zero",
    )


def record_calls(pipe, prompt_embeds, calls):
    """Forward pre-hooks that log (expert, timestep, cond/uncond) for every transformer call."""
    for name in ("transformer", "transformer_2"):
        def hook(module, args, kwargs, name=name):
            text = kwargs["encoder_hidden_states"]
            calls.append({
                "expert": name,
                "timestep": float(kwargs["timestep"].flatten()[0]),
                "text": "cond" if torch.equal(text, prompt_embeds) else "uncond",
            })
        getattr(pipe, name).register_forward_pre_hook(hook, with_kwargs=True)


def run(pipe, latents, prompt_embeds, negative_prompt_embeds, prefix, tensors, **kwargs):
    steps = []

    def on_step_end(_pipe, i, t, cb):
        steps.append(cb["latents"].clone())
        return {}

    out = pipe(
        prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, latents=latents.clone(),
        height=LATENTS_SHAPE[3] * 8, width=LATENTS_SHAPE[4] * 8, num_frames=(LATENTS_SHAPE[2] - 1) * 4 + 1,
        output_type="latent", callback_on_step_end=on_step_end, **kwargs,
    ).frames
    tensors[f"{prefix}latents"] = out.clone()
    for i, s in enumerate(steps):
        tensors[f"{prefix}latents_{i + 1}"] = s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "denoise")
    os.makedirs(root, exist_ok=True)

    scheduler = wan_scheduler()
    scheduler.set_timesteps(NUM_STEPS)
    timesteps = [int(t) for t in scheduler.timesteps]
    # The boundary sits exactly on the 4th timestep: >= sends it to the high-noise expert.
    boundary_ratio = timesteps[3] / 1000
    assert boundary_ratio * 1000 == timesteps[3], timesteps

    high, low = tiny_transformer(1), tiny_transformer(2)
    high.save_pretrained(os.path.join(root, "transformer"))
    low.save_pretrained(os.path.join(root, "transformer_2"))
    wan_scheduler().save_config(os.path.join(root, "scheduler"))
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump({"_class_name": "WanPipeline", "boundary_ratio": boundary_ratio, "expand_timesteps": False,
                   "transformer": ["diffusers", "WanTransformer3DModel"],
                   "transformer_2": ["diffusers", "WanTransformer3DModel"],
                   "scheduler": ["diffusers", "UniPCMultistepScheduler"]}, f, indent=2)

    gen = torch.Generator("cpu").manual_seed(7)
    latents = torch.randn(LATENTS_SHAPE, generator=gen)
    prompt_embeds = torch.randn(TEXT_SHAPE, generator=gen)
    negative_prompt_embeds = torch.randn(TEXT_SHAPE, generator=gen)
    save_file({"latents": latents, "prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds},
              os.path.join(root, "inputs.safetensors"))

    tensors = {}
    calls = []
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=wan_scheduler(), transformer=high,
                       transformer_2=low, boundary_ratio=boundary_ratio)
    record_calls(pipe, prompt_embeds, calls)
    with torch.no_grad():
        run(pipe, latents, prompt_embeds, negative_prompt_embeds, "", tensors,
            num_inference_steps=NUM_STEPS, guidance_scale=GUIDANCE, guidance_scale_2=GUIDANCE_2)
        calls = list(calls)  # the hooks keep logging during the run below
        # TI2V mode: one expert, expand_timesteps, 4 steps, guidance 5.
        pipe_expand = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=wan_scheduler(),
                                  transformer=high, transformer_2=None, boundary_ratio=None, expand_timesteps=True)
        run(pipe_expand, latents, prompt_embeds, negative_prompt_embeds, "expand_", tensors,
            num_inference_steps=4, guidance_scale=5.0)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "outputs.safetensors"))

    assert len(calls) == 2 * NUM_STEPS, calls
    steps = [dict(calls[2 * i], step=i) for i in range(NUM_STEPS)]
    for i in range(NUM_STEPS):  # cond then uncond, same expert and timestep
        c, u = calls[2 * i], calls[2 * i + 1]
        assert (c["text"], u["text"]) == ("cond", "uncond") and c["expert"] == u["expert"], (c, u)
    with open(os.path.join(root, "calls.json"), "w") as f:
        json.dump({"num_steps": NUM_STEPS, "timesteps": timesteps, "boundary_ratio": boundary_ratio,
                   "guidance_scale": GUIDANCE, "guidance_scale_2": GUIDANCE_2, "calls": calls,
                   "experts": [s["expert"] for s in steps]}, f, indent=2)
    print(f"wrote {root}: timesteps {timesteps}, experts {[s['expert'] for s in steps]}")


if __name__ == "__main__":
    main()

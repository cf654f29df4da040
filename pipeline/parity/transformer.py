"""Reference fixtures for the Wan DiT (`WanTransformer3DModel`).

Writes, under ROOT/transformer/<case>/:
  model/                   a tiny random-weight WanTransformer3DModel (save_pretrained layout;
                           the `sharded` case is saved in several shards with an index.json)
  reference.safetensors    inputs.{hidden_states, timestep, encoder_hidden_states}, output
                           (the f32 forward), and intermediates captured with forward hooks:
                           rope.{cos, sin}, patch_embedding.out, cond.{temb, timestep_proj,
                           text}, block0.{in, out}, block0.attn1.{in, out},
                           block0.attn2.{in, ctx, out}, block0.ffn.{in, out}
  (bf16 case only) the same model loaded with torch_dtype=bfloat16 (diffusers keeps its
                           fp32 modules) run on bf16 inputs: output_bf16

Cases (each stresses something the others do not):
  tiny          baseline: 2 heads × 16, batch 2 with two different timesteps, 3 frames, 8×8;
                also the bf16 run
  odd_shapes    non-square 6×10 latents, 5 frames, head dim 20 (RoPE split 8/6/6),
                cross_attn_norm false (norm2 is the identity)
  rope36        head dim 36 (RoPE split 12/12/12), patch (2,2,2) over 4 frames,
                in_channels 5 → out_channels 3
  sharded       the baseline architecture saved in several shards (index.json path)
  expand        expand_timesteps (Wan2.2 TI2V): one timestep per latent token, [B, seq]

`make_tiny_transformer(dir, seed, **overrides)` is reusable: it writes dir and returns the model.

Usage: python pipeline/parity/transformer.py --out ROOT
"""

import argparse
import os
import shutil

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

BASE = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=24,
    freq_dim=32,
    ffn_dim=48,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)

CASES = {
    "tiny": dict(config={}, batch=2, frames=3, height=8, width=8, text_len=7),
    "odd_shapes": dict(
        config=dict(num_attention_heads=3, attention_head_dim=20, ffn_dim=40, cross_attn_norm=False),
        batch=1,
        frames=5,
        height=6,
        width=10,
        text_len=5,
    ),
    "rope36": dict(
        config=dict(attention_head_dim=36, patch_size=(2, 2, 2), in_channels=5, out_channels=3),
        batch=1,
        frames=4,
        height=4,
        width=6,
        text_len=6,
    ),
    "sharded": dict(config={}, batch=1, frames=2, height=4, width=6, text_len=4, max_shard_size="40KB"),
    "expand": dict(config={}, batch=2, frames=2, height=4, width=8, text_len=5, expand_timesteps=True),
}


def make_tiny_transformer(model_dir, seed=0, max_shard_size=None, **overrides):
    """Builds a tiny random-weight WanTransformer3DModel and saves it to model_dir.

    Every parameter is drawn again (norm gains around 1, biases and modulation tables around 0)
    so that loading each one matters. Returns the f32 model in eval mode.
    """
    config = dict(BASE)
    config.update(overrides)
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias") or "scale_shift_table" in name:
                param.copy_(0.2 * noise)
            else:
                fan_in = param[0].numel() if param.ndim > 1 else param.numel()
                param.copy_(noise / fan_in**0.5)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(model_dir, safe_serialization=True, **kwargs)
    return model


def capture(model):
    """Registers forward hooks that record the intermediates the Rust tests compare."""
    seen = {}

    def keep(name, value):
        if value is not None and name not in seen:
            seen[name] = value.detach().float().contiguous().clone()

    def on_rope(_m, _args, out):
        keep("rope.cos", out[0])
        keep("rope.sin", out[1])

    def on_patch(_m, _args, out):
        keep("patch_embedding.out", out)

    def on_cond(_m, _args, out):
        keep("cond.temb", out[0])
        keep("cond.timestep_proj", out[1])
        keep("cond.text", out[2])

    def on_block(_m, args, out):
        keep("block0.in", args[0])
        keep("block0.out", out)

    def on_attn1(_m, args, out):
        keep("block0.attn1.in", args[0])
        keep("block0.attn1.out", out)

    def on_attn2(_m, args, out):
        keep("block0.attn2.in", args[0])
        keep("block0.attn2.ctx", args[1])
        keep("block0.attn2.out", out)

    def on_ffn(_m, args, out):
        keep("block0.ffn.in", args[0])
        keep("block0.ffn.out", out)

    handles = [
        model.rope.register_forward_hook(on_rope),
        model.patch_embedding.register_forward_hook(on_patch),
        model.condition_embedder.register_forward_hook(on_cond),
        model.blocks[0].register_forward_hook(on_block),
        model.blocks[0].attn1.register_forward_hook(on_attn1),
        model.blocks[0].attn2.register_forward_hook(on_attn2),
        model.blocks[0].ffn.register_forward_hook(on_ffn),
    ]
    return seen, handles


def write_case(root, name, spec, seed):
    case_dir = os.path.join(root, "transformer", name)
    model_dir = os.path.join(case_dir, "model")
    shutil.rmtree(case_dir, ignore_errors=True)
    model = make_tiny_transformer(model_dir, seed, spec.get("max_shard_size"), **spec["config"])
    cfg = model.config
    p_t, p_h, p_w = cfg.patch_size

    generator = torch.Generator().manual_seed(seed + 100)
    batch = spec["batch"]
    hidden = torch.randn(batch, cfg.in_channels, spec["frames"], spec["height"], spec["width"], generator=generator)
    text = torch.randn(batch, spec["text_len"], cfg.text_dim, generator=generator)
    if spec.get("expand_timesteps"):
        seq = (spec["frames"] // p_t) * (spec["height"] // p_h) * (spec["width"] // p_w)
        # TI2V: the first latent frame's tokens are clean (t = 0), the rest share the step's t.
        timestep = torch.rand(batch, 1, generator=generator) * 1000.0
        timestep = timestep.expand(batch, seq).clone()
        timestep[:, : (spec["height"] // p_h) * (spec["width"] // p_w)] = 0.0
        timestep[:, -1] = 17.25
    else:
        timestep = torch.tensor([999.0, 250.5, 10.0, 0.0][:batch])

    seen, handles = capture(model)
    with torch.no_grad():
        output = model(hidden, timestep, text, return_dict=False)[0]
    for handle in handles:
        handle.remove()

    tensors = dict(seen)
    tensors["inputs.hidden_states"] = hidden
    tensors["inputs.timestep"] = timestep.float()
    tensors["inputs.encoder_hidden_states"] = text
    tensors["output"] = output.float().contiguous()

    if name == "tiny":
        # diffusers' mixed precision: bf16 weights, fp32 `_keep_in_fp32_modules`, bf16 inputs.
        bf16 = WanTransformer3DModel.from_pretrained(model_dir, torch_dtype=torch.bfloat16).eval()
        with torch.no_grad():
            out = bf16(hidden.bfloat16(), timestep, text.bfloat16(), return_dict=False)[0]
        tensors["output_bf16"] = out.float().contiguous()

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(case_dir, "reference.safetensors"))
    print(f"transformer/{name}: output {tuple(output.shape)}, |out| max {output.abs().max():.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for seed, (name, spec) in enumerate(CASES.items()):
        write_case(args.out, name, spec, seed * 10)


if __name__ == "__main__":
    main()

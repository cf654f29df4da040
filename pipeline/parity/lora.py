"""Reference fixtures for LoRA fusion into the Wan DiT, compared by pipeline/tests/lora_parity.rs.

Writes ROOT/lora/ with
  model/                  the tiny random-weight WanTransformer3DModel of transformer.py (base weights)
  peft.safetensors        a rank-4 LoRA in diffusers/PEFT keys (`transformer.blocks.N.attn1.to_q.lora_A.weight`,
                          `…lora_B.weight`) over every block Linear, proj_out and time_proj; no alpha
  peft_meta.safetensors   a PEFT-format LoRA as diffusers' `save_lora_weights` writes it with adapter metadata
                          (`lora_adapter_metadata`: lora_alpha 8 for rank 4, an alpha_pattern entry for one module),
                          which sets each module's scale alpha/r
  kohya.safetensors       a rank-4 LoRA in the original Wan / ComfyUI / kohya keys
                          (`diffusion_model.blocks.N.self_attn.q.lora_down.weight`, `…lora_up.weight`, `….alpha`,
                          `….diff_b`) with per-module alphas (scale alpha/rank), head.head and text_embedding.0
  diff.safetensors        full-weight deltas in original keys (`….diff`, `….diff_b`, norms, modulation) — diffusers
                          0.42.1 ignores `.diff` keys, so its reference is the plain sum W + strength·diff
  reference.safetensors   inputs.{hidden_states, timestep, encoder_hidden_states}; output_base; output_peft,
                          output_peft_meta, output_kohya (diffusers: `WanPipeline.lora_state_dict` → `load_lora_into_transformer` →
                          `fuse_lora(lora_scale=strength)`); output_diff; output_stacked (peft then kohya then diff,
                          fused in f32 by hand); strengths.{peft, kohya, diff}

diffusers' fusion needs `peft` (installed by `make deps`). A by-hand fuse from diffusers' own key
conversion (`WanPipeline.lora_state_dict`) is computed too, as a cross-check: both must agree.

Usage: python pipeline/parity/lora.py --out ROOT
"""

import argparse
import copy
import json
import os
import shutil
import sys

import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transformer import make_tiny_transformer  # noqa: E402

RANK = 4
STRENGTH = {"peft": 0.8, "peft_meta": 0.7, "kohya": 1.3, "diff": 0.5}
META = {"lora_alpha": 8.0, "alpha_pattern": {"blocks.1.ffn.net.2": 2.0}}
# diffusers name → original Wan name, for the block Linears.
BLOCK_LINEARS = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def lora_pair(gen, out_f, in_f, rank=RANK):
    down = torch.randn(rank, in_f, generator=gen) / in_f**0.5
    up = torch.randn(out_f, rank, generator=gen) * 0.3
    return down, up


def make_peft(model, gen):
    sd = {}
    params = dict(model.named_parameters())
    targets = [f"blocks.{i}.{m}" for i in range(len(model.blocks)) for m in BLOCK_LINEARS]
    targets += ["proj_out", "condition_embedder.time_proj"]
    for t in targets:
        out_f, in_f = params[f"{t}.weight"].shape
        down, up = lora_pair(gen, out_f, in_f)
        sd[f"transformer.{t}.lora_A.weight"] = down
        sd[f"transformer.{t}.lora_B.weight"] = up
    return sd


def make_kohya(model, gen):
    sd = {}
    params = dict(model.named_parameters())
    for i in range(len(model.blocks)):
        for ours, theirs in BLOCK_LINEARS.items():
            out_f, in_f = params[f"blocks.{i}.{ours}.weight"].shape
            down, up = lora_pair(gen, out_f, in_f)
            key = f"diffusion_model.blocks.{i}.{theirs}"
            sd[f"{key}.lora_down.weight"] = down
            sd[f"{key}.lora_up.weight"] = up
            # self-attention alpha 8 (scale 2), cross-attention alpha 2 (scale 0.5), ffn alpha 4 (scale 1)
            alpha = {"self_attn": 8.0, "cross_attn": 2.0, "ffn": 4.0}[theirs.split(".")[0]]
            sd[f"{key}.alpha"] = torch.tensor(alpha)
            if theirs in ("self_attn.o", "ffn.2"):
                sd[f"{key}.diff_b"] = 0.1 * torch.randn(out_f, generator=gen)
    for theirs, ours in [("head.head", "proj_out"), ("text_embedding.0", "condition_embedder.text_embedder.linear_1")]:
        out_f, in_f = params[f"{ours}.weight"].shape
        down, up = lora_pair(gen, out_f, in_f)
        sd[f"diffusion_model.{theirs}.lora_down.weight"] = down
        sd[f"diffusion_model.{theirs}.lora_up.weight"] = up
    return sd


def make_diff(model, gen):
    params = dict(model.named_parameters())
    theirs_to_ours = {
        "blocks.0.self_attn.q.diff": "blocks.0.attn1.to_q.weight",
        "blocks.0.self_attn.q.diff_b": "blocks.0.attn1.to_q.bias",
        "blocks.1.ffn.2.diff": "blocks.1.ffn.net.2.weight",
        "blocks.0.self_attn.norm_k.diff": "blocks.0.attn1.norm_k.weight",
        "blocks.1.norm3.diff": "blocks.1.norm2.weight",
        "blocks.1.modulation.diff": "blocks.1.scale_shift_table",
        "head.modulation.diff": "scale_shift_table",
        "time_projection.1.diff_b": "condition_embedder.time_proj.bias",
        "patch_embedding.diff": "patch_embedding.weight",
    }
    sd, deltas = {}, {}
    for theirs, ours in theirs_to_ours.items():
        d = 0.05 * torch.randn(params[ours].shape, generator=gen)
        sd[f"diffusion_model.{theirs}"] = d
        deltas[ours] = d
    return sd, deltas


def peft_metadata(sd):
    """The `lora_adapter_metadata` diffusers writes (LoraConfig kwargs, prefixed with `transformer.`)."""
    targets = sorted({k[len("transformer.") :].split(".lora_")[0] for k in sd})
    config = dict(r=RANK, lora_alpha=META["lora_alpha"], alpha_pattern=META["alpha_pattern"], rank_pattern={},
                  target_modules=targets, use_rslora=False, use_dora=False, lora_dropout=0.0, lora_bias=False,
                  init_lora_weights=True)
    return {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}, sort_keys=True)}


def meta_scale(module):
    return META["alpha_pattern"].get(module, META["lora_alpha"]) / RANK


def converted_deltas(path, with_meta=False):
    """W deltas (before strength) from diffusers' own key conversion, fused by hand (scale 1 per layer, as
    diffusers' PEFT config has lora_alpha = r when the file carries no adapter metadata)."""
    sd = WanPipeline.lora_state_dict(path)
    deltas = {}
    for key, value in sd.items():
        assert key.startswith("transformer."), key
        key = key[len("transformer.") :]
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            up = sd[f"transformer.{module}.lora_B.weight"]
            scale = meta_scale(module) if with_meta else 1.0
            deltas[f"{module}.weight"] = deltas.get(f"{module}.weight", 0) + scale * (up.double() @ value.double())
        elif key.endswith(".lora_B.bias"):
            module = key[: -len(".lora_B.bias")]
            deltas[f"{module}.bias"] = deltas.get(f"{module}.bias", 0) + value.double()
    return deltas


def fused_by_hand(model, deltas_and_strengths):
    fused = copy.deepcopy(model)
    params = dict(fused.named_parameters())
    with torch.no_grad():
        for deltas, strength in deltas_and_strengths:
            for name, delta in deltas.items():
                p = params[name]
                p.copy_((p.double() + strength * delta.double()).float())
    return fused


def fused_by_diffusers(base_dir, path, strength):
    model = WanTransformer3DModel.from_pretrained(base_dir).eval()
    sd, metadata = WanPipeline.lora_state_dict(path, return_lora_metadata=True)
    WanPipeline.load_lora_into_transformer(sd, transformer=model, adapter_name="x", metadata=metadata)
    model.fuse_lora(lora_scale=strength)
    model.unload_lora()
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = os.path.join(args.out, "lora")
    shutil.rmtree(root, ignore_errors=True)
    model_dir = os.path.join(root, "model")
    model = make_tiny_transformer(model_dir, seed=7)

    gen = torch.Generator().manual_seed(1234)
    files = {"peft": make_peft(model, gen), "peft_meta": make_peft(model, gen), "kohya": make_kohya(model, gen)}
    diff_sd, diff_deltas = make_diff(model, gen)
    files["diff"] = diff_sd
    paths = {}
    for name, sd in files.items():
        paths[name] = os.path.join(root, f"{name}.safetensors")
        meta = peft_metadata(sd) if name == "peft_meta" else None
        save_file({k: v.contiguous() for k, v in sd.items()}, paths[name], metadata=meta)

    hidden = torch.randn(2, 4, 3, 8, 8, generator=gen)
    text = torch.randn(2, 7, 24, generator=gen)
    timestep = torch.tensor([999.0, 250.5])

    def run(m):
        with torch.no_grad():
            return m(hidden, timestep, text, return_dict=False)[0].float().contiguous()

    deltas = {
        "peft": converted_deltas(paths["peft"]),
        "peft_meta": converted_deltas(paths["peft_meta"], with_meta=True),
        "kohya": converted_deltas(paths["kohya"]),
        "diff": diff_deltas,
    }
    tensors = {
        "inputs.hidden_states": hidden,
        "inputs.timestep": timestep,
        "inputs.encoder_hidden_states": text,
        "output_base": run(model),
        "output_diff": run(fused_by_hand(model, [(diff_deltas, STRENGTH["diff"])])),
        "output_stacked": run(fused_by_hand(model, [(deltas[n], STRENGTH[n]) for n in ("peft", "kohya", "diff")])),
    }
    # The reference is diffusers' own fuse (it needs `peft`, which `make deps` installs); the
    # by-hand fuse is only a cross-check of it.
    import peft  # noqa: F401

    for name in ("peft", "peft_meta", "kohya"):
        by_hand = run(fused_by_hand(model, [(deltas[name], STRENGTH[name])]))
        out = run(fused_by_diffusers(model_dir, paths[name], STRENGTH[name]))
        err = (out - by_hand).abs().max().item()
        print(f"lora/{name}: diffusers fuse_lora vs by-hand fuse max |diff| {err:.2e}")
        assert err < 1e-4, f"{name}: diffusers and the by-hand fuse disagree ({err})"
        tensors[f"output_{name}"] = out
        change = (out - tensors["output_base"]).abs().max().item()
        print(f"lora/{name}: output moved by {change:.3f} from the base")
    for name, s in STRENGTH.items():
        tensors[f"strengths.{name}"] = torch.tensor([s], dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(root, "reference.safetensors"))


if __name__ == "__main__":
    main()

"""GPU breakdown of one diffusers `WanTransformerBlock` of the Wan2.2 T2V-A14B expert, the
counterpart of `cargo run --release -p t2v-pipeline --example bench_block` (same pieces, same
shapes, same timing: median of --runs calls after two warm-ups, CUDA synchronised around each).

Random bf16 weights drawn as the Rust example draws them (`loader::random_weights`: N(0, 0.02),
norm gains 1),
diffusers' `_keep_in_fp32_modules` in f32. "rope apply" is the rotation
diffusers' `WanAttnProcessor` applies to q and k (re-stated here: it is a closure there).

Usage: python pipeline/bench/bench_block.py [--runs 10] [--sizes 480x832,720x1280] [--frames 81]
"""

import argparse
import statistics
import time

VAE_STRIDE = (4, 8, 8)
TEXT_LEN = 512


def rope_apply(x, cos, sin):
    """diffusers' rotation of channel pairs (x1, x2) → (x1·cos − x2·sin, x1·sin + x2·cos)."""
    import torch

    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out


def timed(runs, fn):
    import torch

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="ignored: this script writes no fixtures")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sizes", default="480x832,720x1280")
    parser.add_argument("--frames", type=int, default=81)
    args = parser.parse_args()
    if args.out is not None:
        return

    import torch
    import torch.nn.functional as F
    from diffusers import WanTransformer3DModel

    assert torch.cuda.is_available(), "no CUDA device"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = WanTransformer3DModel(num_layers=1).eval()
    torch.set_default_dtype(torch.float32)
    for name, param in model.named_parameters():
        with torch.no_grad():
            if name.endswith("gamma") or (param.dim() == 1 and "norm" in name):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
        if any(part in model._keep_in_fp32_modules for part in name.split(".")):
            param.data = param.data.float()
    cfg = model.config
    block = model.blocks[0]
    dim = cfg.num_attention_heads * cfg.attention_head_dim
    bf16 = dict(device="cuda", dtype=torch.bfloat16)

    with torch.no_grad():
        for size in args.sizes.split(","):
            height, width = (int(v) for v in size.split("x"))
            frames = (args.frames - 1) // VAE_STRIDE[0] + 1
            h, w = height // VAE_STRIDE[1], width // VAE_STRIDE[2]
            tokens = frames * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
            latents = torch.randn(1, cfg.in_channels, frames, h, w, **bf16)
            x = torch.randn(1, tokens, dim, **bf16)
            context = torch.randn(1, TEXT_LEN, dim, **bf16)
            timestep_proj = torch.randn(1, 6, dim, **bf16) * 0.1
            q = torch.randn(1, tokens, cfg.num_attention_heads, cfg.attention_head_dim, **bf16)
            weight = torch.randn(dim, dim, **bf16) * 0.02
            rotary = model.rope(latents)
            t = q.permute(0, 2, 1, 3)
            rows = [
                ("rope tables", timed(args.runs, lambda: model.rope(latents))),
                ("rope apply", timed(args.runs, lambda: rope_apply(q, *rotary))),
                ("sdpa", timed(args.runs, lambda: F.scaled_dot_product_attention(t, t, t))),
                ("linear 5120", timed(args.runs, lambda: F.linear(x, weight))),
                ("attn1", timed(args.runs, lambda: block.attn1(x, None, None, rotary))),
                ("attn2", timed(args.runs, lambda: block.attn2(x, context, None, None))),
                ("ffn", timed(args.runs, lambda: block.ffn(x))),
                ("block", timed(args.runs, lambda: block(x, context, timestep_proj, rotary))),
            ]
            print(f"diffusers {height}x{width}x{args.frames} ({tokens} tokens), median of {args.runs}:")
            for what, seconds in rows:
                print(f"  {what:<12} {seconds * 1e3:>9.3f} ms")
            print(f"  sdpa kernels: {sdpa_kernels(t)}")


def sdpa_kernels(t):
    """Names of the CUDA kernels one SDPA call launches (which backend PyTorch picked)."""
    import torch
    import torch.nn.functional as F

    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            F.scaled_dot_product_attention(t, t, t)
            torch.cuda.synchronize()
        names = {e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA}
        return sorted(n[:90] for n in names)
    except Exception as err:  # the profiler is a diagnostic only
        return f"profiler unavailable: {err}"


if __name__ == "__main__":
    main()

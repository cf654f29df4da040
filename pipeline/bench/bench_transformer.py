"""GPU benchmark of diffusers' WanTransformer3DModel forward, the counterpart of
`cargo run --release -p t2v-pipeline --example bench_transformer`.

The Wan2.2 T2V-A14B expert (14.3 B parameters) with random weights, created on CUDA in bf16
with diffusers' `_keep_in_fp32_modules` in fp32 (as `from_pretrained(torch_dtype=bf16)` leaves
them), one forward at 480×832 and 1280×720, 81 frames, 512 text tokens, native SDPA attention.
`--init normal` (the default) draws the weights as the Rust example does (`loader::random_weights`:
N(0, 0.02), norm gains 1), so both run on the same weight distribution (an H100's clocks can depend on the data);
`--init default` keeps diffusers' own initialisation.
Prints the median / min time after a warm-up, TFLOP/s (same FLOP count as the Rust example),
torch.cuda.max_memory_allocated / max_memory_reserved, and the process memory nvidia-smi reports
(the number the Rust example prints).

Usage: python pipeline/bench/bench_transformer.py [--runs 3] [--sizes 480x832,720x1280]
       [--frames 81] [--layers N] [--init normal|default]
Given --out (the fixtures convention of pipeline/parity/) it writes nothing and returns at once.
Peak memory of the Rust side: see pipeline/bench/cuda_peak_memory.py.
"""

import argparse
import os
import statistics
import subprocess
import time

VAE_STRIDE = (4, 8, 8)
TEXT_LEN = 512


def forward_flops(cfg, tokens, text_len):
    s, l, d, ffn = float(tokens), float(text_len), float(cfg.num_attention_heads * cfg.attention_head_dim), float(cfg.ffn_dim)
    per_block = (
        2 * s * d * d * 4 + 2 * s * d * d * 2 + 2 * l * d * d * 2 + 2 * s * d * ffn * 2 + 4 * s * s * d + 4 * s * l * d
    )
    patch = cfg.in_channels * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    edges = 2 * s * d * patch * 2 + 2 * l * cfg.text_dim * d
    return cfg.num_layers * per_block + edges


def process_gpu_mib():
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(mib)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="ignored: this script writes no fixtures")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="480x832,720x1280")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--init", choices=["normal", "default"], default="normal")
    args = parser.parse_args()
    if args.out is not None:
        print("bench_transformer.py: a GPU benchmark, no fixtures to write")
        return

    import torch
    from diffusers import WanTransformer3DModel

    assert torch.cuda.is_available(), "no CUDA device"
    torch.manual_seed(0)
    overrides = {"num_layers": args.layers} if args.layers else {}
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**overrides).eval()
    torch.set_default_dtype(torch.float32)
    keep = model._keep_in_fp32_modules
    for name, param in model.named_parameters():
        if args.init == "normal":
            with torch.no_grad():
                if name.endswith("gamma") or (param.dim() == 1 and "norm" in name):
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, 0.02)
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    torch.cuda.synchronize()
    print(
        f"A14B expert (diffusers, {args.init} init): {cfg.num_layers} layers, {n_params / 1e9:.2f} B parameters, "
        f"bf16 on cuda; "
        f"weights resident: {process_gpu_mib()} MiB"
    )

    for size in args.sizes.split(","):
        height, width = (int(v) for v in size.split("x"))
        frames = (args.frames - 1) // VAE_STRIDE[0] + 1
        h, w = height // VAE_STRIDE[1], width // VAE_STRIDE[2]
        tokens = frames * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
        latents = torch.randn(1, cfg.in_channels, frames, h, w).to("cuda", torch.bfloat16)
        text = torch.randn(1, TEXT_LEN, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
        timestep = torch.tensor([875.0], device="cuda")
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            model(latents, timestep, text, return_dict=False)  # warm-up
            torch.cuda.synchronize()
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                out = model(latents, timestep, text, return_dict=False)[0]
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                del out
        median = statistics.median(times)
        tflops = forward_flops(cfg, tokens, TEXT_LEN) / median / 1e12
        print(
            f"{height}x{width}x{args.frames}: {tokens} tokens, median {median:.3f} s (min {min(times):.3f} s, "
            f"max {max(times):.3f} s, {args.runs} runs), {tflops:.0f} TFLOP/s, max allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, "
            f"max reserved {torch.cuda.max_memory_reserved() / 2**20:.0f} MiB, process GPU memory {process_gpu_mib()} MiB"
        )


if __name__ == "__main__":
    main()

"""The fast-path benchmark (`make bench-fast`): diffusers' side, the stages, and the table.

Stages (`--run STAGE[,STAGE…]`, or `all`; each one well under 10 minutes on one H200, logs in
`--out DIR`, default build/bench-fast):
  prep        the A14B-shaped model directory (bench_pipeline.py --write-model) and an
              A14B-sized Lightning-format LoRA pair of `--rank` (64): `diffusion_model.blocks.N.
              {self_attn,cross_attn}.{q,k,v,o}` and `ffn.{0,2}` `.lora_down.weight` /
              `.lora_up.weight` / `.alpha`, bf16, drawn on the GPU
  profile     torch.profiler over the op our FP8 linear calls (`_scaled_mm`, row-wise scales, the
              same layouts: fp8 [M, K] row-major × weightᵀ column-major, bf16 out) and the bf16
              matmul, at an A14B FFN shape: kernel names and CUDA times (same libtorch as tch)
  forward     ours: one expert forward at 720p, bf16 then FP8 (bench_fast --mode forward)
  lora        ours: read + fuse the LoRA pair into both experts (bench_fast --mode lora)
  lightning   ours: 4 steps, no CFG, 720p 81 frames, bf16, text + 4 forwards + VAE decode; the
              text encoder is parked after encoding (both experts and it do not fit 80 GB with
              720p activations), as in every 720p run here
  fp8-720p    ours: the same run in FP8 (saved for the PSNR)
  psnr-480p   ours: 480p 4-step runs in bf16 and in FP8, text encoder parked after encoding,
              both experts resident; the FP8 run's peak (allocator, under the LD_PRELOAD shim)
              is the "A14B FP8 480p peak" row
  base        ours: 3 steps of the base sampler (CFG 4.0 / 3.0) at 720p, extrapolated to 40
  diffusers-lightning   diffusers: `load_lora_weights` + `fuse_lora` of the pair into both
              experts (timed), then the 4-step run at 720p with guidance 1.0; the text encoder
              is moved to the CPU after encoding, as ours parks it
  diffusers-base        diffusers: 3 base steps at 720p, extrapolated to 40
  table       PSNR and per-step latent error of the FP8 runs against bf16 (same seed), and the
              table from every stage's `RESULT key=value` lines

Other entry points: `--compare A B` (two `bench_fast --save` directories), `--table DIR`.
Given --out with no --run (the fixtures convention of pipeline/parity/) it writes nothing.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

STAGES = ["prep", "profile", "forward", "lora", "lightning", "fp8-720p", "psnr-480p", "base",
          "diffusers-lightning", "diffusers-base", "table"]
BASE_STEPS, FULL_STEPS = 3, 40


def ours(out, name, *args, peak=False):
    """Runs the release bench_fast example, teeing its output to OUT/NAME.log."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.environ.get("BENCH_FAST_BIN", os.path.join(target, "release", "examples", "bench_fast"))
    env = dict(os.environ)
    if peak:
        env["LD_PRELOAD"] = os.path.join(ROOT, "build", "gpu", "libt2v_peak_memory.so")
        env["T2V_PEAK_MEMORY_PROGRAMS"] = "bench_fast"
    run(out, name, [exe, *args], env)


def run(out, name, cmd, env=None):
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            print(line, end="", flush=True)
            log.write(line)
        code = proc.wait()
    print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    if code != 0:
        raise SystemExit(f"stage {name} failed (exit {code}); see {out}/{name}.log")


def write_lora(path, cfg, rank, device, seed):
    """An A14B-sized LoRA in the Lightning (original Wan / kohya) key format."""
    import torch
    from safetensors.torch import save_file

    dim, ffn = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"]
    modules = {f"{attn}.{p}": (dim, dim) for attn in ("self_attn", "cross_attn") for p in "qkvo"}
    modules.update({"ffn.0": (dim, ffn), "ffn.2": (ffn, dim)})
    gen = torch.Generator(device).manual_seed(seed)
    tensors = {}
    for block in range(cfg["num_layers"]):
        for name, (fan_in, fan_out) in modules.items():
            key = f"diffusion_model.blocks.{block}.{name}"
            down = torch.randn(rank, fan_in, generator=gen, device=device) / fan_in**0.5
            up = torch.randn(fan_out, rank, generator=gen, device=device) * 1e-3
            tensors[f"{key}.lora_down.weight"] = down.to(torch.bfloat16).cpu()
            tensors[f"{key}.lora_up.weight"] = up.to(torch.bfloat16).cpu()
            tensors[f"{key}.alpha"] = torch.tensor(float(rank), dtype=torch.bfloat16)
    save_file(tensors, path)
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path) / 2**30:.2f} GiB")


def prep(args):
    if not args.tiny:
        write_model(args)
    with open(os.path.join(args.model, "transformer", "config.json")) as f:
        cfg = json.load(f)
    device = "cuda" if not args.tiny else "cpu"
    for i, name in enumerate(("high", "low")):
        write_lora(os.path.join(args.out, f"lora_{name}.safetensors"), cfg, args.rank, device, i)


def write_model(args):
    tokenizer = os.path.join(ROOT, "build", "fixtures", "text_encoder", "tokenizer")
    if not os.path.isdir(tokenizer):
        subprocess.run([sys.executable, os.path.join(ROOT, "pipeline", "parity", "text_encoder.py"),
                        "--out", os.path.join(ROOT, "build", "fixtures")], check=True)
    subprocess.run([sys.executable, os.path.join(HERE, "bench_pipeline.py"), "--write-model", args.model,
                    "--tokenizer", tokenizer], check=True)


def profile(args):
    """Kernel names of the FP8 product our Linear calls, and of the bf16 one it replaces."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    m, k, n = (75600, 13824, 5120) if not args.tiny else (64, 32, 48)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5

    def quantize(t):
        # As pipeline/src/wan/fp8.rs: amax per row, a power-of-two scale, a mul in t's dtype by
        # its (exact) reciprocal, then a contiguous cast to e4m3.
        amax = torch.linalg.vector_norm(t, float("inf"), dim=-1, keepdim=True, dtype=torch.float32)
        scale = torch.exp2(torch.ceil(torch.log2(amax.clamp_min(1e-12) / 448.0)))
        q = (t * scale.reciprocal().to(t.dtype)).to(torch.float8_e4m3fn)
        return q, scale

    wq, ws = quantize(w)

    def fp8():
        xq, xs = quantize(x)
        return torch._scaled_mm(xq, wq.t(), xs, ws.t(), out_dtype=torch.bfloat16, use_fast_accum=True)

    def bf16():
        return torch.nn.functional.linear(x, w)

    for name, fn in (("fp8 (quantise x + _scaled_mm)", fp8), ("bf16 linear", bf16)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"profile: {name}, [{m}, {k}] x [{n}, {k}]^T")
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=8))
        kernels = [e.key for e in prof.key_averages() if e.device_type.name == "CUDA"]
        total = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA") / 5 / 1e3
        print(f"RESULT profile_{'fp8' if 'fp8' in name else 'bf16'}_ms={total:.3f}")
        print(f"RESULT profile_{'fp8' if 'fp8' in name else 'bf16'}_kernels={'|'.join(kernels)[:400]}")
    ref = bf16().float()
    print(f"RESULT profile_rel_error={((fp8().float() - ref).norm() / ref.norm()).item():.4f}")


def diffusers_run(args, lightning):
    """diffusers' WanPipeline on the same configs: the Lightning LoRA fused + 4 steps, or base steps."""
    import torch
    from bench_pipeline import build

    ns = argparse.Namespace(model=args.model, device="cuda", dtype="bf16", vae_dtype="bf16")
    start = time.perf_counter()
    pipe = build(ns)
    torch.cuda.synchronize()
    print(f"diffusers: built in {time.perf_counter() - start:.1f} s", flush=True)
    if lightning:
        start = time.perf_counter()
        pipe.load_lora_weights(os.path.join(args.out, "lora_high.safetensors"), adapter_name="high")
        pipe.load_lora_weights(os.path.join(args.out, "lora_low.safetensors"), adapter_name="low",
                               load_into_transformer_2=True)
        pipe.fuse_lora(components=["transformer", "transformer_2"], lora_scale=1.0)
        torch.cuda.synchronize()
        fuse = time.perf_counter() - start
        print(f"diffusers: LoRA pair loaded and fused in {fuse:.2f} s")
        print(f"RESULT diffusers_lora_fuse_s={fuse:.3f}")
    steps, guidance = (4, 1.0) if lightning else (BASE_STEPS, 4.0)
    marks, times = {}, []

    def on_step(pipeline, i, t, kwargs):
        torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - marks.get("last", marks["start"]))
        marks["last"] = now
        print(f"diffusers: step {i + 1}/{steps} {times[-1]:.3f} s", flush=True)
        return {}

    decode = pipe.vae.decode

    def timed_decode(*a, **k):
        torch.cuda.synchronize()
        marks["decode"] = time.perf_counter()
        out = decode(*a, **k)
        torch.cuda.synchronize()
        marks["decode_end"] = time.perf_counter()
        return out

    pipe.vae.decode = timed_decode
    encode = pipe.encode_prompt

    def timed_encode(*a, **k):
        out = encode(*a, **k)
        # Parked after encoding, as ours runs (policy text-offload): both experts, the encoder
        # and a 720p decode do not fit 80 GB together.
        pipe.text_encoder.to("cpu")
        torch.cuda.synchronize()
        marks["last"] = marks["encode_end"] = time.perf_counter()
        return out

    pipe.encode_prompt = timed_encode
    torch.cuda.synchronize()
    marks["start"] = time.perf_counter()
    with torch.no_grad():
        pipe(prompt="A cat walks on the grass, realistic", height=720, width=1280, num_frames=81,
             num_inference_steps=steps, guidance_scale=guidance, guidance_scale_2=3.0 if not lightning else 1.0,
             generator=torch.Generator("cpu").manual_seed(0), output_type="np", callback_on_step_end=on_step)
    torch.cuda.synchronize()
    total = time.perf_counter() - marks["start"]
    decode_s = marks["decode_end"] - marks["decode"]
    step = sum(times) / len(times)
    # Steps are timed from the end of encode_prompt; the rest before them is the text phase.
    text = marks["encode_end"] - marks["start"]
    prefix = "diffusers_lightning" if lightning else "diffusers_base"
    print(f"diffusers: total {total:.2f} s, {step:.3f} s/step, decode {decode_s:.2f} s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    for key, value in (("total_s", total), ("step_s", step), ("decode_s", decode_s), ("text_s", max(text, 0.0))):
        print(f"RESULT {prefix}_{key}={value:.3f}")


def load_safetensors(path):
    from safetensors.torch import load_file
    return load_file(path)


def psnr(a, b):
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def compare(dir_a, dir_b, label):
    """PSNR of B's frames against A's and each step's relative latent error."""
    fa, fb = (load_safetensors(os.path.join(d, "frames.safetensors"))["frames"] for d in (dir_a, dir_b))
    la, lb = (load_safetensors(os.path.join(d, "latents.safetensors")) for d in (dir_a, dir_b))
    errors = []
    for key in sorted(la, key=lambda k: int(k[4:])):
        errors.append(((lb[key] - la[key]).norm() / la[key].norm()).item())
    value = psnr(fb, fa)
    print(f"compare {label}: PSNR {value:.2f} dB; per-step latent relative error "
          + ", ".join(f"{e:.4f}" for e in errors))
    return value, errors


def results(out):
    found = {}
    for name in os.listdir(out):
        if not name.endswith(".log"):
            continue
        stage = name[:-4]
        with open(os.path.join(out, name)) as f:
            for line in f:
                m = re.match(r"RESULT (\w+)=(.*)", line.strip())
                if m:
                    found[f"{stage}.{m.group(1)}"] = m.group(2)
                m = re.search(r"peak-memory: device 0 max_allocated (\d+) MiB", line)
                if m:
                    found[f"{stage}.peak_mib"] = m.group(1)
    return found


def table(args):
    r = results(args.out)
    lines = []
    for res in ("720p", "480p"):
        a, b = os.path.join(args.out, f"bf16-{res}"), os.path.join(args.out, f"fp8-{res}")
        if os.path.isdir(a) and os.path.isdir(b):
            value, errors = compare(a, b, res)
            r[f"psnr_{res}"] = f"{value:.2f}"
            r[f"errors_{res}"] = ", ".join(f"{e:.4f}" for e in errors)
    g = lambda key, fmt="{}": fmt.format(r[key]) if key in r else "not run"
    f = lambda key: float(r[key]) if key in r else None

    ours_base = extrapolate_ours(r)
    theirs_base = extrapolate_theirs(r)
    peak = f("psnr-480p-fp8.peak_mib")
    lines.append("| 720p 81 frames, one GPU | ours | diffusers | goal |")
    lines.append("|---|---|---|---|")
    lines.append(f"| 4-step distilled, end to end (text + 4 forwards + VAE decode) | {g('lightning.total_s', '{} s')} "
                 f"| {g('diffusers-lightning.diffusers_lightning_total_s', '{} s')} | ≤ 60 s (moonshot ≤ 45 s) |")
    lines.append(f"| FP8 forward / bf16 forward ({g('forward.forward_size')}) | {g('forward.forward_ratio')} "
                 f"({g('forward.forward_fp8_s')} / {g('forward.forward_bf16_s')} s) | no FP8 path | ≤ 0.85 |")
    lines.append(f"| A14B FP8, both experts resident, text encoder parked, 480p 81 frames, peak allocated | "
                 f"{'%.2f GiB' % (peak / 1024) if peak else 'not run'} | no FP8 path | ≤ 48 GiB |")
    ratio = f"{ours_base / theirs_base:.3f}" if ours_base and theirs_base else "not run"
    lines.append(f"| base 40-step (from {BASE_STEPS} steps: text + 40 × step + decode) | "
                 f"{'%.1f s' % ours_base if ours_base else 'not run'} | {'%.1f s' % theirs_base if theirs_base else 'not run'} "
                 f"| ours/diffusers {ratio} ≤ 1.00 |")
    lines.append(f"| LoRA pair (rank {args.rank}, A14B-sized) read + fused into both experts | {g('lora.lora_fuse_s', '{} s')} "
                 f"| {g('diffusers-lightning.diffusers_lora_fuse_s', '{} s')} | — |")
    lines.append(f"| FP8 frames vs bf16 frames, PSNR (same seed) | 480p {g('psnr_480p', '{} dB')}, 720p {g('psnr_720p', '{} dB')} "
                 f"| — | ≥ 30 dB |")
    lines.append(f"| per-step latent relative error, FP8 vs bf16 | 480p [{g('errors_480p')}]; 720p [{g('errors_720p')}] | — | — |")
    lines.append(f"| FFN output projection alone, FP8 / bf16 (ours, same process) | {g('forward.linear_ratio')} "
                 f"({g('forward.linear_fp8_ms', '{} ms')} / {g('forward.linear_bf16_ms', '{} ms')}) | — | — |")
    lines.append(f"| FP8 kernel (torch.profiler, same op and layouts) | {g('profile.profile_fp8_kernels')} "
                 f"({g('profile.profile_fp8_ms', '{} ms')} vs bf16 {g('profile.profile_bf16_ms', '{} ms')}) | — | — |")
    print("\n".join(lines))
    with open(os.path.join(args.out, "table.md"), "w") as out:
        out.write("\n".join(lines) + "\n")


def extrapolate_ours(r):
    keys = [f"base.{k}" for k in ("text_s", "step_s", "decode_s")]
    if not all(k in r for k in keys):
        return None
    text, step, decode = (float(r[k]) for k in keys)
    return text + FULL_STEPS * step + decode


def extrapolate_theirs(r):
    keys = [f"diffusers-base.diffusers_base_{k}" for k in ("text_s", "step_s", "decode_s")]
    if not all(k in r for k in keys):
        return None
    text, step, decode = (float(r[k]) for k in keys)
    return text + FULL_STEPS * step + decode


def stage(args, name):
    model, out = args.model, args.out
    tiny = ["--tiny"] if args.tiny else []
    size720, size480 = ("720x1280", "480x832") if not args.tiny else ("32x48", "32x32")
    frames = "81" if not args.tiny else "9"
    common = ["--model", model, "--frames", frames, *tiny]
    if name == "prep":
        prep(args)
    elif name == "profile":
        with open(os.path.join(out, "profile.log"), "w") as log:
            sys.stdout = Tee(sys.stdout, log)
            try:
                profile(args)
            finally:
                sys.stdout = sys.stdout.streams[0]
    elif name == "forward":
        ours(out, "forward", "--mode", "forward", "--size", size720, "--runs", "3", *common)
    elif name == "lora":
        ours(out, "lora", "--mode", "lora", "--lora-high", os.path.join(out, "lora_high.safetensors"),
             "--lora-low", os.path.join(out, "lora_low.safetensors"), *common)
    elif name == "lightning":
        ours(out, "lightning", "--mode", "generate", "--size", size720, "--steps", "4", "--guidance", "1.0",
             "--guidance-2", "1.0", "--dtype", "bf16", "--policy", "text-offload", "--save", os.path.join(out, "bf16-720p"),
             *common)
    elif name == "fp8-720p":
        ours(out, "fp8-720p", "--mode", "generate", "--size", size720, "--steps", "4", "--guidance", "1.0",
             "--guidance-2", "1.0", "--dtype", "fp8", "--policy", "text-offload", "--save", os.path.join(out, "fp8-720p"),
             *common)
    elif name == "psnr-480p":
        for dtype in ("bf16", "fp8"):
            ours(out, f"psnr-480p-{dtype}", "--mode", "generate", "--size", size480, "--steps", "4",
                 "--guidance", "1.0", "--guidance-2", "1.0", "--dtype", dtype, "--policy", "text-offload",
                 "--save", os.path.join(out, f"{dtype}-480p"), *common, peak=not args.tiny)
    elif name == "base":
        ours(out, "base", "--mode", "generate", "--size", size720, "--steps", str(BASE_STEPS), "--guidance", "4.0",
             "--guidance-2", "3.0", "--dtype", "bf16", "--policy", "text-offload", *common)
    elif name == "diffusers-lightning":
        with open(os.path.join(out, "diffusers-lightning.log"), "w") as log:
            sys.stdout = Tee(sys.stdout, log)
            try:
                diffusers_run(args, lightning=True)
            finally:
                sys.stdout = sys.stdout.streams[0]
    elif name == "diffusers-base":
        with open(os.path.join(out, "diffusers-base.log"), "w") as log:
            sys.stdout = Tee(sys.stdout, log)
            try:
                diffusers_run(args, lightning=False)
            finally:
                sys.stdout = sys.stdout.streams[0]
    elif name == "table":
        table(args)
    else:
        raise SystemExit(f"unknown stage {name}; expected one of {', '.join(STAGES)} or all")


class Tee:
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()

    def flush(self):
        for s in self.streams:
            s.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="comma-separated stages, or all")
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "bench-fast"))
    parser.add_argument("--model", help="the A14B-shaped model directory (default OUT/a14b)")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--tiny", action="store_true", help="CPU dry run with --model a tiny model directory")
    parser.add_argument("--compare", nargs=2)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare, "B vs A")
        return
    if not args.run and not args.table:
        print("bench_fast.py: a GPU benchmark, no fixtures to write")
        return
    os.makedirs(args.out, exist_ok=True)
    args.model = args.model or os.path.join(args.out, "a14b")
    names = STAGES if args.run == "all" else (args.run.split(",") if args.run else ["table"])
    for name in names:
        if args.tiny and name in ("profile", "diffusers-lightning", "diffusers-base"):
            print(f"== {name}: skipped with --tiny (CUDA and diffusers at full size only)")
            continue
        stage(args, name)


if __name__ == "__main__":
    main()

"""GPU benchmark of diffusers' Wan2.2 TI2V-5B pipelines with random weights, the counterpart of
`cargo run --release -p t2v-pipeline --example bench_ti2v`.

`--write-model DIR --tokenizer TOK` writes a TI2V-5B-shaped model directory without weights:
`model_index.json` (`WanPipeline`, `expand_timesteps` true, one expert), the transformer config
of `Wan-AI/Wan2.2-TI2V-5B-Diffusers` (3072 = 24 heads × 128, 30 layers, ffn 14336, 48 → 48
channels), the Wan2.2 VAE (base 160, decoder base 256, z_dim 48, residual, patch 2, 16×
spatial), umT5-XXL, UniPC (flow prediction, flow sigmas, shift 5.0) and the tokenizer copied
from TOK.

`--model DIR` builds every component with random weights (N(0, 0.02), norm gains 1, as the Rust
example draws them), runs text+image-to-video (`WanImageToVideoPipeline`, a 1280×720 synthetic
image stretched to the video size) or, with `--t2v`, text-to-video (`WanPipeline`), once with
`output_type="np"`, and prints the total and per-phase seconds (encode_prompt, the denoising
loop, vae.decode; CUDA synchronised at each boundary), each step's duration and
torch.cuda.max_memory_allocated / max_memory_reserved. `--low-memory`: components built on the
CPU and moved to the GPU one at a time (`enable_model_cpu_offload`), tiled VAE decode.

Usage: python pipeline/bench/bench_ti2v.py --write-model /tmp/ti2v5b --tokenizer TOK
       python pipeline/bench/bench_ti2v.py --model /tmp/ti2v5b [--height 704 --width 1280
       --frames 121 --steps 10 --guidance 5.0 --t2v --low-memory --seed 0]
Given --out (the fixtures convention of pipeline/parity/) it writes nothing and returns at once.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import DTYPES, PROMPT, randomize, write_shared_components  # noqa: E402

Z_DIM = 48


def write_model(root, tokenizer):
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    os.makedirs(root, exist_ok=True)
    with torch.device("meta"):
        WanTransformer3DModel(
            num_attention_heads=24, in_channels=Z_DIM, out_channels=Z_DIM, ffn_dim=14336, num_layers=30
        ).save_config(os.path.join(root, "transformer"))
        AutoencoderKLWan(
            base_dim=160, decoder_base_dim=256, z_dim=Z_DIM, is_residual=True, in_channels=12,
            out_channels=12, patch_size=2, scale_factor_spatial=16,
            latents_mean=[0.0] * Z_DIM, latents_std=[1.0] * Z_DIM,
        ).save_config(os.path.join(root, "vae"))
    write_shared_components(root, tokenizer, flow_shift=5.0, index={
        "boundary_ratio": None,
        "expand_timesteps": True,
        "transformer_2": [None, None],
    })


def build(args):
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from diffusers import WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    device = torch.device("cpu" if args.low_memory else args.device)
    dtype, vae_dtype = (getattr(torch, DTYPES[k]) for k in (args.dtype, args.vae_dtype))
    torch.manual_seed(0)
    root = args.model
    torch.set_default_dtype(dtype)
    with device:
        transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(os.path.join(root, "transformer")))
        text_encoder = UMT5EncoderModel(UMT5Config.from_pretrained(os.path.join(root, "text_encoder")))
    torch.set_default_dtype(vae_dtype)
    with device:
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(os.path.join(root, "vae")))
    torch.set_default_dtype(torch.float32)
    for model in (transformer, text_encoder, vae):
        randomize(model)
    keep = transformer._keep_in_fp32_modules or []
    for name, param in transformer.named_parameters():
        if any(part in keep for part in name.split(".")):
            param.data = param.data.float()
    pipe_class = WanPipeline if args.t2v else WanImageToVideoPipeline
    pipe = pipe_class(
        tokenizer=AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer")),
        text_encoder=text_encoder.eval(),
        transformer=transformer.eval(),
        vae=vae.eval(),
        scheduler=UniPCMultistepScheduler.from_pretrained(root, subfolder="scheduler"),
        expand_timesteps=True,
    )
    if args.low_memory:
        pipe.enable_model_cpu_offload(device=args.device)
        pipe.vae.enable_tiling()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synthetic_image():
    """1280×720 RGB gradients and a checkerboard: an aspect the 1280×704 video does not have."""
    import numpy as np
    import PIL.Image

    y, x = np.mgrid[0:720, 0:1280]
    rgb = np.stack([x * 255 // 1279, y * 255 // 719, np.where((x // 40 + y // 40) % 2 == 0, 220, 30)], -1)
    return PIL.Image.fromarray(rgb.astype(np.uint8), "RGB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="ignored: this script writes no fixtures")
    parser.add_argument("--write-model")
    parser.add_argument("--tokenizer")
    parser.add_argument("--model")
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--t2v", action="store_true", help="text-to-video (no image)")
    parser.add_argument("--low-memory", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--vae-dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out is not None:
        print("bench_ti2v.py: a GPU benchmark, no fixtures to write")
        return
    if args.write_model:
        assert args.tokenizer, "--write-model needs --tokenizer DIR"
        write_model(args.write_model, args.tokenizer)
    if not args.model:
        return

    import torch

    sync = torch.cuda.synchronize
    mode = "t2v" if args.t2v else "ti2v"
    label = f"diffusers {mode}{' low-memory' if args.low_memory else ''}"
    start = time.perf_counter()
    pipe = build(args)
    sync()
    print(f"{label}: built in {time.perf_counter() - start:.1f} s", flush=True)

    marks = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            sync()
            marks[name + "_start"] = time.perf_counter()
            out = fn(*a, **k)
            sync()
            marks[name + "_end"] = time.perf_counter()
            return out

        return wrapper

    pipe.encode_prompt = timed("encode", pipe.encode_prompt)
    pipe.vae.decode = timed("decode", pipe.vae.decode)
    steps = []

    def on_step(pipeline, i, t, kwargs):
        sync()
        steps.append(time.perf_counter())
        print(f"{label}: step {i + 1}/{args.steps} t={float(t):.1f}", flush=True)
        return {}

    kwargs = dict(
        prompt=PROMPT,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=torch.Generator("cpu").manual_seed(args.seed),
        output_type="np",
        callback_on_step_end=on_step,
    )
    if not args.t2v:
        kwargs["image"] = synthetic_image()
    sync()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        video = pipe(**kwargs).frames[0]
    sync()
    total = time.perf_counter() - start
    per_step = [b - a for a, b in zip(steps, steps[1:])]
    step_mean = sum(per_step) / max(len(per_step), 1)
    decode = marks["decode_end"] - marks["decode_start"]
    encode = marks["encode_end"] - marks["encode_start"]
    print(
        f"{label}: {args.height}x{args.width}x{args.frames} frames {video.shape}, {args.steps} steps: "
        f"total {total:.2f} s, text encode {encode:.2f} s, {step_mean:.3f} s/step (steps 2..{args.steps}), "
        f"VAE decode {decode:.2f} s; max allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
        f"max reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()

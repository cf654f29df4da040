"""GPU benchmark of diffusers' whole `WanPipeline` (text-to-video) with random weights, the
counterpart of `cargo run --release -p t2v-pipeline --example bench_pipeline`.

`--write-model DIR --tokenizer TOK` writes an A14B-shaped model directory without weights:
`model_index.json` (`boundary_ratio` 0.875), both experts with diffusers' default
`WanTransformer3DModel` config (5120 = 40 heads × 128, 40 layers, ffn 13824: one Wan2.2 A14B
expert), an umT5-XXL `UMT5EncoderModel` config (d_model 4096, 24 layers, 64 heads, d_ff 10240,
vocab 256384), the default (Wan2.1) `AutoencoderKLWan` config, UniPC (flow prediction, flow
sigmas, shift 3.0), and the tokenizer copied from TOK (any T5 tokenizer: its ids are below the
XXL vocabulary). Both benchmarks build their components from these configs.

`--model DIR` builds every component on the device (random weights N(0, 0.02), norm gains 1,
as the Rust example draws them; the transformer's `_keep_in_fp32_modules` in fp32 as
`from_pretrained(torch_dtype=bf16)` leaves them), runs the pipeline once with
`output_type="np"` and prints the total and per-phase seconds (encode_prompt, the denoising
loop, vae.decode; CUDA synchronised at each boundary), each step's duration, and
torch.cuda.max_memory_allocated / max_memory_reserved over the whole process.

Usage: python pipeline/bench/bench_pipeline.py --write-model /tmp/a14b --tokenizer TOK
       python pipeline/bench/bench_pipeline.py --model /tmp/a14b [--height 480 --width 832
       --frames 81 --steps 10 --guidance 4.0 --guidance-2 3.0 --device cuda --dtype bf16
       --vae-dtype bf16 --seed 0]
Given --out (the fixtures convention of pipeline/parity/) it writes nothing and returns at once.
"""
import argparse
import json
import os
import shutil
import time

PROMPT = "A cat walks on the grass, realistic"
BOUNDARY_RATIO = 0.875
DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def write_model(root, tokenizer):
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    os.makedirs(root, exist_ok=True)
    with torch.device("meta"):
        for name in ("transformer", "transformer_2"):
            WanTransformer3DModel().save_config(os.path.join(root, name))
        AutoencoderKLWan().save_config(os.path.join(root, "vae"))
    write_shared_components(root, tokenizer, flow_shift=3.0, index={
        "boundary_ratio": BOUNDARY_RATIO,
        "expand_timesteps": False,
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
    })


def write_shared_components(root, tokenizer, flow_shift, index):
    """What every Wan model directory here shares: umT5-XXL, UniPC (flow prediction, flow sigmas,
    `flow_shift`), the tokenizer copied from `tokenizer`, and `model_index.json` (a `WanPipeline`
    with the entries of `index` on top of the shared ones)."""
    from diffusers import UniPCMultistepScheduler
    from transformers import UMT5Config

    UMT5Config(
        vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
        num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=False,
        architectures=["UMT5EncoderModel"],
    ).save_pretrained(os.path.join(root, "text_encoder"))
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift
    ).save_config(os.path.join(root, "scheduler"))
    shutil.copytree(tokenizer, os.path.join(root, "tokenizer"), dirs_exist_ok=True)
    full = {
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        **index,
    }
    with open(os.path.join(root, "model_index.json"), "w") as f:
        json.dump(full, f, indent=2)
    print(f"wrote {root}")


def randomize(model):
    """N(0, 0.02) in place, norm gains (`gamma`, 1-D `*norm*`) 1 — as the Rust example."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gamma") or (param.dim() == 1 and "norm" in name):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)


def build(args):
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    device = torch.device(args.device)
    dtype, vae_dtype = (getattr(torch, DTYPES[k]) for k in (args.dtype, args.vae_dtype))
    torch.manual_seed(0)
    root = args.model

    def expert(name):
        torch.set_default_dtype(dtype)
        with device:
            model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(os.path.join(root, name)))
        torch.set_default_dtype(torch.float32)
        randomize(model)
        keep = model._keep_in_fp32_modules or []
        for pname, param in model.named_parameters():
            if any(part in keep for part in pname.split(".")):
                param.data = param.data.float()
        return model.eval()

    transformer_2 = expert("transformer_2")
    torch.set_default_dtype(dtype)
    with device:
        text_encoder = UMT5EncoderModel(UMT5Config.from_pretrained(os.path.join(root, "text_encoder")))
    torch.set_default_dtype(vae_dtype)
    with device:
        vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(os.path.join(root, "vae")))
    torch.set_default_dtype(torch.float32)
    randomize(text_encoder)
    randomize(vae)
    transformer = expert("transformer")
    with open(os.path.join(root, "model_index.json")) as f:
        boundary_ratio = json.load(f).get("boundary_ratio")
    pipe = WanPipeline(
        tokenizer=AutoTokenizer.from_pretrained(os.path.join(root, "tokenizer")),
        text_encoder=text_encoder.eval(),
        transformer=transformer,
        vae=vae.eval(),
        scheduler=UniPCMultistepScheduler.from_pretrained(root, subfolder="scheduler"),
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="ignored: this script writes no fixtures")
    parser.add_argument("--write-model")
    parser.add_argument("--tokenizer")
    parser.add_argument("--model")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--guidance-2", type=float, default=3.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--vae-dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out is not None:
        print("bench_pipeline.py: a GPU benchmark, no fixtures to write")
        return
    if args.write_model:
        assert args.tokenizer, "--write-model needs --tokenizer DIR"
        write_model(args.write_model, args.tokenizer)
    if not args.model:
        return

    import torch

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    # 1. build every component with random weights on the device
    start = time.perf_counter()
    pipe = build(args)
    sync()
    gpu = f"{torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated" if cuda else "-"
    dtypes = {
        name: sorted({str(p.dtype) for p in getattr(pipe, name).parameters()})
        for name in ("transformer", "text_encoder", "vae")
    }
    n_params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e9
        for name in ("transformer", "transformer_2", "text_encoder", "vae")
    }
    print(f"diffusers: built in {time.perf_counter() - start:.1f} s; {gpu}; dtypes {dtypes}; B params {n_params}", flush=True)

    # 2. time encode_prompt and vae.decode (instance attributes shadow the methods), and each step
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
    last = [None]

    def on_step(pipeline, i, t, kwargs):
        sync()
        now = time.perf_counter()
        since = last[0] if last[0] is not None else marks["encode_end"]
        boundary = pipeline.config.boundary_ratio
        expert = "high" if boundary is None or t >= boundary * 1000 else "low"
        print(f"diffusers: step {i + 1}/{args.steps} t={float(t):.1f} {expert} {now - since:.3f} s", flush=True)
        last[0] = now
        return {}

    # 3. one generation
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        video = pipe(
            prompt=PROMPT,
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            guidance_scale_2=args.guidance_2,
            generator=torch.Generator("cpu").manual_seed(args.seed),
            output_type="np",
            callback_on_step_end=on_step,
        ).frames[0]
    sync()
    total = time.perf_counter() - start
    encode = marks["encode_end"] - marks["encode_start"]
    denoise = marks["decode_start"] - marks["encode_end"]
    decode = marks["decode_end"] - marks["decode_start"]
    peak = (
        f"max allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
        f"max reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB"
        if cuda
        else "-"
    )
    print(
        f"diffusers: {args.height}x{args.width}x{args.frames} frames {video.shape}, {args.steps} steps: "
        f"total {total:.2f} s, text encode {encode:.2f} s, denoise {denoise:.2f} s ({denoise / args.steps:.3f} s/step), "
        f"VAE decode {decode:.2f} s; {peak}"
    )
    print(f"diffusers: frames mean {float(video.mean()):.4f}")


if __name__ == "__main__":
    main()

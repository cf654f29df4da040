"""Reference fixtures for the FP8 (float8 e4m3) block linears of the Wan DiT, compared by
pipeline/tests/fp8_quant.rs.

The quantisation (`pipeline/src/wan/fp8.rs`): per row (a weight's output channel, an activation's
token) `s` = the smallest power of two at least `max(amax|r|, 1e-12) / 448`,
`q = (r / s).clamp(-448, 448).to(torch.float8_e4m3fn)`;
the layer is `(q_x @ q_w.T) * (s_x * s_w.T) + bias`, accumulated in f32. On CUDA that product is
`torch._scaled_mm` with row-wise scales; torch 2.11 has no row-wise `_scaled_mm` on the CPU, so
the reference (like the Rust CPU path) computes it from the dequantised operands.

Writes ROOT/fp8/ with
  rows.safetensors      x (rows of every magnitude: ordinary, a zero row, one at 1e4, one at
                        1e-6, one with a single outlier), its quantisation q_x (the e4m3 values
                        as f32, and q_x_bits: their bytes as uint8) and s_x; a weight w [48, 64]
                        with q_w / q_w_bits / s_w, bias b; y_fp8 (the quantised layer) and y_exact
                        (x @ w.T + b in f64)
  model/                the tiny random-weight WanTransformer3DModel of transformer.py
  reference.safetensors inputs.{hidden_states, timestep, encoder_hidden_states}; output (f32)
                        and output_fp8: the same forward with every block Linear (attention
                        q/k/v/out, FFN) quantised as above — weights once, inputs per token on
                        the fly — and everything else (embeddings, time/text projections,
                        proj_out, norms, modulation) untouched

Every e4m3 value is also checked against an independent by-hand rounding (nearest, ties to
even, over the 254 finite e4m3fn values) so the fixtures pin the format, not only torch.

Usage: python pipeline/parity/fp8.py --out ROOT
"""

import argparse
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transformer import make_tiny_transformer  # noqa: E402

E4M3_MAX = 448.0
MIN_AMAX = 1e-12


def quantize_rows(x):
    """Per row: the smallest power of two at least amax / 448 as the scale (so the division is
    exact), then e4m3's round to nearest."""
    amax = x.float().abs().amax(-1, keepdim=True).clamp_min(MIN_AMAX)
    scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    assert bool((amax / scale <= E4M3_MAX).all()), "the scale keeps every row within e4m3's range"
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_linear(x, weight_q, weight_scale, bias):
    shape = x.shape
    xq, x_scale = quantize_rows(x.reshape(-1, shape[-1]))
    out = (xq.float() @ weight_q.float().T) * x_scale * weight_scale.T + bias
    return out.reshape(*shape[:-1], -1).to(x.dtype)


def e4m3_values():
    """The finite float8 e4m3fn values, by the format (bias 7, no infinities, S.1111.111 = NaN)."""
    values = set()
    for exponent in range(16):
        for mantissa in range(8):
            if exponent == 15 and mantissa == 7:
                continue
            if exponent == 0:
                v = mantissa / 8 * 2.0**-6
            else:
                v = (1 + mantissa / 8) * 2.0 ** (exponent - 7)
            values.update((v, -v))
    return torch.tensor(sorted(values), dtype=torch.float64)


def round_by_hand(x, grid):
    """Nearest e4m3 value, ties to the even mantissa (the one whose last bit is 0)."""
    flat = x.double().flatten()
    idx = torch.searchsorted(grid, flat).clamp(1, len(grid) - 1)
    lo, hi = grid[idx - 1], grid[idx]
    pick_hi = (hi - flat) < (flat - lo)
    tie = (hi - flat) == (flat - lo)
    # Ties go to the even neighbour: the grid alternates mantissa parity within a binade.
    hi_even = torch.tensor([float(v) for v in hi]).to(torch.float8_e4m3fn).view(torch.uint8) % 2 == 0
    pick_hi = pick_hi | (tie & hi_even)
    return torch.where(pick_hi, hi, lo).reshape(x.shape)


def check_rounding(q, scaled):
    grid = e4m3_values()
    expected = round_by_hand(scaled.clamp(-E4M3_MAX, E4M3_MAX), grid)
    assert torch.equal(q.double(), expected), "torch's e4m3 rounding differs from the format"


def rows_fixture(out_dir):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 64, generator=gen)
    x[1] = 0.0
    x[2] *= 1e4
    x[3] *= 1e-6
    x[4, 5] = 50.0  # one outlier sets the row's scale
    w = torch.randn(48, 64, generator=gen) / 8.0
    b = torch.randn(48, generator=gen) * 0.1
    q_x, s_x = quantize_rows(x)
    q_w, s_w = quantize_rows(w)
    check_rounding(q_x.float(), x / s_x)
    check_rounding(q_w.float(), w / s_w)
    y_fp8 = fp8_linear(x, q_w, s_w, b)
    y_exact = (x.double() @ w.double().T + b.double()).float()
    tensors = {
        "x": x, "q_x": q_x.float(), "q_x_bits": q_x.view(torch.uint8), "s_x": s_x,
        "w": w, "q_w": q_w.float(), "q_w_bits": q_w.view(torch.uint8), "s_w": s_w,
        "b": b, "y_fp8": y_fp8, "y_exact": y_exact,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "rows.safetensors"))
    error = ((y_fp8 - y_exact).norm() / y_exact.norm()).item()
    print(f"fp8 rows: relative error of the quantised layer {error:.4f}")


def fake_quantize_block_linears(model):
    """Every block nn.Linear runs `fp8_linear` on its own quantised weight."""
    for name, module in model.named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            weight_q, weight_scale = quantize_rows(module.weight.data)

            def forward(x, weight_q=weight_q, weight_scale=weight_scale, bias=module.bias):
                return fp8_linear(x, weight_q, weight_scale, bias)

            module.forward = forward


def model_fixture(out_dir):
    model = make_tiny_transformer(os.path.join(out_dir, "model"), seed=3)
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(2, 4, 3, 8, 8, generator=gen)
    timestep = torch.tensor([999.0, 250.0])
    text = torch.randn(2, 7, 24, generator=gen)
    with torch.no_grad():
        output = model(hidden, timestep, text, return_dict=False)[0]
        fake_quantize_block_linears(model)
        output_fp8 = model(hidden, timestep, text, return_dict=False)[0]
    tensors = {
        "inputs.hidden_states": hidden,
        "inputs.timestep": timestep,
        "inputs.encoder_hidden_states": text,
        "output": output,
        "output_fp8": output_fp8,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "reference.safetensors"))
    error = ((output_fp8 - output).norm() / output.norm()).item()
    print(f"fp8 model: relative error of the FP8 forward {error:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out_dir = os.path.join(args.out, "fp8")
    os.makedirs(out_dir, exist_ok=True)
    rows_fixture(out_dir)
    model_fixture(out_dir)
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()

"""Reference numbers for the flow-matching schedulers (diffusers UniPCMultistepScheduler and
FlowMatchEulerDiscreteScheduler), compared by pipeline/tests/scheduler_parity.rs.

For each case it writes ROOT/scheduler/<case>/ with
  scheduler/scheduler_config.json  the config exactly as diffusers saves it (the Rust side parses this file)
  case.json                        num_steps, shift override, sampler kind asked of the factory
  reference.safetensors            timesteps, sigmas, the fixed tensors, and the sample after every step

The fake model output is the same function on both sides, in f32:
  model_output = sample * 0.1 + fixed * (t / 1000)
Stepping starts at index 0 (`set_begin_index(0)`), as WanPipeline does.
"""

import argparse
import json
import os

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

SHAPE = (1, 4, 3, 4, 6)  # (batch, channels, frames, height, width): 5-D like Wan latents

# The Wan2.2 diffusers scheduler config (Wan-AI/Wan2.2-T2V-A14B-Diffusers scheduler/scheduler_config.json).
WAN_UNIPC = dict(
    num_train_timesteps=1000,
    solver_order=2,
    prediction_type="flow_prediction",
    predict_x0=True,
    solver_type="bh2",
    lower_order_final=True,
    use_flow_sigmas=True,
    final_sigmas_type="zero",
)

# name: (class, config overrides, num_steps, shift override, kind asked of the factory)
CASES = {
    "unipc_shift3_steps10": (UniPCMultistepScheduler, dict(WAN_UNIPC, flow_shift=3.0), 10, None, None),
    "unipc_shift5_steps50": (UniPCMultistepScheduler, dict(WAN_UNIPC, flow_shift=5.0), 50, None, None),
    "unipc_shift12_steps40": (UniPCMultistepScheduler, dict(WAN_UNIPC, flow_shift=12.0), 40, None, None),
    # A per-request shift replaces flow_shift: the reference is from_config(..., flow_shift=override).
    "unipc_shift3_override8_7_steps40": (UniPCMultistepScheduler, dict(WAN_UNIPC, flow_shift=3.0), 40, 8.7, None),
    # Third order (linalg.solve path), bh1, corrector disabled at two steps, final sigma = sigma_min.
    "unipc_order3_bh1_sigmamin": (
        UniPCMultistepScheduler,
        dict(WAN_UNIPC, flow_shift=5.0, solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min",
             disable_corrector=[0, 3]),
        12, None, None,
    ),
    # Noise prediction without the x0 form, with a terminal stretch.
    "unipc_vpred_noise_form": (
        UniPCMultistepScheduler,
        dict(WAN_UNIPC, flow_shift=5.0, prediction_type="v_prediction", predict_x0=False, final_sigmas_type="sigma_min",
             shift_terminal=0.05),
        8, None, None,
    ),
    "euler_shift5_steps10": (FlowMatchEulerDiscreteScheduler, dict(num_train_timesteps=1000, shift=5.0), 10, None, None),
    "euler_shift1_steps50": (FlowMatchEulerDiscreteScheduler, dict(num_train_timesteps=1000, shift=1.0), 50, None, None),
    "euler_shift3_override5_terminal": (
        FlowMatchEulerDiscreteScheduler, dict(num_train_timesteps=1000, shift=3.0, shift_terminal=0.1), 20, 5.0, None,
    ),
    # The factory builds FlowEuler from a UniPC config: same num_train_timesteps, shift = flow_shift.
    "euler_from_unipc_config": (UniPCMultistepScheduler, dict(WAN_UNIPC, flow_shift=12.0), 40, None, "flow_euler"),
    # ... and UniPC (the Wan preset) from a FlowEuler config.
    "unipc_from_euler_config": (FlowMatchEulerDiscreteScheduler, dict(num_train_timesteps=1000, shift=5.0), 30, None,
                                "unipc"),
}


def reference_scheduler(cls, config, shift, kind):
    """The scheduler diffusers would run for this case."""
    if kind == "flow_euler" and cls is UniPCMultistepScheduler:
        cls, config = FlowMatchEulerDiscreteScheduler, dict(
            num_train_timesteps=config["num_train_timesteps"], shift=config["flow_shift"])
    elif kind == "unipc" and cls is FlowMatchEulerDiscreteScheduler:
        cls, config = UniPCMultistepScheduler, dict(WAN_UNIPC, num_train_timesteps=config["num_train_timesteps"],
                                                    flow_shift=config["shift"])
    if shift is not None:
        config = dict(config, **({"flow_shift": shift} if cls is UniPCMultistepScheduler else {"shift": shift}))
    return cls(**config)


def write_case(root, name, cls, config, num_steps, shift, kind):
    case_dir = os.path.join(root, name)
    cls(**config).save_config(os.path.join(case_dir, "scheduler"))
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump({"num_steps": num_steps, "shift_override": shift, "kind": kind}, f)

    scheduler = reference_scheduler(cls, config, shift, kind)
    scheduler.set_timesteps(num_steps)
    scheduler.set_begin_index(0)

    gen = torch.Generator("cpu").manual_seed(1234)
    sample = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    fixed = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    tensors = {
        "timesteps": scheduler.timesteps.clone(),
        "sigmas": scheduler.sigmas.clone(),
        "fixed": fixed,
        "sample_0": sample.clone(),
    }
    for i, t in enumerate(scheduler.timesteps):
        model_output = sample * 0.1 + fixed * (float(t) / 1000)
        sample = scheduler.step(model_output, t, sample, return_dict=False)[0]
        tensors[f"sample_{i + 1}"] = sample.clone()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(case_dir, "reference.safetensors"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    root = os.path.join(args.out, "scheduler")
    os.makedirs(root, exist_ok=True)
    for name, (cls, config, num_steps, shift, kind) in CASES.items():
        write_case(root, name, cls, config, num_steps, shift, kind)
    print(f"wrote {len(CASES)} scheduler cases to {root}")


if __name__ == "__main__":
    main()

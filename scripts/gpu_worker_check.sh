#!/bin/bash
# Device-side check of the worker's GPU paths (doctor and the memory preflight): doctor on device=cuda, a genuine CUDA OOM
# that passes the preflight, a preflight refusal, then a normal generate with the NVML peak.
# Run from the repo root on a GPU host with PyTorch 2.11 (cu130), about 1 minute: `make gpu-check`
# (builds the release binary and the tiny model fixture first), or with a binary and model copied
# to a GPU host: `W=path/to/t2v-worker M=path/to/model bash scripts/gpu_worker_check.sh`.
# Prints PASS/FAIL per check; the exit status is the number of failures.
set -uo pipefail
T0=$(date +%s)
W=${W:-${CARGO_TARGET_DIR:-target}/release/t2v-worker}
M=${M:-build/fixtures/wan_pipeline/two_experts}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
FAILS=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILS=$((FAILS + 1)); }
elapsed() { echo "(t=$(( $(date +%s) - T0 )) s)"; }
smi() { nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader; }
# sample memory.used every 100 ms while "$@" runs; prints the max (MiB)
sampled() {
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/smi.txt & local pid=$!
  "$@"; local rc=$?
  kill $pid; wait $pid 2>/dev/null
  echo "nvidia-smi sampled max memory.used: $(sort -n /tmp/smi.txt | tail -1) MiB"
  return $rc
}

[[ -x $W && -f $M/model_index.json ]] || { echo "missing $W or $M — see the header"; exit 1; }
echo "=== host $(elapsed)"
smi
nvidia-smi --query-gpu=name --format=csv,noheader >/dev/null || exit 1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
ldd $W | grep -E 'torch|c10|nvidia-ml' ; ldd $W | grep -q nvidia-ml && fail "libnvidia-ml is linked at build time (must be loaded at run time)"

echo "=== doctor, device=cuda $(elapsed)"
# Kafka is absent here: its lines FAIL; the gpu/memory lines are what this checks.
T2V_MODEL__BACKEND=wan T2V_MODEL__DIR=$M T2V_MODEL__DEVICE=cuda \
  timeout 60 $W doctor --brokers 127.0.0.1:9 --storage-url file:///tmp/t2v-doctor > $OUT/doctor.txt 2>&1
cat $OUT/doctor.txt
grep -E '^ok +gpu +NVIDIA .*driver .*\(CUDA [0-9]+\.[0-9]+\), libtorch built for CUDA 13\.0' $OUT/doctor.txt >/dev/null \
  && pass "doctor: gpu line names the GPU, driver CUDA and libtorch's CUDA 13.0" || fail "doctor: no ok gpu line as expected"
grep -E '^ok +memory +the default job 832×480×81 needs an estimated' $OUT/doctor.txt >/dev/null \
  && pass "doctor: default job fits" || fail "doctor: default-job memory line"
T2V_MODEL__BACKEND=wan T2V_MODEL__DIR=$M T2V_MODEL__DEVICE=cuda T2V_MODEL__MEMORY_BUDGET_GIB=500 \
  timeout 60 $W doctor --brokers 127.0.0.1:9 --storage-url file:///tmp/t2v-doctor 2>&1 | grep -E '^(WARN|FAIL|ok  ) +memory' | tee $OUT/doctor_budget.txt
grep -q '^WARN memory .*exceeds the GPU' $OUT/doctor_budget.txt && pass "doctor: budget above the GPU warns" || fail "doctor: budget warning"

GEN=(generate --model $M --prompt "a red fox running through snow" --device cuda --seed 3)

echo "=== preflight refusal: 1280×720×81 with --memory-budget-gib 3 $(elapsed)"
timeout 60 $W "${GEN[@]}" --steps 2 --width 1280 --height 720 --frames 81 --memory-budget-gib 3 > $OUT/preflight.txt 2>&1; rc=$?
cat $OUT/preflight.txt
[[ $rc != 0 ]] && grep -q 'needs an estimated .* but the memory budget is 3.00 GiB (model.memory_budget_gib) — settings that fit: ' $OUT/preflight.txt \
  && pass "preflight refuses with the estimate and settings that fit" || fail "preflight refusal (rc $rc)"

echo "=== genuine CUDA OOM: another process holds all but 3 GiB, the preflight (GPU total) passes $(elapsed)"
rm -f /tmp/holder.ready
python3 - <<'EOF' &
import time, torch
free, total = torch.cuda.mem_get_info()
keep = 3 << 30
x = torch.empty(free - keep, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print(f"holder: holds {x.numel() / 2**30:.1f} GiB of {total / 2**30:.1f} GiB, leaves {keep / 2**30:.1f} GiB", flush=True)
open("/tmp/holder.ready", "w").write("1")
time.sleep(300)
EOF
HOLDER=$!
for _ in $(seq 60); do [[ -f /tmp/holder.ready ]] && break; sleep 0.5; done
smi
timeout 90 $W "${GEN[@]}" --steps 2 --width 1024 --height 1024 --frames 81 > $OUT/oom.txt 2>&1; rc=$?
kill $HOLDER; wait $HOLDER 2>/dev/null
cat $OUT/oom.txt
LAST=$(grep -v '^warning:' $OUT/oom.txt | grep -v '^step ' | tail -1)
[[ $rc != 0 ]] && [[ $(grep -v '^warning:' $OUT/oom.txt | grep -vc '^step ') == 1 ]] \
  && echo "$LAST" | grep -q 'out of memory' && echo "$LAST" | grep -q 'settings that fit: ' \
  && pass "real OOM: one line naming the estimate and settings that fit" || fail "real OOM (rc $rc): $LAST"
sleep 1; smi

echo "=== normal generate after it, 832×480×81 $(elapsed)"
sampled timeout 90 $W "${GEN[@]}" --width 832 --height 480 --frames 81 --steps 4 > $OUT/normal.txt 2>&1; rc=$?
cat $OUT/normal.txt | grep -v '^step '
[[ $rc == 0 ]] && grep -q '; peak GPU memory .* of .*GiB' $OUT/normal.txt \
  && pass "normal generate completes and prints the NVML peak" || fail "normal generate (rc $rc)"
echo "=== nvidia-smi $(elapsed)"
smi
echo "=== $FAILS failure(s) $(elapsed)"
exit $FAILS

#!/usr/bin/env bash
# `make demo`: the whole flow on this machine, no GPU needed.
#   1. the local stack is up (make up ran before this script),
#   2. builds t2v and t2v-worker,
#   3. writes a tiny RANDOM-WEIGHT Wan2.2 model in the diffusers layout (build/demo/model),
#   4. starts one worker on the CPU with that model,
#   5. submits a prompt with `t2v submit --wait` (progress bar) and prints where the MP4 and thumbnail are.
# The video shows noise-like colour patterns: the weights are random, the pipeline is real.
# Point a worker at a real checkpoint with [model] dir = "/path/to/Wan2.2-T2V-A14B-Diffusers".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
set -a; source .stack/env; set +a

DEMO="$PWD/build/demo"
PORT="${T2V_DEMO_HTTP_PORT:-9191}"
mkdir -p "$DEMO"

echo "demo: building t2v and t2v-worker"
cargo build --quiet -p t2v-producer --bin t2v -p t2v-worker --bin t2v-worker
T2V="$CARGO_TARGET_DIR/debug/t2v"
WORKER="$CARGO_TARGET_DIR/debug/t2v-worker"

if [ ! -f "$DEMO/model/model_index.json" ]; then
  echo "demo: writing a tiny random-weight Wan2.2 model (two experts) to $DEMO/model"
  python pipeline/parity/wan_pipeline.py --model-only "$DEMO/model" >"$DEMO/model.log" 2>&1 \
    || { cat "$DEMO/model.log"; exit 1; }
fi

cat >"$DEMO/worker.toml" <<TOML
# The demo worker: CPU, tiny random-weight model, outputs on the local filesystem.
[http]
port = $PORT
address = "127.0.0.1"

[kafka]
brokers = "$T2V_BROKERS"
group_id = "t2v-demo"

[storage]
url = "file://$DEMO/outputs"

[model]
dir = "$DEMO/model"
name = "wan2.2-t2v-tiny-demo"
backend = "wan"
TOML
mkdir -p "$DEMO/outputs"

echo "demo: starting t2v-worker (log: $DEMO/worker.log)"
"$WORKER" --config "$DEMO/worker.toml" run >"$DEMO/worker.log" 2>&1 &
worker_pid=$!
trap 'kill -TERM $worker_pid 2>/dev/null; wait $worker_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $worker_pid 2>/dev/null || { echo "demo: the worker exited:"; tail -20 "$DEMO/worker.log"; exit 1; }
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "demo: worker not ready after 60 s:"; tail -20 "$DEMO/worker.log"; exit 1; }

echo "demo: submitting a prompt"
# The demo model is in no fleet of schemas/topics.yaml: send it straight to the normal lane the
# worker reads, instead of routing by model.
"$T2V" --brokers "$T2V_BROKERS" --requests-topic t2v.requests.v1 submit "a red fox running through fresh snow, cinematic" \
  --model wan2.2-t2v-tiny-demo --size 320x192 --frames 17 --steps 8 --seed 42 --wait --wait-timeout-secs 600

echo
echo "demo: outputs are under $DEMO/outputs (the file:// URIs above): <job>/runs/<attempt>.<n>/video.mp4 and thumbnail.jpg."
echo "demo: the model has random weights, so the video is coloured noise; see README for a real checkpoint."

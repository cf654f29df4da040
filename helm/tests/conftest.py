"""Shared helpers for the chart tests: render the chart with helm, parse the manifests.

Every scenario is the chart's defaults or one ci/*-values.yaml file, rendered as release
`t2v` in namespace `t2v` (other releases where a test says so). Renders are cached, so
each scenario costs one `helm template` per session.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "t2v-worker"
CI_DIR = CHART / "ci"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion); a go-installed helm
# otherwise assumes v1.20 and refuses the chart.
KUBE_VERSION = "1.30.0"
RELEASE = "t2v"
NAMESPACE = "t2v"
# The topic contracts, source of truth for the partition bound of the autoscaler.
TOPICS_YAML = REPO / "schemas" / "topics.yaml"
REQUESTS_TOPIC = "t2v.requests.v1"
# The default model's priority lanes, highest first (schemas/topics.yaml `models`).
LANE_TOPICS = ["t2v.requests.high.v1", "t2v.requests.v1", "t2v.requests.batch.v1"]


def model_lane_topics(model: str) -> list[str]:
    """The request topics of `model`'s lanes, highest first, from schemas/topics.yaml."""
    import yaml

    routes = yaml.safe_load(TOPICS_YAML.read_text())
    lanes = [lane["name"] for lane in routes["lanes"]]
    entry = next(m for m in routes["models"] if m["name"] == model)
    return [entry["requests"][lane] for lane in lanes]

SCENARIOS = ["defaults"] + sorted(p.name for p in CI_DIR.glob("*-values.yaml"))


def helm_bin() -> str:
    found = shutil.which("helm")
    if not found:
        pytest.fail("helm not found on PATH: run `make deps` (scripts/deps.sh builds it into $T2V_TOOLS/bin)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_bin(), *args], capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def values_args(scenario: str) -> list[str]:
    return [] if scenario == "defaults" else ["-f", str(CI_DIR / scenario)]


def template_args(scenario: str, release: str, namespace: str, extra: tuple[str, ...]) -> list[str]:
    return ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
            *values_args(scenario), *extra]


@functools.lru_cache(maxsize=None)
def render(scenario: str, release: str = RELEASE, namespace: str = NAMESPACE, extra: tuple[str, ...] = ()) -> tuple[dict, ...]:
    """Rendered objects of one scenario (helm test hooks included)."""
    out = helm(*template_args(scenario, release, namespace, extra)).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render_error(scenario: str, *extra: str) -> str:
    """stderr of a render that must fail; fails the test if it renders."""
    proc = helm(*template_args(scenario, RELEASE, NAMESPACE, extra), check=False)
    if proc.returncode == 0:
        pytest.fail(f"helm template {scenario} {' '.join(extra)} rendered, but should have been refused")
    return proc.stderr


def of_kind(docs, kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind: str) -> dict:
    found = [d for d in of_kind(docs, kind) if not is_hook(d)]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def is_hook(doc: dict) -> bool:
    return "helm.sh/hook" in (doc.get("metadata", {}).get("annotations") or {})


def worker_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


def worker_toml(docs) -> dict:
    """The worker.toml the pods mount, parsed."""
    deployment = one(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in worker_container(deployment)["volumeMounts"] if m["mountPath"] == "/etc/t2v")
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    cm = next(c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == cm_name)
    return tomllib.loads(cm["data"]["worker.toml"])


def chart_values(scenario: str) -> dict:
    """Effective values of a scenario: defaults with the ci file merged over them, as helm does."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    if scenario == "defaults":
        return base
    return deep_merge(base, yaml.safe_load((CI_DIR / scenario).read_text()) or {})


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def topic_partitions(topic: str) -> int:
    """Partition count of `topic` in schemas/topics.yaml (list-of-topics or map layout)."""
    if not TOPICS_YAML.is_file():
        pytest.fail(f"{TOPICS_YAML} is missing: the partition bound of the ScaledObject is checked against it")
    found = _find_topic(yaml.safe_load(TOPICS_YAML.read_text()), topic)
    if found is None:
        pytest.fail(f"{TOPICS_YAML} has no `partitions` for topic {topic}")
    return int(found)


def _find_topic(node, topic: str):
    if isinstance(node, dict):
        if node.get("name") == topic and "partitions" in node:
            return node["partitions"]
        if isinstance(node.get(topic), dict) and "partitions" in node[topic]:
            return node[topic]["partitions"]
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _find_topic(child, topic)
        if found is not None:
            return found
    return None


@pytest.fixture(params=SCENARIOS)
def scenario(request) -> str:
    return request.param


@pytest.fixture
def docs(scenario) -> tuple[dict, ...]:
    return render(scenario)

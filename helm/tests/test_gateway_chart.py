"""Tests of helm/t2v-gateway over its rendered manifests: every object the API needs is there and
wired (Deployment, Service, Ingress with TLS, HPA on CPU, PDB, ServiceMonitor, probes), secrets
reach the pods only through Secrets, PostgreSQL is external, and the limits land in the TOML
the gateway reads."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from conftest import KUBE_VERSION, REPO, helm

CHART = REPO / "helm" / "t2v-gateway"
CI_DIR = CHART / "ci"
SCENARIOS = sorted(p.name for p in CI_DIR.glob("*-values.yaml"))


@functools.lru_cache(maxsize=None)
def render(scenario: str, *extra: str) -> tuple[dict, ...]:
    out = helm("template", "t2v", str(CHART), "--namespace", "t2v", "--kube-version", KUBE_VERSION,
               "-f", str(CI_DIR / scenario), *extra).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def refused(*args: str) -> str:
    proc = helm("template", "t2v", str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert proc.returncode != 0, f"rendered, but should have been refused: {args}"
    return proc.stderr


def one(docs, kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(docs) -> dict:
    return {e["name"]: e for e in container(docs)["env"]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_lints_strict(scenario):
    helm("lint", "--strict", str(CHART), "-f", str(CI_DIR / scenario))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_has_every_object_and_selects_only_its_pods(scenario):
    docs = render(scenario)
    kinds = sorted(d["kind"] for d in docs)
    for kind in ["Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "ServiceMonitor", "ConfigMap", "ServiceAccount"]:
        assert kind in kinds, f"{kind} missing from {kinds}"
    deployment = one(docs, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "t2v-gateway", "app.kubernetes.io/instance": "t2v"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    for kind in ["Service", "ServiceMonitor"]:
        spec = one(docs, kind)["spec"]
        assert spec["selector"].get("matchLabels", spec["selector"]) == selector, kind
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_ingress_serves_https_only_to_its_service(scenario):
    docs = render(scenario)
    ingress = one(docs, "Ingress")["spec"]
    host = ingress["rules"][0]["host"]
    assert ingress["tls"][0]["hosts"] == [host] and ingress["tls"][0]["secretName"]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == one(docs, "Service")["metadata"]["name"]
    assert "ingress.tlsSecretName is required" in refused("-f", str(CI_DIR / scenario), "--set", "ingress.tlsSecretName=")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_scales_on_cpu_and_keeps_one_pod_through_drains(scenario):
    docs = render(scenario)
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] >= 2
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] >= 1
    assert container(docs)["resources"]["requests"]["cpu"], "CPU utilisation needs a CPU request"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_gateway_secrets_come_only_from_secrets(scenario):
    docs = render(scenario)
    variables = env(docs)
    for name in ["T2V_GATEWAY__DATABASE__URL", "T2V_GATEWAY__AUTH__ISSUER", "T2V_GATEWAY__AUTH__AUDIENCE",
                 "T2V_GATEWAY__AUTH__JWKS_URL"]:
        assert "secretKeyRef" in variables[name]["valueFrom"], name
        assert "value" not in variables[name], name
    config_text = json.dumps([d for d in docs if d["kind"] == "ConfigMap"])
    for secret_word in ["postgres://", "dev-only", "issuer =", "jwks"]:
        assert secret_word not in config_text, f"{secret_word!r} in a ConfigMap"
    probes = container(docs)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_gateway_managed_postgres_uses_the_existing_secrets():
    docs = render("managed-postgres-values.yaml")
    variables = env(docs)
    assert variables["T2V_GATEWAY__DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "t2v-gateway-db", "key": "url"}
    assert variables["T2V_GATEWAY__AUTH__ISSUER"]["valueFrom"]["secretKeyRef"]["name"] == "t2v-gateway-jwt"
    assert not [d for d in docs if d["kind"] == "Secret"], "nothing left for the chart's own Secret"
    assert "database.url or database.existingSecret is required" in refused(
        "--set", "auth.existingSecret=x")


def test_gateway_inline_secrets_land_in_a_secret():
    docs = render("inline-secrets-values.yaml")
    secret = one(docs, "Secret")
    assert secret["stringData"]["database-url"].startswith("postgres://")
    assert secret["stringData"]["jwks-url"].startswith("https://")
    assert env(docs)["T2V_GATEWAY__DATABASE__URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def test_gateway_toml_carries_the_plans():
    docs = render("managed-postgres-values.yaml")
    toml = tomllib.loads(one(docs, "ConfigMap")["data"]["gateway.toml"])
    assert toml["limits"]["plans"]["free"] == {"requests_per_sec": 1, "burst": 5, "videos_per_day": 10,
                                                "gpu_seconds_per_day": 3600}
    assert toml["limits"]["default"]["burst"] == 20
    assert toml["kafka"]["events_topic"] == "t2v.events.v1"
    assert toml["database"]["max_connections"] == 20
    assert container(docs)["env"][0] == {"name": "T2V_GATEWAY_CONFIG", "value": "/etc/t2v-gateway/gateway.toml"}


def test_gateway_values_match_their_schema_and_every_key_is_documented():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    for scenario in SCENARIOS:
        jsonschema.validate(yaml.safe_load((CI_DIR / scenario).read_text()), schema)
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys = [(i, line) for i, line in enumerate(lines) if re.match(r"^[A-Za-z]\w*:", line)]
    assert len(keys) > 15
    for i, line in keys:
        assert lines[i - 1].startswith("# --"), f"top-level key without a `# --` comment: {line}"
    assert "database.url or database.existingSecret is required" in refused()


def test_gateway_image_lints_and_matches_the_chart():
    dockerfile = REPO / "docker" / "gateway.Dockerfile"
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: run helm/tests/deps.sh"
    proc = subprocess.run([hadolint, "--no-color", "--config", str(REPO / "docker" / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = dockerfile.read_text()
    assert "-p t2v-gateway --bin t2v-gateway" in text
    [user] = [l.split()[1] for l in text.splitlines() if l.startswith("USER ")]
    pod = one(render("inline-secrets-values.yaml"), "Deployment")["spec"]["template"]["spec"]
    assert int(user.split(":")[0]) == pod["securityContext"]["runAsUser"] != 0
    assert "EXPOSE 8080" in text and container(render("inline-secrets-values.yaml"))["ports"][0]["containerPort"] == 8080


def test_gateway_webhook_secrets_are_mounted_from_a_secret():
    docs = render("managed-postgres-values.yaml")
    toml = tomllib.loads(one(docs, "ConfigMap")["data"]["gateway.toml"])
    hooks = toml["webhooks"]
    assert hooks["tenants"]["acme"] == {"url": "https://hooks.acme.example/t2v",
                                        "secret_file": "/etc/t2v-gateway-webhooks/acme"}
    assert hooks["tenants"]["globex"] == {"secret_file": "/etc/t2v-gateway-webhooks/globex"}
    assert hooks["allow_http"] is False and hooks["allowed_cidrs"] == [] and hooks["max_attempts"] == 12
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "webhook-secrets"]
    assert volume["secret"]["secretName"] == "t2v-gateway-webhooks"
    assert volume["secret"]["defaultMode"] == 0o440 and pod["securityContext"]["fsGroup"] == 10001, \
        "readable by the gateway's group only"
    assert sorted(i["key"] for i in volume["secret"]["items"]) == ["acme", "globex"]
    [mount] = [m for m in container(docs)["volumeMounts"] if m["name"] == "webhook-secrets"]
    assert mount["mountPath"] == "/etc/t2v-gateway-webhooks" and mount["readOnly"]
    assert "whsec" not in json.dumps([d for d in docs if d["kind"] == "ConfigMap"])
    assert "webhooks.existingSecret is required" in refused(
        "-f", str(CI_DIR / "managed-postgres-values.yaml"), "--set", "webhooks.existingSecret=")
    plain = render("inline-secrets-values.yaml")
    assert not [v for v in one(plain, "Deployment")["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "webhook-secrets"], "no tenants, no mount"


def test_gateway_console_sign_in_and_the_webhook_lease_land_in_the_toml():
    base = ("-f", str(CI_DIR / "managed-postgres-values.yaml"))
    plain = tomllib.loads(one(render("managed-postgres-values.yaml"), "ConfigMap")["data"]["gateway.toml"])
    assert "console" not in plain, "no client id: the console takes a pasted token"
    assert "lease_ms" not in plain["webhooks"], "unset: the gateway's default"
    docs = render("managed-postgres-values.yaml", "--set", "console.oidc.clientId=t2v-console",
                  "--set", "console.oidc.redirectUrl=https://t2v.example.com/", "--set", "webhooks.leaseMs=60000")
    toml = tomllib.loads(one(docs, "ConfigMap")["data"]["gateway.toml"])
    assert toml["console"]["oidc"] == {"client_id": "t2v-console", "redirect_url": "https://t2v.example.com/",
                                       "scopes": "openid"}
    assert toml["webhooks"]["lease_ms"] == 60000
    assert "console.oidc.redirectUrl is required" in refused(*base, "--set", "console.oidc.clientId=t2v-console")

"""Rendered objects against the published schemas of the APIs they target.

- Kubernetes built-ins: the OpenAPI JSON schemas shipped by `kubernetes-validate` (PyPI),
  strict variant (unknown fields are errors), for the oldest Kubernetes the chart supports
  and the newest the package knows.
- KEDA (ScaledObject, TriggerAuthentication) and prometheus-operator (ServiceMonitor,
  PrometheusRule): pydantic models generated from the projects' CRDs, shipped by
  `cloudcoil-models-keda` 2.16.1 and `cloudcoil-models-prometheus-operator` 0.80.1 (PyPI).
  The models check types and required fields; `unknown_fields` below adds the CRDs'
  structural-schema rule that unknown fields are errors (the API server would prune them
  silently, which is how a typo like `minReplicas` in a ScaledObject goes unnoticed).
"""

from __future__ import annotations

import json
import types
import typing

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as promop

from conftest import CHART, SCENARIOS, render

KUBE_SCHEMA_VERSIONS = ["1.30.0", "1.37.0"]
CRD_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): promop.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): promop.PrometheusRule,
}


def unknown_fields(tp, value, path: str = "") -> list[str]:
    """Paths in `value` that the model type `tp` does not declare."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return unknown_fields(args[0], value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return []
        candidates = [unknown_fields(a, value, path) for a in args if a is not type(None)]
        return min(candidates, key=len) if candidates else []
    if origin is list:
        return [e for i, v in enumerate(value) for e in unknown_fields(args[0], v, f"{path}[{i}]")] if isinstance(value, list) else []
    if origin is dict:
        return [e for k, v in value.items() for e in unknown_fields(args[1], v, f"{path}.{k}")] if isinstance(value, dict) else []
    if isinstance(tp, type) and issubclass(tp, pydantic.RootModel):
        return unknown_fields(tp.model_fields["root"].annotation, value, path)
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel) and isinstance(value, dict):
        fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
        errors = []
        for key, sub in value.items():
            if key not in fields:
                errors.append(f"{path}.{key}")
            else:
                errors += unknown_fields(fields[key].annotation, sub, f"{path}.{key}")
        return errors
    return []


def crd_errors(doc: dict) -> list[str]:
    model = CRD_MODELS[(doc["apiVersion"], doc["kind"])]
    try:
        model.model_validate(doc)
    except pydantic.ValidationError as e:
        return [str(e)]
    return [f"unknown field {p}" for p in unknown_fields(model, doc)]


@pytest.mark.parametrize("version", KUBE_SCHEMA_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_objects_match_kubernetes_schema(scenario, version):
    checked = 0
    for doc in render(scenario):
        if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against Kubernetes {version}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_match_their_crds(scenario):
    for doc in render(scenario):
        if (doc["apiVersion"], doc["kind"]) in CRD_MODELS:
            assert not crd_errors(doc), f"{doc['kind']}/{doc['metadata']['name']}: {crd_errors(doc)}"
        else:
            assert doc["apiVersion"].split("/")[0] in {"v1", "apps", "policy", "autoscaling", "networking.k8s.io"}, (
                f"no schema check for {doc['apiVersion']} {doc['kind']}"
            )


def test_crd_check_catches_typos_and_bad_types():
    so = next(d for d in render("defaults") if d["kind"] == "ScaledObject")
    typo = json.loads(json.dumps(so))
    typo["spec"]["minReplicas"] = typo["spec"].pop("minReplicaCount")
    assert crd_errors(typo) == ["unknown field .spec.minReplicas"]
    bad_type = json.loads(json.dumps(so))
    bad_type["spec"]["maxReplicaCount"] = "twelve"
    assert crd_errors(bad_type)
    nested = json.loads(json.dumps(so))
    nested["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["window"] = 1
    assert crd_errors(nested) == ["unknown field .spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.window"]


def test_values_schema_is_valid_and_accepts_every_ci_file():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)

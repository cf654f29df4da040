"""Unit tests over the rendered chart: the settings whose mistakes only show in production.

Each test renders the chart (defaults and every ci/*-values.yaml) and checks one thing a
broken template would get wrong: a missing or unsized /dev/shm, no GPU limit, a
ScaledObject on the wrong topic or group or above the partition count, a grace period
that kills the checkpoint, probes on a port the worker does not serve, credentials in a
ConfigMap, two releases that overwrite or select each other.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import values_doc
import yaml

from conftest import (
    CHART,
    LANE_TOPICS,
    REQUESTS_TOPIC,
    model_lane_topics,
    TOPICS_YAML,
    SCENARIOS,
    chart_values,
    helm,
    KUBE_VERSION,
    is_hook,
    of_kind,
    one,
    render,
    render_error,
    topic_partitions,
    values_args,
    worker_container,
    worker_toml,
)

BINARY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(q) -> int:
    m = re.fullmatch(r"([0-9]+)(Ki|Mi|Gi|Ti)?", str(q))
    assert m, f"unexpected quantity {q!r}"
    return int(m.group(1)) * BINARY_UNITS.get(m.group(2) or "", 1)


def pod_specs(docs):
    """(name, pod spec) of the Deployment's template and of every hook pod."""
    yield "deployment", one(docs, "Deployment")["spec"]["template"]["spec"]
    for pod in of_kind(docs, "Pod"):
        yield pod["metadata"]["name"], pod["spec"]


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- lint --------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario):
    helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values_args(scenario))


# --- /dev/shm and GPU ----------------------------------------------------------------------


def test_shm_is_memory_backed_sized_and_mounted(scenario, docs):
    want = quantity_bytes(chart_values(scenario)["shm"]["sizeLimit"])
    assert want >= 2**30, "a /dev/shm under 1 GiB breaks pinned-memory transfers"
    for name, spec in pod_specs(docs):
        shm_volumes = {v["name"]: v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
        mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        assert mounts, f"{name}: nothing mounted at /dev/shm (the container default is 64 MiB)"
        for m in mounts:
            assert m["name"] in shm_volumes, f"{name}: /dev/shm is not a memory-backed emptyDir"
            assert quantity_bytes(shm_volumes[m["name"]]["emptyDir"]["sizeLimit"]) == want, f"{name}: /dev/shm size"


def test_gpu_limit_set(scenario, docs):
    values = chart_values(scenario)
    resource, count = values["gpu"]["resourceName"], values["gpu"]["count"]
    assert count >= 1
    for name, spec in pod_specs(docs):
        for c in spec["containers"]:
            limits = c.get("resources", {}).get("limits", {})
            assert int(limits.get(resource, 0)) == count, f"{name}/{c['name']}: {resource} limit"
            requests = c.get("resources", {}).get("requests", {})
            if resource in requests:
                assert int(requests[resource]) == count, f"{name}/{c['name']}: GPU request differs from limit"


# --- autoscaling ---------------------------------------------------------------------------


def test_scaler_targets_requests_topic_and_group(scenario, docs):
    mode = chart_values(scenario)["autoscaling"]["mode"]
    toml = worker_toml(docs)
    deployment = one(docs, "Deployment")
    if mode == "keda":
        so = one(docs, "ScaledObject")
        assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        triggers = so["spec"]["triggers"]
        assert [t["metadata"]["topic"] for t in triggers] == toml["kafka"]["requests_topics"], (
            "one trigger per lane the workers read"
        )
        assert toml["kafka"]["requests_topics"] == model_lane_topics(toml["model"]["name"])
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == toml["kafka"]["group_id"], "KEDA must watch the group the workers join"
            assert meta["bootstrapServers"] == toml["kafka"]["brokers"]
            assert meta["allowIdleConsumers"] == "false"
        modifiers = so["spec"]["advanced"]["scalingModifiers"]
        assert modifiers["formula"] == " + ".join(t["name"] for t in triggers), "KEDA scales on the sum of the lanes"
        assert modifiers["target"] == str(chart_values(scenario)["autoscaling"]["lagThreshold"])
        assert modifiers["metricType"] == "AverageValue"
        assert not of_kind(docs, "HorizontalPodAutoscaler"), "KEDA owns the HPA; a second one would fight it"
        assert "replicas" not in deployment["spec"], "a fixed replica count resets KEDA's on every upgrade"
    elif mode == "hpa":
        hpa = one(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        topics = [m["external"]["metric"]["selector"]["matchLabels"] for m in hpa["spec"]["metrics"]]
        lanes = model_lane_topics(toml["model"]["name"])
        assert topics == [{"consumergroup": toml["kafka"]["group_id"], "topic": t} for t in lanes]
        assert hpa["spec"]["minReplicas"] >= 1
        assert not of_kind(docs, "ScaledObject")
        assert "replicas" not in deployment["spec"]
    else:
        assert not of_kind(docs, "ScaledObject") and not of_kind(docs, "HorizontalPodAutoscaler")


def test_max_replicas_within_partitions_of_topics_yaml(scenario, docs):
    partitions = topic_partitions(REQUESTS_TOPIC)
    for so in of_kind(docs, "ScaledObject"):
        assert 0 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["maxReplicas"] <= partitions
    assert one(docs, "Deployment")["spec"].get("replicas", 0) <= partitions


def test_chart_partition_count_matches_topics_yaml():
    assert chart_values("defaults")["worker"]["kafka"]["requestsPartitions"] == topic_partitions(REQUESTS_TOPIC), (
        "worker.kafka.requestsPartitions drifted from schemas/topics.yaml"
    )


def test_replicas_above_partitions_are_refused():
    partitions = chart_values("defaults")["worker"]["kafka"]["requestsPartitions"]
    err = render_error("defaults", "--set", f"autoscaling.maxReplicas={partitions + 1}")
    assert "exceeds" in err and "partitions" in err
    err = render_error("defaults", "--set", "autoscaling.mode=none", "--set", f"replicaCount={partitions + 1}")
    assert "exceeds" in err and "partitions" in err


def test_scale_down_is_slow_and_stabilised(scenario, docs):
    for so in of_kind(docs, "ScaledObject"):
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        down = behavior["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300, "GPU replicas must outlive short lulls"
        assert all(p["type"] == "Pods" and p["value"] <= 2 for p in down["policies"])
        assert so["spec"]["cooldownPeriod"] >= 300


def test_aws_spot_example_scales_to_zero_on_spot():
    docs = render("aws-karpenter-spot-values.yaml")
    assert one(docs, "ScaledObject")["spec"]["minReplicaCount"] == 0
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"


def test_kafka_auth_reaches_keda(scenario, docs):
    values = chart_values(scenario)
    if values["autoscaling"]["mode"] != "keda" or not values["worker"]["kafka"]["securityProtocol"].startswith("SASL_"):
        return
    trigger = one(docs, "ScaledObject")["spec"]["triggers"][0]
    auth = one(docs, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert {"username", "password"} <= params
    assert trigger["metadata"]["sasl"].startswith(("plaintext", "scram_sha"))


# --- shutdown ------------------------------------------------------------------------------


def test_grace_period_covers_drain_and_checkpoint(scenario, docs):
    toml = worker_toml(docs)
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = worker_container(one(docs, "Deployment")).get("lifecycle", {}).get("preStop", {})
    pre_stop_secs = pre_stop.get("sleep", {}).get("seconds", 0)
    needed = pre_stop_secs + toml["shutdown"]["drain_deadline_secs"] + toml["checkpoint"]["max_write_secs"]
    assert spec["terminationGracePeriodSeconds"] > needed, (
        f"grace {spec['terminationGracePeriodSeconds']} s <= preStop {pre_stop_secs} + drain + checkpoint = {needed} s"
    )


def test_short_grace_period_is_refused():
    err = render_error("defaults", "--set", "terminationGracePeriodSeconds=30")
    assert "terminationGracePeriodSeconds=30" in err


def test_static_membership_uses_pod_name(scenario, docs):
    if not chart_values(scenario)["worker"]["kafka"]["staticMembership"]:
        return
    env = {e["name"]: e for e in worker_container(one(docs, "Deployment"))["env"]}
    assert env["T2V_KAFKA__INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


# --- probes and ports ----------------------------------------------------------------------


def test_probes_and_metrics_point_at_the_worker_port(scenario, docs):
    port = worker_toml(docs)["http"]["port"]
    container = worker_container(one(docs, "Deployment"))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}

    def resolve(p):
        return named[p] if isinstance(p, str) else p

    assert port in named.values(), "the container does not declare the port the worker serves"
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = container[probe]["httpGet"]
        assert (resolve(get["port"]), get["path"]) == (port, path), probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "weight loading needs minutes"
    for svc in of_kind(docs, "Service"):
        for sp in svc["spec"]["ports"]:
            assert resolve(sp["targetPort"]) == port
        for sm in of_kind(docs, "ServiceMonitor"):
            names = {sp["name"] for sp in svc["spec"]["ports"]}
            assert all(ep["port"] in names and ep["path"] == "/metrics" for ep in sm["spec"]["endpoints"])


# --- secrets -------------------------------------------------------------------------------


def secret_strings(docs) -> set[str]:
    found = set()
    for s in of_kind(docs, "Secret"):
        found |= {base64.b64decode(v).decode() for v in (s.get("data") or {}).values()}
        found |= set((s.get("stringData") or {}).values())
    return {v for v in found if len(v) >= 4}


def test_secrets_never_inlined_outside_secrets(scenario, docs):
    sentinels = set(re.findall(r"SENTINEL-[A-Za-z0-9-]+", yaml.safe_dump(chart_values(scenario))))
    secrets = secret_strings(docs)
    assert sentinels <= secrets, "an inline credential did not end up in a Secret"
    forbidden = secrets | sentinels
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(doc)
        leaked = [s for s in forbidden if s in text]
        assert not leaked, f"{doc['kind']}/{doc['metadata']['name']} contains credentials {leaked}"
    toml_text = yaml.safe_dump(worker_toml(docs))
    assert not re.search(r"(?i)password|secret_access|sasl_username", toml_text)


def test_credentials_in_extra_config_are_refused():
    err = render_error("defaults", "--set-string", "worker.extraConfig=[kafka]\nsasl_password = \"x\"")
    assert "credentials" in err


# --- security ------------------------------------------------------------------------------


def test_pods_run_non_root_with_read_only_root(scenario, docs):
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, c["name"]
            assert "ALL" in sc["capabilities"]["drop"], c["name"]
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{c['name']}: no writable /tmp"


def test_model_weights_mounted_where_config_points(scenario, docs):
    model_dir = worker_toml(docs)["model"]["dir"]
    mounts = worker_container(one(docs, "Deployment"))["volumeMounts"]
    assert any(model_dir.startswith(m["mountPath"].rstrip("/") + "/") and m["readOnly"] for m in mounts), (
        "model.dir is not under a read-only mount"
    )


# --- two releases ----------------------------------------------------------------------------


def test_two_releases_in_one_namespace_do_not_collide(scenario):
    a, b = render(scenario, release="alpha"), render(scenario, release="beta")
    names_a = {(d["kind"], d["metadata"]["name"]) for d in a}
    names_b = {(d["kind"], d["metadata"]["name"]) for d in b}
    assert not names_a & names_b, f"both releases create {names_a & names_b}"
    pods_b = [one(b, "Deployment")["spec"]["template"]["metadata"]["labels"]] + [p["metadata"]["labels"] for p in of_kind(b, "Pod")]
    for doc in a:
        spec = doc.get("spec", {})
        selector = spec.get("selector", {})
        selector = selector.get("matchLabels", selector) if doc["kind"] != "Service" else selector
        if doc["kind"] == "NetworkPolicy":
            selector = spec["podSelector"]["matchLabels"]
        if not selector or doc["kind"] == "ServiceMonitor":
            continue
        assert set(selector) != {"app"}, f"{doc['kind']} selects on a bare app label"
        assert not any(labels_match(selector, labels) for labels in pods_b), f"alpha's {doc['kind']} selects beta's pods"
    services_b = [svc["metadata"]["labels"] for svc in of_kind(b, "Service")]
    for sm in of_kind(a, "ServiceMonitor"):
        assert not any(labels_match(sm["spec"]["selector"]["matchLabels"], labels) for labels in services_b)
    for so in of_kind(a, "ScaledObject"):
        assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] not in {
            s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"] for s in of_kind(b, "ScaledObject")
        }
    uids = [yaml.safe_load(list(cm["data"].values())[0])["uid"] for cm in of_kind(a + b, "ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]]
    assert len(uids) == len(set(uids)), "two dashboards with one Grafana uid overwrite each other"


def test_doctor_pod_is_not_selected_by_the_fleet(scenario, docs):
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    for pod in of_kind(docs, "Pod"):
        assert is_hook(pod)
        assert not labels_match(selector, pod["metadata"]["labels"]), "the Service/PDB would count the doctor pod"
        assert pod["spec"]["containers"][0]["args"][0] == "doctor"


# --- values documentation ------------------------------------------------------------------


def test_every_values_key_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    undocumented = []
    list_indent = None  # keys inside list items (e.g. tolerations) are data, not values keys
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if re.match(r"^\s*- ", line):
            list_indent = indent if list_indent is None else min(list_indent, indent)
            continue
        if not re.match(r"^\s*[A-Za-z0-9_./-]+:", line):
            continue
        if list_indent is not None and indent > list_indent:
            continue
        list_indent = None
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        if j < 0 or not lines[j].strip().startswith("# --"):
            undocumented.append(f"line {i + 1}: {line.strip()}")
    assert not undocumented, "keys without a `# --` comment:\n" + "\n".join(undocumented)


def test_readme_values_table_is_current():
    readme = (CHART / "README.md").read_text()
    assert values_doc.table() in readme, "README values table is stale: python helm/tests/values_doc.py --write"


def test_values_schema_rejects_unknown_keys():
    err = render_error("defaults", "--set", "worker.kafka.gruopId=typo")
    assert "gruopId" in err


def test_telemetry_settings_reach_worker_toml():
    toml = worker_toml(render("defaults", extra=(
        "--set", "worker.telemetry.otlpEndpoint=http://otel-collector.observability.svc:4318",
        "--set-json", "worker.telemetry.sampleRatio=0.25",
    )))
    assert toml["telemetry"] == {
        "otlp_endpoint": "http://otel-collector.observability.svc:4318",
        "service_name": "t2v-worker",
        "sample_ratio": 0.25,
    }
    err = render_error("defaults", "--set", "worker.telemetry.otlpEndpoint=otel-collector:4317")
    assert "otlpEndpoint" in err


def test_collectives_reach_worker_toml_and_only_known_ones():
    assert worker_toml(render("defaults"))["model"]["collectives"] == "auto"
    toml = worker_toml(render("defaults", extra=("--set", "gpu.count=2", "--set", "worker.model.collectives=nccl")))
    assert toml["model"]["collectives"] == "nccl"
    assert "collectives" in render_error("defaults", "--set", "worker.model.collectives=mpi")


def test_memory_budget_takes_a_decimal_from_set():
    # `helm --set` hands decimals over as strings; the schema accepts numeric strings only.
    toml = worker_toml(render("defaults", extra=("--set", "worker.model.memoryBudgetGib=70.5")))
    assert toml["model"]["memory_budget_gib"] == 70.5
    assert "memoryBudgetGib" in render_error("defaults", "--set", "worker.model.memoryBudgetGib=lots")
    assert "memoryBudgetGib" in render_error("defaults", "--set", "worker.model.memoryBudgetGib=-1")


# --- secrets: quoted TOML keys, storage env, extraEnv ----------------------------------------


@pytest.mark.parametrize("extra", [
    '[kafka]\n"sasl.password" = "x"',
    "[kafka]\n'sasl.password' = 'x'",
    'kafka."sasl.password" = "x"',
    '[kafka]\n"sasl.jaas.config" = "x"',
    '[storage]\n"aws_secret_access_key"="x"',
])
def test_quoted_credential_keys_in_extra_config_are_refused(extra):
    err = render_error("defaults", "--set-string", f"worker.extraConfig={extra}")
    assert "credentials" in err


@pytest.mark.parametrize("name", [
    "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_SAS_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
])
def test_plain_storage_credentials_are_refused(name):
    err = render_error("defaults", "--set-string", f"worker.storage.env.{name}=SENTINEL-plain")
    assert name in err and "Secret" in err
    err = render_error("defaults", "--set-json", f'worker.extraEnv=[{{"name":"{name}","value":"SENTINEL-plain"}}]')
    assert name in err and "Secret" in err


def test_storage_env_takes_secret_key_refs():
    docs = render("defaults", extra=(
        "--set-json", 'worker.storage.env={"AWS_REGION":"eu-west-1","AWS_SECRET_ACCESS_KEY":{"secretKeyRef":{"name":"s3","key":"secret"}}}',
        "--set", "worker.model.sync.enabled=true",
    ))
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    for c in spec["containers"] + spec["initContainers"]:
        env = {e["name"]: e for e in c["env"]}
        assert env["AWS_REGION"] == {"name": "AWS_REGION", "value": "eu-west-1"}, c["name"]
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}
        }, c["name"]


def test_secret_looking_env_is_never_a_plain_value(scenario, docs):
    secretish = re.compile(r"(?i)(SECRET|PASSWORD|TOKEN|ACCESS_KEY|ACCOUNT_KEY|SAS_|CONNECTION_STRING|SERVICE_ACCOUNT_KEY)")
    for name, spec in pod_specs(docs):
        for c in spec["containers"] + spec.get("initContainers", []):
            for e in c.get("env", []):
                if secretish.search(e["name"]):
                    assert "value" not in e, f"{name}/{c['name']}: {e['name']} is a plain value, not a secretKeyRef"


# --- NetworkPolicy egress destinations ----------------------------------------------------------


def egress_rule_for(np: dict, port: int) -> dict:
    rules = [r for r in np["spec"]["egress"] if any(p.get("port") == port for p in r.get("ports", []))]
    assert len(rules) == 1, f"one egress rule for port {port}: {rules}"
    return rules[0]


def test_network_policy_egress_destinations_are_configurable():
    kafka_to = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}]
    storage_to = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    dns_to = [{"ipBlock": {"cidr": "169.254.20.10/32"}}]
    docs = render("defaults", extra=(
        "--set", "networkPolicy.enabled=true",
        "--set-json", f"networkPolicy.kafkaTo={json.dumps(kafka_to)}",
        "--set-json", f"networkPolicy.storageTo={json.dumps(storage_to)}",
        "--set-json", f"networkPolicy.dnsTo={json.dumps(dns_to)}",
    ))
    np = one(docs, "NetworkPolicy")
    assert egress_rule_for(np, 9092)["to"] == kafka_to
    assert egress_rule_for(np, 443)["to"] == storage_to
    assert egress_rule_for(np, 53)["to"] == dns_to


def test_network_policy_dns_defaults_to_cluster_dns():
    np = one(render("defaults", extra=("--set", "networkPolicy.enabled=true")), "NetworkPolicy")
    to = egress_rule_for(np, 53)["to"]
    assert to and all("namespaceSelector" in peer and "podSelector" in peer for peer in to), to


def test_network_policy_allows_otlp_only_when_telemetry_is_configured():
    np = one(render("defaults", extra=("--set", "networkPolicy.enabled=true")), "NetworkPolicy")
    assert not any(p.get("port") == 4318 for r in np["spec"]["egress"] for p in r.get("ports", []))
    otlp_to = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]
    np = one(render("defaults", extra=(
        "--set", "networkPolicy.enabled=true",
        "--set", "worker.telemetry.otlpEndpoint=http://otel-collector.observability.svc:4318",
        "--set-json", f"networkPolicy.otlpTo={json.dumps(otlp_to)}",
    )), "NetworkPolicy")
    assert egress_rule_for(np, 4318)["to"] == otlp_to
    np = one(render("defaults", extra=(
        "--set", "networkPolicy.enabled=true",
        "--set-json", 'worker.extraEnv=[{"name":"OTEL_EXPORTER_OTLP_ENDPOINT","value":"http://collector:4318"}]',
    )), "NetworkPolicy")
    assert "to" not in egress_rule_for(np, 4318), "no otlpTo: any destination on the OTLP port"


def test_network_policy_schema_refuses_bad_peers():
    err = render_error("defaults", "--set", "networkPolicy.enabled=true", "--set-json", 'networkPolicy.kafkaTo=[{"cidr":"10.0.0.0/8"}]')
    assert "kafkaTo" in err


def test_lanes_and_model_come_from_topics_yaml_and_the_chart_copy_matches():
    chart_copy = CHART / "files" / "topics.yaml"
    assert chart_copy.read_text() == TOPICS_YAML.read_text(), (
        "helm/t2v-worker/files/topics.yaml drifted: cp schemas/topics.yaml helm/t2v-worker/files/topics.yaml"
    )
    routes = yaml.safe_load(TOPICS_YAML.read_text())
    model = routes["models"][0]
    assert [model["requests"][lane["name"]] for lane in routes["lanes"]] == LANE_TOPICS
    toml = worker_toml(render("defaults"))
    assert toml["model"]["name"] == model["name"]
    assert toml["kafka"]["lane_aging_secs"] == 600


def test_a_model_routes_the_fleet_to_its_own_topics(tmp_path):
    docs = render("defaults", extra=("--set", "worker.kafka.requestsTopics={fast.high,fast.normal}"))
    toml = worker_toml(docs)
    assert toml["kafka"]["requests_topics"] == ["fast.high", "fast.normal"]
    so = one(docs, "ScaledObject")
    assert [t["metadata"]["topic"] for t in so["spec"]["triggers"]] == ["fast.high", "fast.normal"]
    assert so["spec"]["advanced"]["scalingModifiers"]["formula"] == "lane0 + lane1"
    single = one(render("defaults", extra=("--set", "worker.kafka.requestsTopics={only}")), "ScaledObject")
    assert "scalingModifiers" not in single["spec"]["advanced"], "one lane needs no formula"
    error = render_error("defaults", "--set", "worker.model.name=wan2.1-t2v-14b")
    assert "worker.model.name=wan2.1-t2v-14b is not a model of files/topics.yaml" in error
    assert "served: wan2.2-t2v-a14b" in error

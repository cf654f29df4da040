"""Mutation check of the chart tests: break each template once, in a scratch copy of
helm/, docker/, scripts/ and schemas/, and report which tests catch it. Every entry must
make at least one test fail. Not part of `make test` (about 5 minutes):

    source scripts/env.sh && python helm/tests/mutations.py [index ...]
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# (what breaks, file, exact text, replacement)
BREAKS = [
 ("shm not memory-backed", "helm/t2v-worker/templates/_helpers.tpl", "    medium: Memory\n", ""),
 ("shm size dropped", "helm/t2v-worker/templates/_helpers.tpl", "    sizeLimit: {{ .Values.shm.sizeLimit }}\n", ""),
 ("shm not mounted", "helm/t2v-worker/templates/_helpers.tpl", "- name: dshm\n  mountPath: /dev/shm\n", ""),
 ("GPU limit dropped", "helm/t2v-worker/templates/deployment.yaml", "              {{- end }}\n              {{ .Values.gpu.resourceName }}: {{ .Values.gpu.count }}\n          securityContext:", "              {{- end }}\n          securityContext:"),
 ("ScaledObject wrong topic", "helm/t2v-worker/templates/scaledobject.yaml", "topic: {{ .topic | quote }}", "topic: \"t2v.events.v1\""),
 ("ScaledObject wrong group", "helm/t2v-worker/templates/scaledobject.yaml", "consumerGroup: {{ $k.groupId | quote }}", "consumerGroup: {{ .Release.Name | quote }}"),
 ("ScaledObject max above partitions", "helm/t2v-worker/templates/scaledobject.yaml", "maxReplicaCount: {{ $a.maxReplicas }}", "maxReplicaCount: 64"),
 ("partition guard removed", "helm/t2v-worker/templates/_helpers.tpl", "{{- if gt ($a.maxReplicas | int) $partitions }}", "{{- if false }}"),
 ("chart partitions drift from topics.yaml", "helm/t2v-worker/values.yaml", "requestsPartitions: 32", "requestsPartitions: 16"),
 ("grace hard-coded 30", "helm/t2v-worker/templates/deployment.yaml", "terminationGracePeriodSeconds: {{ include \"t2v-worker.graceSeconds\" . }}", "terminationGracePeriodSeconds: 30"),
 ("grace ignores checkpoint", "helm/t2v-worker/templates/_helpers.tpl", "{{- add .Values.preStop.sleepSeconds .Values.worker.shutdown.drainDeadlineSecs .Values.worker.checkpoint.maxWriteSecs .Values.shutdownSlackSecs }}", "{{- add .Values.preStop.sleepSeconds .Values.worker.shutdown.drainDeadlineSecs }}"),
 ("readiness on /healthz", "helm/t2v-worker/templates/deployment.yaml", "path: /readyz", "path: /healthz"),
 ("probe port hard-coded", "helm/t2v-worker/templates/deployment.yaml", "              path: /healthz\n              port: http\n            periodSeconds: {{ .Values.probes.liveness.periodSeconds }}", "              path: /healthz\n              port: 8080\n            periodSeconds: {{ .Values.probes.liveness.periodSeconds }}"),
 ("containerPort not the config port", "helm/t2v-worker/templates/deployment.yaml", "containerPort: {{ .Values.worker.port }}", "containerPort: 8080"),
 ("password in worker.toml", "helm/t2v-worker/templates/configmap.yaml", "    sasl_mechanism = {{ $k.sasl.mechanism | quote }}\n", "    sasl_mechanism = {{ $k.sasl.mechanism | quote }}\n    sasl_password = {{ $k.sasl.password | quote }}\n"),
 ("storage creds as plain env", "helm/t2v-worker/templates/_helpers.tpl", "{{- range $k, $v := .Values.worker.storage.env }}\n- name: {{ $k }}", "{{- range $k, $v := merge (dict) .Values.worker.storage.env .Values.worker.storage.credentials }}\n- name: {{ $k }}"),
 ("extraConfig guard removed", "helm/t2v-worker/templates/_helpers.tpl", "{{- if regexMatch `(?i)(password|secret|token|access_key|private_key|sasl[._]username|jaas[._]config|key[._]pem)[\"']?\\s*=` .Values.worker.extraConfig }}", "{{- if false }}"),
 ("extraConfig guard misses quoted keys", "helm/t2v-worker/templates/_helpers.tpl", "|jaas[._]config|key[._]pem)[\"']?\\s*=`", "|jaas|key[._]pem)\\s*=`"),
 ("storage credential guard removed", "helm/t2v-worker/templates/_helpers.tpl", "{{- if and (kindIs \"string\" $v) (include \"t2v-worker.secretEnvName\" $name) }}", "{{- if false }}"),
 ("storage env secretKeyRef dropped", "helm/t2v-worker/templates/_helpers.tpl", "{{- if kindIs \"map\" $v }}\n  valueFrom:", "{{- if false }}\n  valueFrom:"),
 ("Kafka egress without to", "helm/t2v-worker/templates/networkpolicy.yaml", "      {{- with $np.kafkaTo }}", "      {{- with false }}"),
 ("OTLP egress rule dropped", "helm/t2v-worker/templates/networkpolicy.yaml", "    {{- if include \"t2v-worker.otlpConfigured\" . }}", "    {{- if false }}"),
 ("ConfigMap name not release-scoped", "helm/t2v-worker/templates/configmap.yaml", "  name: {{ include \"t2v-worker.fullname\" . }}", "  name: t2v-worker-config"),
 ("selector without instance label", "helm/t2v-worker/templates/_helpers.tpl", "app.kubernetes.io/name: {{ include \"t2v-worker.name\" . }}\napp.kubernetes.io/instance: {{ .Release.Name }}\n{{- end }}", "app.kubernetes.io/name: {{ include \"t2v-worker.name\" . }}\n{{- end }}"),
 ("KEDA HPA name shared", "helm/t2v-worker/templates/scaledobject.yaml", "      name: {{ include \"t2v-worker.fullname\" . }}\n      behavior:", "      name: t2v-worker-hpa\n      behavior:"),
 ("doctor pod uses selector labels", "helm/t2v-worker/templates/tests/doctor-pod.yaml", "    app.kubernetes.io/name: {{ include \"t2v-worker.name\" . }}-doctor", "    app.kubernetes.io/name: {{ include \"t2v-worker.name\" . }}"),
 ("ScaledObject field typo", "helm/t2v-worker/templates/scaledobject.yaml", "  minReplicaCount: {{ $a.minReplicas }}", "  minReplicas: {{ $a.minReplicas }}"),
 ("Deployment field typo", "helm/t2v-worker/templates/deployment.yaml", "      terminationGracePeriodSeconds:", "      terminationGracePeriod:"),
 ("runs as root-capable", "helm/t2v-worker/values.yaml", "  readOnlyRootFilesystem: true", "  readOnlyRootFilesystem: false"),
 ("undocumented values key", "helm/t2v-worker/values.yaml", "# -- Extra pod labels (never used as selectors).\n", ""),
 ("image LD_LIBRARY_PATH stale", "docker/worker.Dockerfile", "ENV LD_LIBRARY_PATH=/opt/libtorch/torch/lib", "ENV LD_LIBRARY_PATH=/opt/torch/lib"),
 ("image drops CUDA libs", "docker/worker.Dockerfile", "COPY --from=build /out/opt/libtorch /opt/libtorch", "COPY --from=build /out/opt/libtorch/torch /opt/libtorch/torch"),
 ("image runs as root", "docker/worker.Dockerfile", "USER 10001:10001", "USER root"),
 ("image without ffmpeg", "docker/worker.Dockerfile", "      ffmpeg tini", "      tini"),
]


def main() -> int:
    only = sys.argv[1:]
    survived = []
    for i, (name, rel, old, new) in enumerate(BREAKS):
        if only and str(i) not in only:
            continue
        with tempfile.TemporaryDirectory(prefix="t2v-chart-mutation-") as tmp:
            failed, summary = run_mutant(Path(tmp), rel, old, new, name)
        print(f"{i:2d} {name}: {summary}\n     failing: {', '.join(failed) or 'NONE'}", flush=True)
        if not failed:
            survived.append(name)
    if survived:
        print(f"mutations not caught: {survived}")
    return 1 if survived else 0


def run_mutant(root: Path, rel: str, old: str, new: str, name: str) -> tuple[list[str], str]:
    for d in ["helm", "docker", "scripts", "schemas"]:
        shutil.copytree(REPO / d, root / d, ignore=shutil.ignore_patterns("__pycache__"))
    f = root / rel
    text = f.read_text()
    assert old in text, f"[{name}] pattern not found in {rel}: update the mutation"
    f.write_text(text.replace(old, new, 1))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(root / "helm/tests"), "-q", "-p", "no:cacheprovider", "-rf", "--tb=no"],
        capture_output=True, text=True, cwd=root,
    )
    failed = sorted({re.sub(r"\[.*", "", l.split("::")[-1].split(" ")[0]) for l in proc.stdout.splitlines() if l.startswith("FAILED")})
    return failed, proc.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    sys.exit(main())

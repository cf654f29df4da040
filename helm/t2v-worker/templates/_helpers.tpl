{{/*
Naming, labels and the cross-key checks every template shares.
Every object name comes from `t2v-worker.fullname` and every selector from
`t2v-worker.selectorLabels`, which include the release name: two releases in one
namespace never share an object or select each other's pods.
*/}}

{{- define "t2v-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "t2v-worker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A fullname-derived name with a suffix, kept within 63 characters. */}}
{{- define "t2v-worker.suffixed" -}}
{{- $root := index . 0 }}{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "t2v-worker.fullname" $root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" }}
{{- end }}

{{- define "t2v-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "t2v-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "t2v-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "t2v-worker.labels" -}}
helm.sh/chart: {{ include "t2v-worker.chart" . }}
{{ include "t2v-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/part-of: t2v-fleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "t2v-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "t2v-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "t2v-worker.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Kafka security switches. */}}
{{- define "t2v-worker.kafkaSasl" -}}
{{- if hasPrefix "SASL_" .Values.worker.kafka.securityProtocol }}true{{ end }}
{{- end }}
{{- define "t2v-worker.kafkaTls" -}}
{{- if has .Values.worker.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}
{{/* TLS with our own CA/client cert mounted; without it the image's system CA bundle applies. */}}
{{- define "t2v-worker.kafkaTlsSecret" -}}
{{- if and (include "t2v-worker.kafkaTls" .) .Values.worker.kafka.tls.existingSecret }}true{{ end }}
{{- end }}

{{/* Secret holding the SASL credentials: the user's, or the one this chart makes from inline values. */}}
{{- define "t2v-worker.kafkaSecretName" -}}
{{- default (include "t2v-worker.suffixed" (list . "kafka")) .Values.worker.kafka.sasl.existingSecret }}
{{- end }}
{{- define "t2v-worker.storageSecretName" -}}
{{- default (include "t2v-worker.suffixed" (list . "storage")) .Values.worker.storage.existingSecret }}
{{- end }}

{{/*
Grace period the shutdown path needs: the preStop sleep runs first and counts against
the grace period, then the worker drains (finish the step), writes the checkpoint and
leaves the group. A value below this kills the pod mid-checkpoint and loses the job.
*/}}
{{- define "t2v-worker.requiredGraceSeconds" -}}
{{- add .Values.preStop.sleepSeconds .Values.worker.shutdown.drainDeadlineSecs .Values.worker.checkpoint.maxWriteSecs .Values.shutdownSlackSecs }}
{{- end }}

{{- define "t2v-worker.graceSeconds" -}}
{{- $required := include "t2v-worker.requiredGraceSeconds" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- $required }}
{{- else }}
{{- $explicit := .Values.terminationGracePeriodSeconds | int }}
{{- if lt $explicit $required }}
{{- fail (printf "terminationGracePeriodSeconds=%d is below what a clean shutdown needs: preStop %v + drain %v + checkpoint %v + slack %v = %d s. Raise it, or leave it null to compute it." $explicit .Values.preStop.sleepSeconds .Values.worker.shutdown.drainDeadlineSecs .Values.worker.checkpoint.maxWriteSecs .Values.shutdownSlackSecs $required) }}
{{- end }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/* The fleet's priority lanes as a JSON list of {name, topic}, highest first: the explicit
     worker.kafka.requestsTopics, else the lanes of worker.model.name in files/topics.yaml. */}}
{{- define "t2v-worker.lanes" -}}
{{- $explicit := .Values.worker.kafka.requestsTopics | default list }}
{{- $lanes := list }}
{{- if $explicit }}
{{- range $i, $topic := $explicit }}
{{- $lanes = append $lanes (dict "name" (printf "lane%d" $i) "topic" $topic) }}
{{- end }}
{{- else }}
{{- $routes := .Files.Get "files/topics.yaml" | fromYaml }}
{{- $model := .Values.worker.model.name }}
{{- $route := dict }}
{{- $served := list }}
{{- range $routes.models }}
{{- $served = append $served .name }}
{{- if eq .name $model }}{{- $route = . }}{{- end }}
{{- end }}
{{- if not $route }}
{{- fail (printf "worker.model.name=%s is not a model of files/topics.yaml (served: %s): add it with its request topics to schemas/topics.yaml (and copy it to the chart's files/), or set worker.kafka.requestsTopics." $model (join ", " $served)) }}
{{- end }}
{{- range $routes.lanes }}
{{- $lanes = append $lanes (dict "name" .name "topic" (index $route.requests .name)) }}
{{- end }}
{{- end }}
{{- toJson $lanes }}
{{- end }}

{{/* The request topics, highest lane first, as a list. */}}
{{- define "t2v-worker.requestsTopics" -}}
{{- $topics := list }}
{{- range (include "t2v-worker.lanes" . | fromJsonArray) }}{{- $topics = append $topics .topic }}{{- end }}
{{- toJson $topics }}
{{- end }}

{{/* Cross-key checks; included once by the ConfigMap so every render runs them. */}}
{{- define "t2v-worker.validate" -}}
{{- $a := .Values.autoscaling }}
{{- $partitions := .Values.worker.kafka.requestsPartitions | int }}
{{- $topic := include "t2v-worker.requestsTopics" . | fromJsonArray | first }}
{{- if gt ($a.maxReplicas | int) $partitions }}
{{- fail (printf "autoscaling.maxReplicas=%v exceeds the %d partitions of %s: a consumer group gives each partition to one member, so replicas beyond %d would sit idle on paid GPUs. Lower maxReplicas or add partitions (schemas/topics.yaml) and set worker.kafka.requestsPartitions." $a.maxReplicas $partitions $topic $partitions) }}
{{- end }}
{{- if and (eq $a.mode "none") (gt (.Values.replicaCount | int) $partitions) }}
{{- fail (printf "replicaCount=%v exceeds the %d partitions of %s; replicas beyond that would sit idle on paid GPUs." .Values.replicaCount $partitions $topic) }}
{{- end }}
{{- if gt ($a.minReplicas | int) ($a.maxReplicas | int) }}
{{- fail (printf "autoscaling.minReplicas=%v is above autoscaling.maxReplicas=%v." $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- $m := .Values.worker.model }}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" $m.volume.mountPath)) $m.dir) }}
{{- fail (printf "worker.model.dir=%s must lie under worker.model.volume.mountPath=%s, or the worker will not find the weights." $m.dir $m.volume.mountPath) }}
{{- end }}
{{- if and (eq $m.volume.type "pvc") (not $m.volume.claimName) }}
{{- fail "worker.model.volume.type=pvc needs worker.model.volume.claimName (a PVC holding the diffusers-format checkpoint)." }}
{{- end }}
{{- if and (eq $m.volume.type "emptyDir") (not $m.sync.enabled) }}
{{- fail "worker.model.volume.type=emptyDir starts empty: enable worker.model.sync to fill it from object storage." }}
{{- end }}
{{- /* Bare, dotted and quoted TOML keys alike: `sasl_password =`, `"sasl.password" =`, `'sasl.jaas.config' =`. */}}
{{- if regexMatch `(?i)(password|secret|token|access_key|private_key|sasl[._]username|jaas[._]config|key[._]pem)["']?\s*=` .Values.worker.extraConfig }}
{{- fail "worker.extraConfig looks like it holds credentials; it is rendered into a ConfigMap. Put them in a Secret (worker.kafka.sasl.existingSecret, worker.storage.existingSecret, worker.extraEnv with secretKeyRef)." }}
{{- end }}
{{- /* Storage credentials travel as env; a plain `value:` would sit in the Deployment for anyone who can read it. */}}
{{- range $name, $v := .Values.worker.storage.env }}
{{- if and (kindIs "string" $v) (include "t2v-worker.secretEnvName" $name) }}
{{- fail (printf "worker.storage.env.%s carries a credential, so it must come from a Secret: give it as {secretKeyRef: {name, key}}, or use worker.storage.existingSecret (worker.storage.credentials for development)." $name) }}
{{- end }}
{{- end }}
{{- range .Values.worker.extraEnv }}
{{- if and (hasKey . "value") (include "t2v-worker.secretEnvName" .name) }}
{{- fail (printf "worker.extraEnv %s carries a credential, so it must come from a Secret: use valueFrom.secretKeyRef instead of value." .name) }}
{{- end }}
{{- end }}
{{- if and .Values.worker.kafka.tls.certKey (not .Values.worker.kafka.tls.keyKey) }}
{{- fail "worker.kafka.tls.certKey needs worker.kafka.tls.keyKey (mTLS uses both)." }}
{{- end }}
{{- if and (include "t2v-worker.kafkaSasl" .) (not .Values.worker.kafka.sasl.existingSecret) (not .Values.worker.kafka.sasl.password) }}
{{- fail (printf "worker.kafka.securityProtocol=%s needs SASL credentials: worker.kafka.sasl.existingSecret (or inline username/password for development)." .Values.worker.kafka.securityProtocol) }}
{{- end }}
{{- end }}

{{/* Env names that carry credentials: access keys, secret keys, session and SAS tokens, account keys, connection strings, service account keys, passwords. */}}
{{- define "t2v-worker.secretEnvName" -}}
{{- if regexMatch "(?i)(SECRET|PASSWORD|TOKEN|ACCESS_KEY|ACCOUNT_KEY|SAS_KEY|CONNECTION_STRING|SERVICE_ACCOUNT_KEY|CREDENTIALS_JSON)" . }}true{{ end }}
{{- end }}

{{/* Storage env: plain values, or `valueFrom` for maps such as `{secretKeyRef: {name, key}}`. */}}
{{- define "t2v-worker.storageEnv" -}}
{{- range $k, $v := .Values.worker.storage.env }}
- name: {{ $k }}
{{- if kindIs "map" $v }}
  valueFrom:
    {{- toYaml $v | nindent 4 }}
{{- else }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Whether the worker exports spans: an OTLP endpoint in worker.toml or in extraEnv. */}}
{{- define "t2v-worker.otlpConfigured" -}}
{{- $found := .Values.worker.telemetry.otlpEndpoint }}
{{- range .Values.worker.extraEnv }}
{{- if has .name (list "OTEL_EXPORTER_OTLP_ENDPOINT" "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") }}{{ $found = true }}{{ end }}
{{- end }}
{{- if $found }}true{{ end }}
{{- end }}

{{/* KEDA's spelling of the SASL mechanism. */}}
{{- define "t2v-worker.kedaSasl" -}}
{{- $m := .Values.worker.kafka.sasl.mechanism }}
{{- if eq $m "PLAIN" }}plaintext{{ else if eq $m "SCRAM-SHA-256" }}scram_sha256{{ else }}scram_sha512{{ end }}
{{- end }}

{{/* Shared by the Deployment and the doctor test pod: env, volumes and mounts. */}}
{{- define "t2v-worker.env" -}}
- name: T2V_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.worker.kafka.staticMembership }}
- name: T2V_KAFKA__INSTANCE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
- name: RUST_LOG
  value: {{ .Values.worker.logLevel | quote }}
- name: T2V_LOG__FORMAT
  value: {{ .Values.worker.logFormat | quote }}
{{- if include "t2v-worker.kafkaSasl" . }}
- name: T2V_KAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "t2v-worker.kafkaSecretName" . }}
      key: {{ .Values.worker.kafka.sasl.usernameKey }}
- name: T2V_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "t2v-worker.kafkaSecretName" . }}
      key: {{ .Values.worker.kafka.sasl.passwordKey }}
{{- end }}
{{- include "t2v-worker.storageEnv" . }}
{{- with .Values.worker.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "t2v-worker.envFrom" -}}
{{- if or .Values.worker.storage.existingSecret .Values.worker.storage.credentials }}
- secretRef:
    name: {{ include "t2v-worker.storageSecretName" . }}
{{- end }}
{{- end }}

{{- define "t2v-worker.volumes" -}}
- name: config
  configMap:
    name: {{ include "t2v-worker.fullname" . }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
{{- $v := .Values.worker.model.volume }}
- name: models
{{- if eq $v.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ $v.claimName }}
    readOnly: {{ not .Values.worker.model.sync.enabled }}
{{- else if eq $v.type "hostPath" }}
  hostPath:
    path: {{ $v.hostPath }}
    type: DirectoryOrCreate
{{- else }}
  emptyDir:
    sizeLimit: {{ $v.sizeLimit }}
{{- end }}
{{- if include "t2v-worker.kafkaTlsSecret" . }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.worker.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "t2v-worker.volumeMounts" -}}
- name: config
  mountPath: /etc/t2v
  readOnly: true
- name: dshm
  mountPath: /dev/shm
- name: tmp
  mountPath: /tmp
- name: models
  mountPath: {{ .Values.worker.model.volume.mountPath }}
  readOnly: true
{{- if include "t2v-worker.kafkaTlsSecret" . }}
- name: kafka-tls
  mountPath: /etc/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

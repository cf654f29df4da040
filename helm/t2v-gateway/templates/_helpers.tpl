{{/*
Naming and labels every template shares. Names come from `t2v-gateway.fullname` and selectors
from `t2v-gateway.selectorLabels`, which include the release name: two releases in one namespace
never share an object or select each other's pods.
*/}}

{{- define "t2v-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "t2v-gateway.fullname" -}}
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

{{- define "t2v-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "t2v-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "t2v-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "t2v-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: t2v-fleet
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Secret with the database URL. */}}
{{- define "t2v-gateway.databaseSecret" -}}
{{- .Values.database.existingSecret | default (include "t2v-gateway.fullname" .) }}
{{- end }}

{{/* The Secret with the JWT settings. */}}
{{- define "t2v-gateway.authSecret" -}}
{{- .Values.auth.existingSecret | default (include "t2v-gateway.fullname" .) }}
{{- end }}

{{/* One plan as TOML keys. */}}
{{- define "t2v-gateway.plan" -}}
requests_per_sec = {{ printf "%v" (float64 .requestsPerSec) }}
burst = {{ int .burst }}
videos_per_day = {{ int64 .videosPerDay }}
gpu_seconds_per_day = {{ int64 .gpuSecondsPerDay }}
{{- end }}

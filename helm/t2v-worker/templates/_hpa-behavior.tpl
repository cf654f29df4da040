{{/*
HPA behaviour shared by the KEDA-managed HPA and the plain fallback. Scale-up is
immediate (a GPU node and weight loading take minutes anyway); scale-down waits out
a long stabilisation window and removes one pod at a time, because every replica
given back costs minutes of start-up when the next burst comes.
*/}}
{{- define "t2v-worker.hpaBehavior" -}}
{{- $b := .Values.autoscaling.behavior -}}
scaleUp:
  stabilizationWindowSeconds: {{ $b.scaleUp.stabilizationWindowSeconds }}
  selectPolicy: Max
  policies:
    - type: Pods
      value: {{ $b.scaleUp.pods }}
      periodSeconds: {{ $b.scaleUp.periodSeconds }}
scaleDown:
  stabilizationWindowSeconds: {{ $b.scaleDown.stabilizationWindowSeconds }}
  selectPolicy: Min
  policies:
    - type: Pods
      value: {{ $b.scaleDown.pods }}
      periodSeconds: {{ $b.scaleDown.periodSeconds }}
{{- end }}

{{/* Names and labels. */}}
{{- define "eft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eft-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "eft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "eft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "eft-operator.labels" -}}
helm.sh/chart: {{ include "eft-operator.chart" . }}
{{ include "eft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: eft
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "eft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "eft-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag, the tag defaulting to the chart's appVersion. Call with (list .Values.x $). */}}
{{- define "eft-operator.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/*
A stage or serving image: an explicit tag as given, else the appVersion with the flavour's suffix
(defaults.imageFlavour cpu -> "<appVersion>-cpu", images/README.md).
*/}}
{{- define "eft-operator.flavouredImage" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- $suffix := ternary "-cpu" "" (eq $root.Values.defaults.imageFlavour "cpu") -}}
{{- printf "%s:%s" $img.repository (default (printf "%s%s" $root.Chart.AppVersion $suffix) $img.tag) -}}
{{- end -}}

{{/*
The operator's RBAC rules: exactly operator/rbac.py's cluster_role_rules() (tests/unit/deploy/test_helm.py
compares them). Every resource is namespaced, so the same rules serve a ClusterRole (all namespaces)
and a Role per watched namespace. No wildcards.
*/}}
{{- define "eft-operator.rules" -}}
- apiGroups: [eft.ai]
  resources: [embeddingfinetunes]
  verbs: [get, list, watch]
- apiGroups: [eft.ai]
  resources: [embeddingfinetunes/status]
  verbs: [get, patch, update]
- apiGroups: [eft.ai]
  resources: [embeddingfinetunes/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "meshless.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, or release-chart when the release name does not
already contain the chart name.
*/}}
{{- define "meshless.fullname" -}}
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

{{- define "meshless.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshless.labels" -}}
helm.sh/chart: {{ include "meshless.chart" . }}
{{ include "meshless.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshless
{{- end }}

{{- define "meshless.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshless.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshless.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshless.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshless.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The namespace whose selector-less MtlsPolicy is cluster-wide.
*/}}
{{- define "meshless.rootNamespace" -}}
{{- default .Release.Namespace .Values.settings.rootNamespace }}
{{- end }}

{{/*
The Service the API server calls the admission webhooks through.
*/}}
{{- define "meshless.webhookServiceName" -}}
{{- printf "%s-webhook" (include "meshless.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshless.metricsServiceName" -}}
{{- printf "%s-metrics" (include "meshless.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The webhook configurations' name: fixed, the operator's meshless.api.WEBHOOK_CONFIGURATION
(tests/integration/test_chart.py checks they agree).
*/}}
{{- define "meshless.webhookConfigurationName" -}}
meshless
{{- end }}

{{/*
The username the API server gives the operator's ServiceAccount.
*/}}
{{- define "meshless.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "meshless.serviceAccountName" .) }}
{{- end }}

{{/* Helpers of the model-server chart, all prefixed "model-server.". */}}

{{- define "model-server.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-model-server", or the release name alone when it contains the chart name. */}}
{{- define "model-server.fullname" -}}
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

{{/* The tweakline model release served: model.release, default the Helm release name. */}}
{{- define "model-server.modelRelease" -}}
{{- .Values.model.release | default .Release.Name }}
{{- end }}

{{- define "model-server.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "model-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: model-server
{{- end }}

{{- define "model-server.labels" -}}
helm.sh/chart: {{ include "model-server.chart" . }}
{{ include "model-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tweakline
tweakline.io/model-release: {{ include "model-server.modelRelease" . | trunc 63 | trimSuffix "-" | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Image reference: registry/repository@digest, else registry/repository:tag (default appVersion). */}}
{{- define "model-server.image" -}}
{{- $img := .Values.image }}
{{- $repo := $img.repository }}
{{- if $img.registry }}
{{- $repo = printf "%s/%s" $img.registry $img.repository }}
{{- end }}
{{- if $img.digest }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- printf "%s:%s" $repo ($img.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The Secret with the model-server identity's tls.crt, tls.key and ca.crt. */}}
{{- define "model-server.tlsSecretName" -}}
{{- if .Values.tls.certificate.enabled }}
{{- printf "%s-tls" (include "model-server.fullname" .) }}
{{- else }}
{{- required "tls.secretName (the model-server identity's certificate Secret) is required unless tls.certificate.enabled" .Values.tls.secretName }}
{{- end }}
{{- end }}

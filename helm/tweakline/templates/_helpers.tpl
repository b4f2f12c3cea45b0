{{/*
Shared helpers of the tweakline chart. Every name is prefixed with "tweakline." so that it
cannot collide with the NATS subchart's helpers (which use "nats.").
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "tweakline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: "<release>-tweakline", or the release name alone when it
already contains the chart name. Truncated to 63 characters (DNS label limit).
*/}}
{{- define "tweakline.fullname" -}}
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

{{/* "<fullname>-<suffix>", truncated so the result stays a valid DNS label. */}}
{{- define "tweakline.resourceName" -}}
{{- $prefix := include "tweakline.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .suffix }}
{{- end }}

{{/* The chart label value. */}}
{{- define "tweakline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. Input: the root context. */}}
{{- define "tweakline.labels" -}}
helm.sh/chart: {{ include "tweakline.chart" . }}
app.kubernetes.io/name: {{ include "tweakline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tweakline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component's resources. Input: dict root, component. */}}
{{- define "tweakline.componentLabels" -}}
{{ include "tweakline.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component (stable across upgrades). Input: dict root, component. */}}
{{- define "tweakline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tweakline.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The components: values key -> component name, which is also the certificate identity
(tweakline.proto.permissions.Identity) and the argument of `tweakline service NAME`.
*/}}
{{- define "tweakline.components" -}}
scheduler: scheduler
runner: trial-runner
evaluator: evaluator
deployer: deployer
webhook: webhook
console: console
{{- end }}

{{/*
Certificate identities, read from the generated authorisation map (one user "CN=<identity>"
per identity in tweakline.proto.permissions.permission_map()), so proto stays the one source.
Output: a JSON list of identity names.
*/}}
{{- define "tweakline.identities" -}}
{{- $auth := include "tweakline.natsAuthorization" . | fromJson }}
{{- if not (and $auth $auth.authorization) }}
{{- fail "files/nats-authorization.json is missing or invalid: run `python -m tweakline.cli.generate`" }}
{{- end }}
{{- $ids := list }}
{{- range $auth.authorization.users }}
{{- $ids = append $ids (trimPrefix "CN=" .user) }}
{{- end }}
{{- if and .Values.webhook.enabled (not (has "webhook" $ids)) }}
{{- fail "webhook.enabled needs a tweakline build with the webhook service: no \"webhook\" identity in files/nats-authorization.json" }}
{{- end }}
{{- if not .Values.webhook.enabled }}
{{- /* no certificate for a service that is not deployed */ -}}
{{- $ids = without $ids "webhook" }}
{{- end }}
{{- if not .Values.console.enabled }}
{{- $ids = without $ids "console" }}
{{- end }}
{{- toJson $ids }}
{{- end }}

{{/*
Runner pools (runner.pools): a JSON map pool -> its settings, the pool's entry merged over the
runner's own (runner.pools itself left out). Input: the root context.
*/}}
{{- define "tweakline.runnerPools" -}}
{{- $base := omit .Values.runner "pools" }}
{{- $pools := dict }}
{{- range $pool, $values := .Values.runner.pools }}
{{- $_ := set $pools $pool (mergeOverwrite (deepCopy $base) (deepCopy ($values | default dict))) }}
{{- end }}
{{- toJson $pools }}
{{- end }}

{{/*
What a runner pool's objects and certificate are called: "trial-runner" for the default pool (as
before pools existed), "trial-runner-<pool>" for any other (tweakline.proto.permissions.runner_identity).
Input: the pool name.
*/}}
{{- define "tweakline.runnerInstance" -}}
{{- if eq . "default" }}trial-runner{{ else }}trial-runner-{{ . }}{{ end }}
{{- end }}

{{/* A runner pool's durable consumer (tweakline.proto.subjects.pool_consumer). Input: the pool name. */}}
{{- define "tweakline.poolConsumer" -}}
{{- if eq . "default" }}trial-runners{{ else }}trial-runners-{{ . }}{{ end }}
{{- end }}

{{/*
The NATS authorisation map: files/nats-authorization.json (generated from proto with the default
pool), plus, for every other runner pool, the user of that pool's runners: the default runner's
permissions with its own consumer and inbox (as tweakline.proto.permissions.permission_map(pools)
renders it; tests/helm checks the two agree). Output: JSON text.
*/}}
{{- define "tweakline.natsAuthorization" -}}
{{- $text := .Files.Get "files/nats-authorization.json" }}
{{- $pools := without (keys .Values.runner.pools | sortAlpha) "default" }}
{{- if not $pools }}
{{- $text }}
{{- else }}
{{- $auth := $text | fromJson }}
{{- $users := $auth.authorization.users }}
{{- $runner := dict }}
{{- range $users }}{{ if eq .user "CN=trial-runner" }}{{ $runner = . }}{{ end }}{{ end }}
{{- if not $runner }}
{{- fail "files/nats-authorization.json has no trial-runner user: run `python -m tweakline.cli.generate`" }}
{{- end }}
{{- range $pool := $pools }}
{{- $json := toJson $runner | replace "\"CN=trial-runner\"" (printf "\"CN=trial-runner-%s\"" $pool) | replace "TWEAKLINE_TRIALS.trial-runners" (printf "TWEAKLINE_TRIALS.trial-runners-%s" $pool) | replace "\"_INBOX.trial-runner." (printf "\"_INBOX.trial-runner-%s." $pool) }}
{{- $users = append $users ($json | fromJson) }}
{{- end }}
{{- toPrettyJson (dict "authorization" (dict "users" $users)) }}
{{- end }}
{{- end }}

{{/* Name of the Secret cert-manager writes for an identity. Input: dict root, identity. */}}
{{- define "tweakline.tlsSecretName" -}}
{{- include "tweakline.resourceName" (dict "root" .root "suffix" (printf "%s-tls" .identity)) }}
{{- end }}

{{/* Name of the CA Issuer every leaf certificate is signed by. */}}
{{- define "tweakline.caIssuerName" -}}
{{- include "tweakline.resourceName" (dict "root" . "suffix" "ca") }}
{{- end }}

{{/* issuerRef of the leaf certificates: the bootstrapped CA Issuer, or pki.issuerRef. */}}
{{- define "tweakline.issuerRef" -}}
{{- if .Values.pki.bootstrap.enabled }}
name: {{ include "tweakline.caIssuerName" . }}
kind: Issuer
group: cert-manager.io
{{- else }}
{{- if not .Values.pki.issuerRef.name }}
{{- fail "pki.issuerRef.name is required when pki.bootstrap.enabled is false" }}
{{- end }}
name: {{ .Values.pki.issuerRef.name }}
kind: {{ .Values.pki.issuerRef.kind }}
group: {{ .Values.pki.issuerRef.group }}
{{- end }}
{{- end }}

{{/*
Full name of the NATS subchart's resources, computed exactly as the nats chart's "nats.fullname"
does (its nameOverride/fullnameOverride are read from .Values.nats).
*/}}
{{- define "tweakline.natsFullname" -}}
{{- $nats := .Values.nats | default dict }}
{{- if $nats.fullnameOverride }}
{{- $nats.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default "nats" $nats.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* In-cluster DNS name of the NATS subchart's client Service. */}}
{{- define "tweakline.natsHost" -}}
{{- printf "%s.%s.svc.%s" (include "tweakline.natsFullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/*
The secret holding the NATS server certificate, and the ConfigMap holding the authorisation map.
Both are named from the release name alone, because the NATS subchart refers to them through
`$tplYaml: "{{ .Release.Name }}-..."` values (see values.yaml, nats.*): keep them in step.
*/}}
{{- define "tweakline.natsServerSecretName" -}}
{{- printf "%s-nats-server-tls" .Release.Name }}
{{- end }}
{{- define "tweakline.natsAuthConfigMapName" -}}
{{- printf "%s-nats-auth" .Release.Name }}
{{- end }}

{{/* Fail early on contradictory NATS settings. */}}
{{- define "tweakline.validateNats" -}}
{{- if and .Values.nats.enabled .Values.externalNats.url }}
{{- fail "set either nats.enabled=true (the bundled NATS chart) or externalNats.url, not both" }}
{{- end }}
{{- if not (or .Values.nats.enabled .Values.externalNats.url) }}
{{- fail "no NATS server: set nats.enabled=true, or externalNats.url (e.g. tls://nats.messaging.svc.cluster.local:4222)" }}
{{- end }}
{{- end }}

{{/* The URL every tweakline process connects to (always TLS). */}}
{{- define "tweakline.natsUrl" -}}
{{- include "tweakline.validateNats" . }}
{{- if .Values.externalNats.url }}
{{- .Values.externalNats.url }}
{{- else }}
{{- printf "tls://%s:%v" (include "tweakline.natsHost" .) (.Values.nats.config.nats.port | default 4222) }}
{{- end }}
{{- end }}

{{/* host:port of the NATS monitoring endpoint (KEDA reads consumer lag from it). */}}
{{- define "tweakline.natsMonitoringEndpoint" -}}
{{- if .Values.runner.autoscaling.keda.monitoringEndpoint }}
{{- .Values.runner.autoscaling.keda.monitoringEndpoint }}
{{- else if .Values.externalNats.url }}
{{- required "externalNats.monitoringEndpoint (host:port of the NATS monitoring port) is required for KEDA with an external NATS" .Values.externalNats.monitoringEndpoint }}
{{- else }}
{{- printf "%s:%v" (include "tweakline.natsHost" .) (.Values.nats.config.monitor.port | default 8222) }}
{{- end }}
{{- end }}

{{/* An image reference. Input: dict root, tagSuffix, digest. */}}
{{- define "tweakline.image" -}}
{{- $img := .root.Values.image }}
{{- $repo := $img.repository }}
{{- if $img.registry }}
{{- $repo = printf "%s/%s" $img.registry $img.repository }}
{{- end }}
{{- $digest := .digest | default "" }}
{{- if $digest }}
{{- printf "%s@%s" $repo $digest }}
{{- else }}
{{- printf "%s:%s%s" $repo ($img.tag | default .root.Chart.AppVersion) (.tagSuffix | default "") }}
{{- end }}
{{- end }}

{{/*
Environment of a tweakline container, as a list. Input: dict root, identity, env (the
component's extra env map), probes (true: the process serves the probe endpoints). Values of the env maps are strings (value) or maps (e.g. valueFrom).
Precedence: component env > global env > chart settings.
*/}}
{{- define "tweakline.env" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $settings := dict
  "TWEAKLINE_IDENTITY" .identity
  "TWEAKLINE_NATS_URL" (include "tweakline.natsUrl" $root)
  "TWEAKLINE_TLS_DIR" $v.paths.tls
  "TWEAKLINE_STATE_DIR" $v.paths.state
  "TWEAKLINE_LOG_LEVEL" $v.config.logLevel
  "TWEAKLINE_LOG_JSON" (toString $v.config.logJson)
  "TWEAKLINE_ALLOWED_ESTIMATORS" (toJson $v.config.allowedEstimators)
  "TWEAKLINE_TRIAL_ACK_WAIT_S" (toString $v.config.trialAckWaitSeconds)
  "TWEAKLINE_TRIAL_MAX_DELIVER" (int64 $v.config.trialMaxDeliver | toString)
  "TWEAKLINE_TRIAL_BATCH_MAX" (int64 $v.config.trialBatchMax | toString)
  "TWEAKLINE_MAX_PAYLOAD_BYTES" (int64 $v.config.maxPayloadBytes | toString)
  "TWEAKLINE_TLS_RELOAD_INTERVAL_S" (toString $v.config.tlsReloadIntervalSeconds)
  "OTEL_SERVICE_NAME" (printf "tweakline-%s" .identity)
}}
{{- if .probes }}
{{- $_ := set $settings "TWEAKLINE_HEALTH_PORT" (toString $v.health.port) }}
{{- end }}
{{- $pools := keys $v.runner.pools | sortAlpha }}
{{- if ne (join "," $pools) "default" }}
{{- /* the platform's runner pools: what tweak files may ask for (validation) and where unpooled trials go */}}
{{- $ordered := without $pools "default" }}
{{- if has "default" $pools }}{{ $ordered = prepend $ordered "default" }}{{ end }}
{{- $_ := set $settings "TWEAKLINE_POOLS" (join "," $ordered) }}
{{- end }}
{{- $attrs := list (printf "service.namespace=%s" $v.otel.serviceNamespace) (printf "k8s.namespace.name=%s" $root.Release.Namespace) "k8s.pod.name=$(POD_NAME)" }}
{{- range $key, $value := $v.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $key $value) }}
{{- end }}
{{- $_ := set $settings "OTEL_RESOURCE_ATTRIBUTES" (join "," $attrs) }}
{{- if $v.otel.enabled }}
{{- $_ := set $settings "OTEL_EXPORTER_OTLP_ENDPOINT" (required "otel.endpoint is required when otel.enabled" $v.otel.endpoint) }}
{{- $_ := set $settings "OTEL_EXPORTER_OTLP_PROTOCOL" $v.otel.protocol }}
{{- $_ := set $settings "OTEL_TRACES_EXPORTER" "otlp" }}
{{- $_ := set $settings "OTEL_METRICS_EXPORTER" "none" }}
{{- $_ := set $settings "OTEL_LOGS_EXPORTER" "none" }}
{{- $_ := set $settings "OTEL_TRACES_SAMPLER" $v.otel.sampler }}
{{- $_ := set $settings "OTEL_TRACES_SAMPLER_ARG" (toString $v.otel.samplerArg) }}
{{- else }}
{{- $_ := set $settings "OTEL_SDK_DISABLED" "true" }}
{{- end }}
{{- $env := merge (deepCopy (.env | default dict)) (deepCopy ($v.env | default dict)) (deepCopy ($v.otel.env | default dict)) $settings }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- range $name, $value := $env }}
{{- if kindIs "map" $value }}
- name: {{ $name }}
  {{- toYaml $value | nindent 2 }}
{{- else }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes of a tweakline pod: its identity's Secret, /tmp and the state dir. Input: dict root, identity. */}}
{{- define "tweakline.volumes" -}}
- name: tls
  secret:
    secretName: {{ include "tweakline.tlsSecretName" (dict "root" .root "identity" .identity) }}
    defaultMode: 0440
- name: tmp
  emptyDir:
    sizeLimit: {{ .root.Values.volumes.tmpSizeLimit }}
- name: state
  emptyDir:
    sizeLimit: {{ .root.Values.volumes.stateSizeLimit }}
{{- end }}

{{/* Volume mounts matching "tweakline.volumes". Input: the root context. */}}
{{- define "tweakline.volumeMounts" -}}
- name: tls
  mountPath: {{ .Values.paths.tls }}
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: {{ .Values.paths.state }}
{{- end }}

{{/* Pod-level settings shared by every tweakline pod. Input: dict root, values (the component's). */}}
{{- define "tweakline.podScheduling" -}}
{{- with .root.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Namespaces the deployer may install model-server releases into, as a JSON list:
deployer.targetNamespaces, or the release namespace when that list is empty; ["*"] when
deployer.clusterWide.
*/}}
{{- define "tweakline.deployerNamespaces" -}}
{{- if .Values.deployer.clusterWide }}
{{- toJson (list "*") }}
{{- else if .Values.deployer.targetNamespaces }}
{{- toJson (uniq .Values.deployer.targetNamespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* RBAC rules of the deployer (Helm releases of the model-server chart). */}}
{{- define "tweakline.deployerRules" -}}
# Helm's release records (storage driver "secret") and the model server's own Secrets.
- apiGroups: [""]
  resources: [secrets, configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, update, patch, delete]
# The model server's Deployment; replica sets and pods to wait for a rollout and read test logs.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods/log, events]
  verbs: [get, list, watch]
# The model server's certificate (model-server chart, tls.certificate.enabled).
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [get, list, watch, create, update, patch, delete]
{{- with .Values.deployer.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

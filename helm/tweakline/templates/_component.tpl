{{/*
One tweakline service: its ServiceAccount, Deployment and ClusterIP Service (health probes on
port "http", Prometheus metrics on port "metrics"). Input: dict
  root       the root context
  key        values key of the component (scheduler, runner, evaluator, deployer)
  replicas   false to leave .spec.replicas to an autoscaler
  apiAccess  true when the pod needs its ServiceAccount token (the deployer only)
  image      dict tagSuffix, digest (optional)
  ports      extra container ports (list)
  env        extra env map (merged under the component's env)
  volumes    extra volumes (list), mounted per volumeMounts (list)
  values     the component's values (default: .Values.<key>; a runner pool's merged ones)
  instance   name of its objects, labels and certificate identity (default: the component;
             a runner pool's "trial-runner-<pool>")
*/}}
{{- define "tweakline.component" -}}
{{- $root := .root }}
{{- $v := .values | default (get $root.Values .key) }}
{{- $component := get (include "tweakline.components" $root | fromYaml) .key }}
{{- $instance := .instance | default $component }}
{{- $name := include "tweakline.resourceName" (dict "root" $root "suffix" $instance) }}
{{- $ctx := dict "root" $root "component" $instance }}
{{- $image := .image | default dict }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tweakline.componentLabels" $ctx | nindent 4 }}
  {{- with $v.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ .apiAccess | default false }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tweakline.componentLabels" $ctx | nindent 4 }}
spec:
  {{- if .replicas }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  {{- with $v.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "tweakline.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "tweakline.selectorLabels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $annotations := deepCopy ($v.podAnnotations | default dict) }}
      {{- if $root.Values.metrics.podAnnotations }}
      {{- $_ := merge $annotations (dict "prometheus.io/scrape" "true" "prometheus.io/port" (toString $root.Values.metrics.port) "prometheus.io/path" "/metrics") }}
      {{- end }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: {{ .apiAccess | default false }}
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with include "tweakline.podScheduling" (dict "root" $root "values" $v) | trim }}
      {{- . | nindent 6 }}
      {{- end }}
      containers:
        - name: {{ $component }}
          image: {{ include "tweakline.image" (dict "root" $root "tagSuffix" $image.tagSuffix "digest" ($image.digest | default $root.Values.image.digest)) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["service", {{ $component | quote }}]
          ports:
            - name: http
              containerPort: {{ $root.Values.health.port }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- with .ports }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            {{- include "tweakline.env" (dict "root" $root "identity" $component "probes" true "env" (merge (deepCopy ($v.env | default dict)) (.env | default dict) (dict "TWEAKLINE_METRICS_PORT" (toString $root.Values.metrics.port) "TWEAKLINE_METRICS_HOST" "0.0.0.0"))) | trim | nindent 12 }}
          {{- with $root.Values.health }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml .startupProbe | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml .livenessProbe | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            {{- toYaml .readinessProbe | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "tweakline.volumeMounts" $root | trim | nindent 12 }}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "tweakline.volumes" (dict "root" $root "identity" $instance) | trim | nindent 8 }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "tweakline.componentLabels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "tweakline.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ $root.Values.health.port }}
      targetPort: http
      protocol: TCP
    - name: metrics
      port: {{ $root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
{{- end }}

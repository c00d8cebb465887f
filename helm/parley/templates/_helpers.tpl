{{/* Names ---------------------------------------------------------------- */}}

{{- define "parley.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "parley.fullname" -}}
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

{{/* <fullname>-<component>, component in (list root "edge") */}}
{{- define "parley.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "parley.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) -}}
{{- end -}}

{{- define "parley.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "parley.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "parley.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "parley.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: parley
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "parley.selectorLabels" -}}
app.kubernetes.io/name: {{ include "parley.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* (list root "edge") */}}
{{- define "parley.componentLabels" -}}
{{ include "parley.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "parley.componentSelectorLabels" -}}
{{ include "parley.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "parley.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Secrets ---------------------------------------------------------------- */}}

{{- define "parley.jwtSecretName" -}}
{{- if .Values.jwt.existingSecret -}}
{{- .Values.jwt.existingSecret -}}
{{- else -}}
{{- printf "%s-jwt" (include "parley.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* File names of the JWT material inside /etc/parley/jwt. */}}
{{- define "parley.jwtSecretKey" -}}
{{- if .Values.jwt.existingSecret -}}{{ .Values.jwt.secretKey }}{{- else if .Values.jwt.secret -}}jwt-secret{{- end -}}
{{- end -}}
{{- define "parley.jwtPublicKeyKey" -}}
{{- if .Values.jwt.existingSecret -}}{{ .Values.jwt.publicKeyKey }}{{- else if .Values.jwt.publicKey -}}jwt.pem{{- end -}}
{{- end -}}

{{- define "parley.jwtConfigured" -}}
{{- if or (include "parley.jwtSecretKey" .) (include "parley.jwtPublicKeyKey" .) -}}true{{- end -}}
{{- end -}}

{{/* Whether the edges can verify tokens at all: key files or a JWKS URL. */}}
{{- define "parley.jwtAny" -}}
{{- if or (include "parley.jwtConfigured" .) .Values.jwt.jwksUrl -}}true{{- end -}}
{{- end -}}

{{- define "parley.postgresSecretName" -}}
{{- if .Values.archiver.store.postgres.existingSecret -}}
{{- .Values.archiver.store.postgres.existingSecret -}}
{{- else -}}
{{- printf "%s-archiver-store" (include "parley.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Checks that fail the install with a clear message. */}}
{{- define "parley.validate" -}}
{{- $j := .Values.jwt -}}
{{- if and $j.existingSecret (or $j.secret $j.publicKey) -}}
{{- fail "jwt: give jwt.existingSecret (with jwt.secretKey/jwt.publicKeyKey) or inline jwt.secret/jwt.publicKey, not both" -}}
{{- end -}}
{{- if and $j.existingSecret (not (or $j.secretKey $j.publicKeyKey)) -}}
{{- fail "jwt.existingSecret is set: name the key holding the secret (jwt.secretKey) or the public key (jwt.publicKeyKey)" -}}
{{- end -}}
{{- if and .Values.nats.user (not .Values.nats.password.existingSecret) -}}
{{- fail "nats.user is set: the password must come from nats.password.existingSecret" -}}
{{- end -}}
{{- if and (or .Values.nats.tls.certKey .Values.nats.tls.keyKey) (not (and .Values.nats.tls.certKey .Values.nats.tls.keyKey)) -}}
{{- fail "nats.tls: mutual TLS needs both nats.tls.certKey and nats.tls.keyKey" -}}
{{- end -}}
{{- if and (or .Values.nats.tls.certKey .Values.nats.tls.keyKey) (not .Values.nats.tls.existingSecret) -}}
{{- fail "nats.tls: certKey/keyKey name keys of nats.tls.existingSecret, which is empty" -}}
{{- end -}}
{{- $gp := include "parley.edge.gracePeriod" . | int -}}
{{- if lt $gp (add .Values.edge.preStopSleepSeconds .Values.edge.drainTimeoutSeconds | int) -}}
{{- fail (printf "edge.terminationGracePeriodSeconds (%d) must be at least edge.preStopSleepSeconds + edge.drainTimeoutSeconds (%d): the kubelet would kill the edge mid-drain" $gp (add .Values.edge.preStopSleepSeconds .Values.edge.drainTimeoutSeconds | int)) -}}
{{- end -}}
{{- if and .Values.edge.pdb.enabled (not (kindIs "invalid" .Values.edge.pdb.minAvailable)) (not (kindIs "invalid" .Values.edge.pdb.maxUnavailable)) -}}
{{- fail "edge.pdb: set maxUnavailable or minAvailable, not both (null the other)" -}}
{{- end -}}
{{- if .Values.archiver.enabled -}}
{{- if lt (int64 .Values.archiver.maxAckPending) (mul .Values.archiver.batch .Values.archiver.replicaCount | int64) -}}
{{- fail (printf "archiver.maxAckPending (%d) must be at least archiver.batch × archiver.replicaCount (%d)" (int64 .Values.archiver.maxAckPending) (mul .Values.archiver.batch .Values.archiver.replicaCount | int64)) -}}
{{- end -}}
{{- $s := .Values.archiver.store -}}
{{- if eq $s.driver "sqlite" -}}
{{- if gt (int .Values.archiver.replicaCount) 1 -}}
{{- fail "archiver.store.driver sqlite keeps the archive in one file on one volume: archiver.replicaCount must be 1 (use postgres to scale)" -}}
{{- end -}}
{{- if not .Values.archiver.persistence.enabled -}}
{{- fail "archiver.store.driver sqlite needs archiver.persistence.enabled: without a PVC every restart would lose the archive" -}}
{{- end -}}
{{- else -}}
{{- if and $s.postgres.existingSecret $s.postgres.dsn -}}
{{- fail "archiver.store.postgres: give existingSecret or dsn, not both" -}}
{{- end -}}
{{- if not (or $s.postgres.existingSecret $s.postgres.dsn) -}}
{{- fail "archiver.store.driver postgres needs archiver.store.postgres.existingSecret (or dsn)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "parley.edge.gracePeriod" -}}
{{- if kindIs "invalid" .Values.edge.terminationGracePeriodSeconds -}}
{{- add .Values.edge.preStopSleepSeconds .Values.edge.drainTimeoutSeconds 10 -}}
{{- else -}}
{{- .Values.edge.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}

{{/* Environment ------------------------------------------------------------ */}}

{{/*
parley.envList renders a YAML map of NAME: "value" as env entries, sorted by
name, skipping empty values (the binary's default applies).
*/}}
{{- define "parley.envList" -}}
{{- range $k, $v := . }}
{{- if ne (toString $v) "" }}
- name: {{ $k }}
  value: {{ toString $v | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* settings: flag name → value, as PARLEY_* (see internal/config.EnvName) */}}
{{- define "parley.settingsEnv" -}}
{{- $m := dict -}}
{{- range $flag, $v := . -}}
{{- $_ := set $m (printf "PARLEY_%s" ($flag | upper | replace "-" "_")) $v -}}
{{- end -}}
{{- include "parley.envList" $m -}}
{{- end -}}

{{/*
Settings every component shares: HTTP listener, NATS URL and auth, logging.
(list root component componentValues)
*/}}
{{- define "parley.commonEnv" -}}
{{- $root := index . 0 -}}
{{- $c := index . 2 -}}
{{- $n := $root.Values.nats -}}
{{- $plain := dict
  "PARLEY_LISTEN" (printf ":%d" (int $root.Values.httpPort))
  "PARLEY_NATS" $n.url
  "PARLEY_NATS_USER" $n.user
  "PARLEY_LOG_LEVEL" (default $root.Values.log.level $c.log.level)
  "PARLEY_LOG_FORMAT" (default $root.Values.log.format $c.log.format)
  "PARLEY_MEMORY_LIMIT" $c.memoryLimit
-}}
{{- $creds := ternary $c.natsCreds $n.creds (ne "" $c.natsCreds.existingSecret) -}}
{{- if $creds.existingSecret }}
{{- $_ := set $plain "PARLEY_NATS_CREDS" (printf "/etc/parley/nats-creds/%s" $creds.key) -}}
{{- end }}
{{- if $n.nkey.existingSecret }}
{{- $_ := set $plain "PARLEY_NATS_NKEY" (printf "/etc/parley/nats-nkey/%s" $n.nkey.key) -}}
{{- end }}
{{- if $n.tls.existingSecret }}
{{- if $n.tls.caKey }}{{ $_ := set $plain "PARLEY_NATS_TLS_CA" (printf "/etc/parley/nats-tls/%s" $n.tls.caKey) }}{{ end }}
{{- if $n.tls.certKey }}{{ $_ := set $plain "PARLEY_NATS_TLS_CERT" (printf "/etc/parley/nats-tls/%s" $n.tls.certKey) }}{{ end }}
{{- if $n.tls.keyKey }}{{ $_ := set $plain "PARLEY_NATS_TLS_KEY" (printf "/etc/parley/nats-tls/%s" $n.tls.keyKey) }}{{ end }}
{{- end }}
{{- include "parley.envList" $plain }}
{{- if $n.password.existingSecret }}
- name: PARLEY_NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $n.password.existingSecret }}
      key: {{ $n.password.key }}
{{- end }}
{{- if $n.token.existingSecret }}
- name: PARLEY_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $n.token.existingSecret }}
      key: {{ $n.token.key }}
{{- end }}
{{- end -}}

{{/*
OpenTelemetry tracing (docs/tracing.md): the standard OTEL_* variables every
binary reads. Only with otel.endpoint (without it the binaries trace
nothing), except otel.extraEnv, which is always rendered. K8S_POD_NAME and
K8S_NODE_IP come first so that later values can refer to them with $(…).
*/}}
{{- define "parley.otelEnv" -}}
{{- $o := .Values.otel -}}
{{- if $o.endpoint }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- $attrs := list (printf "k8s.namespace.name=%s" .Release.Namespace) "k8s.pod.name=$(K8S_POD_NAME)" -}}
{{- range $k, $v := $o.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $v) -}}
{{- end }}
{{- include "parley.envList" (dict
  "OTEL_EXPORTER_OTLP_ENDPOINT" $o.endpoint
  "OTEL_TRACES_SAMPLER" $o.sampler
  "OTEL_TRACES_SAMPLER_ARG" $o.samplerArg
  "OTEL_RESOURCE_ATTRIBUTES" (join "," $attrs)
) }}
{{- if $o.headers.existingSecret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $o.headers.existingSecret }}
      key: {{ $o.headers.key }}
{{- end }}
{{- end }}
{{- with $o.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Stream settings (every component that provisions the chat stream). */}}
{{- define "parley.streamEnv" -}}
{{- $s := .Values.stream -}}
{{- include "parley.envList" (dict
  "PARLEY_STREAM_REPLICAS" (int64 $s.replicas)
  "PARLEY_STREAM_DUPLICATES" $s.duplicates
  "PARLEY_STREAM_MAX_AGE" $s.maxAge
  "PARLEY_STREAM_MAX_BYTES" (int64 $s.maxBytes)
  "PARLEY_STREAM_MAX_MSGS_PER_SUBJECT" (int64 $s.maxMsgsPerSubject)
) -}}
{{- end -}}

{{/* NATS secret volumes and mounts: (list root componentValues) */}}
{{- define "parley.natsVolumes" -}}
{{- $n := (index . 0).Values.nats -}}
{{- $c := index . 1 -}}
{{- $creds := ternary $c.natsCreds $n.creds (ne "" $c.natsCreds.existingSecret) -}}
{{- if $creds.existingSecret }}
- name: nats-creds
  secret:
    secretName: {{ $creds.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $creds.key }}
        path: {{ $creds.key }}
{{- end }}
{{- if $n.nkey.existingSecret }}
- name: nats-nkey
  secret:
    secretName: {{ $n.nkey.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $n.nkey.key }}
        path: {{ $n.nkey.key }}
{{- end }}
{{- if $n.tls.existingSecret }}
- name: nats-tls
  secret:
    secretName: {{ $n.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "parley.natsVolumeMounts" -}}
{{- $n := (index . 0).Values.nats -}}
{{- $c := index . 1 -}}
{{- $creds := ternary $c.natsCreds $n.creds (ne "" $c.natsCreds.existingSecret) -}}
{{- if $creds.existingSecret }}
- name: nats-creds
  mountPath: /etc/parley/nats-creds
  readOnly: true
{{- end }}
{{- if $n.nkey.existingSecret }}
- name: nats-nkey
  mountPath: /etc/parley/nats-nkey
  readOnly: true
{{- end }}
{{- if $n.tls.existingSecret }}
- name: nats-tls
  mountPath: /etc/parley/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod pieces ------------------------------------------------------------- */}}

{{/* Probes on the http port: (list componentValues [tls]); tls true for an
edge serving TLS (the kubelet does not verify the certificate). */}}
{{- define "parley.probes" -}}
{{- $c := index . 0 -}}
{{- $tls := and (gt (len .) 1) (index . 1) -}}
{{- range $probe, $path := dict "readinessProbe" "/readyz" "livenessProbe" "/healthz" "startupProbe" "/healthz" }}
{{ $probe }}:
  httpGet:
    path: {{ $path }}
    port: http
    {{- if $tls }}
    scheme: HTTPS
    {{- end }}
  {{- toYaml (index $c $probe) | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "parley.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $root.Values.httpPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with $c.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling and common pod-spec fields: (list root component componentValues) */}}
{{- define "parley.podCommon" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $c := index . 2 -}}
serviceAccountName: {{ include "parley.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $c.affinity }}
affinity:
  {{- toYaml $c.affinity | nindent 2 }}
{{- else }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "parley.componentSelectorLabels" (list $root $name) | nindent 14 }}
{{- end }}
{{- with $c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container fields shared by every component: (list root componentValues) */}}
{{- define "parley.containerCommon" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
image: {{ include "parley.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
ports:
  - name: http
    containerPort: {{ $root.Values.httpPort }}
    protocol: TCP
resources:
  {{- toYaml $c.resources | nindent 2 }}
{{- end -}}

{{/* A ServiceMonitor endpoint's fields after its port: (metrics.serviceMonitor) */}}
{{- define "parley.scrapeEndpoint" -}}
path: /metrics
interval: {{ .interval }}
scrapeTimeout: {{ .scrapeTimeout }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

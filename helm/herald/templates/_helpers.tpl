{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "herald.fullname" -}}
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

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{- define "herald.redisLabels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
app.kubernetes.io/name: {{ include "herald.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "herald.headlessName" -}}
{{- printf "%s-headless" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.configName" -}}
{{- printf "%s-config" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.appsSecretName" -}}
{{- if .Values.apps.existingSecret }}
{{- .Values.apps.existingSecret }}
{{- else }}
{{- printf "%s-apps" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "herald.consoleSecretName" -}}
{{- if .Values.console.existingSecret }}
{{- .Values.console.existingSecret }}
{{- else }}
{{- printf "%s-console" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "herald.redisName" -}}
{{- printf "%s-redis" (include "herald.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Most replicas the release can run; the HPA may scale past replicaCount. */}}
{{- define "herald.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- max .Values.replicaCount .Values.autoscaling.maxReplicas }}
{{- else }}
{{- .Values.replicaCount }}
{{- end }}
{{- end }}

{{/* Value combinations the schema cannot express. Included by the
     StatefulSet, so `helm template`/`install` fails with the message. */}}
{{- define "herald.validate" -}}
{{- $mode := .Values.redis.mode }}
{{- if and (eq $mode "none") (gt (int (include "herald.maxReplicas" .)) 1) }}
{{- fail (printf "\n\nherald: redis.mode=none with %s replicas. A Herald cluster needs Redis: with the in-memory bus each node only delivers events to its own clients. Set redis.mode to external, sentinel, cluster or bundled (development only), or run a single node with replicaCount=1 (and autoscaling.enabled=false)." (include "herald.maxReplicas" .)) }}
{{- end }}
{{- if and (eq $mode "external") (not .Values.redis.url) (not .Values.redis.existingSecret) }}
{{- fail "\n\nherald: redis.mode=external needs redis.url (redis://host:6379 or rediss://...) or redis.existingSecret holding the URL." }}
{{- end }}
{{- if and (eq $mode "sentinel") (or (empty .Values.redis.sentinel.urls) (not .Values.redis.sentinel.masterName)) }}
{{- fail "\n\nherald: redis.mode=sentinel needs redis.sentinel.urls (one or more redis://sentinel-host:26379) and redis.sentinel.masterName." }}
{{- end }}
{{- if and (eq $mode "cluster") (empty .Values.redis.cluster.urls) }}
{{- fail "\n\nherald: redis.mode=cluster needs redis.cluster.urls (seed nodes, redis://host:6379)." }}
{{- end }}
{{- if and .Values.redis.caSecret (or (eq $mode "none") (eq $mode "bundled")) }}
{{- fail (printf "\n\nherald: redis.caSecret is for a Redis reached over TLS (rediss://) in modes external, sentinel or cluster; redis.mode=%s has none." $mode) }}
{{- end }}
{{- if and .Values.redis.caSecret (eq $mode "external") .Values.redis.url (not (hasPrefix "rediss://" .Values.redis.url)) }}
{{- fail "\n\nherald: redis.caSecret is set but redis.url is not rediss:// (the CA is only used for TLS)." }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "\n\nherald: tls.enabled=true needs tls.secretName (a kubernetes.io/tls Secret with tls.crt and tls.key)." }}
{{- end }}
{{- if gt (int .Values.drain.windowSeconds) (int .Values.drain.deadlineSeconds) }}
{{- fail "\n\nherald: drain.windowSeconds must not exceed drain.deadlineSeconds." }}
{{- end }}
{{- $store := .Values.appsStore }}
{{- if and (eq $store.driver "file") (not .Values.apps.existingSecret) (empty .Values.apps.inline) }}
{{- fail "\n\nherald: no apps configured. Set apps.inline (a list of {id, key, secret}) or apps.existingSecret, or keep apps in a database (appsStore.driver postgres or mysql)." }}
{{- end }}
{{- if and (ne $store.driver "file") (not $store.url) (not $store.existingSecret) }}
{{- fail (printf "\n\nherald: appsStore.driver=%s needs appsStore.url or appsStore.existingSecret holding the database URL." $store.driver) }}
{{- end }}
{{- if and (eq $store.driver "postgres") $store.url (not (regexMatch "^postgres(ql)?://" $store.url)) }}
{{- fail "\n\nherald: appsStore.driver=postgres needs a postgres:// URL in appsStore.url." }}
{{- end }}
{{- if and (eq $store.driver "mysql") $store.url (not (regexMatch "^(mysql|mariadb)://" $store.url)) }}
{{- fail "\n\nherald: appsStore.driver=mysql needs a mysql:// URL in appsStore.url." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "\n\nherald: autoscaling.minReplicas must not exceed autoscaling.maxReplicas." }}
{{- end }}
{{- end }}

{{/* HERALD_APPS_STORE__URL from appsStore.existingSecret (main and migrate
     containers). */}}
{{- define "herald.appsStoreUrlEnv" -}}
{{- if and (ne .Values.appsStore.driver "file") .Values.appsStore.existingSecret }}
- name: HERALD_APPS_STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.appsStore.existingSecret }}
      key: {{ .Values.appsStore.existingSecretKey }}
{{- end }}
{{- end }}

{{- define "herald.terminationGracePeriodSeconds" -}}
{{- if .Values.drain.terminationGracePeriodSeconds }}
{{- .Values.drain.terminationGracePeriodSeconds }}
{{- else }}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.deadlineSeconds 5 }}
{{- end }}
{{- end }}

{{/* herald.toml without credentials (ConfigMap). Follows Herald's config
     contract; node_id comes from HERALD_SERVER__NODE_ID (the pod name). */}}
{{- define "herald.configToml" -}}
# Rendered by the herald Helm chart. The node id is set per pod through
# HERALD_SERVER__NODE_ID; apps are appended from the apps Secret.
[server]
listen = {{ printf "0.0.0.0:%d" (int .Values.containerPort) | toJson }}
admin_listen = {{ printf "0.0.0.0:%d" (int .Values.adminPort) | toJson }}
activity_timeout = {{ int .Values.activityTimeout }}
max_connections = {{ int .Values.limits.maxConnections }}
handshakes_per_second = {{ int .Values.limits.handshakesPerSecond }}
outbound_queue_bytes = {{ int .Values.limits.outboundQueueBytes }}
drain_window = {{ int .Values.drain.windowSeconds }}
drain_deadline = {{ int .Values.drain.deadlineSeconds }}

[bus]
{{- $mode := .Values.redis.mode }}
{{- if eq $mode "none" }}
driver = "memory"
{{- else }}
driver = "redis"
{{- if eq $mode "bundled" }}
url = {{ printf "redis://%s:6379" (include "herald.redisName" .) | toJson }}
{{- else if eq $mode "external" }}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}
url = {{ .Values.redis.url | toJson }}
{{- end }}
{{- else if eq $mode "sentinel" }}
sentinel_urls = {{ .Values.redis.sentinel.urls | toJson }}
sentinel_master = {{ .Values.redis.sentinel.masterName | toJson }}
{{- else if eq $mode "cluster" }}
cluster_urls = {{ .Values.redis.cluster.urls | toJson }}
{{- end }}
{{- end }}
{{- if .Values.redis.caSecret }}
tls_ca_file = "/etc/herald/redis-ca/ca.pem"
{{- end }}
key_prefix = {{ .Values.redis.keyPrefix | toJson }}

[apps_store]
driver = {{ .Values.appsStore.driver | toJson }}
{{- if ne .Values.appsStore.driver "file" }}
{{- if and .Values.appsStore.url (not .Values.appsStore.existingSecret) }}
url = {{ .Values.appsStore.url | toJson }}
{{- end }}
table = {{ .Values.appsStore.table | toJson }}
secret_grace_seconds = {{ int .Values.appsStore.secretGraceSeconds }}
{{- end }}
{{- if .Values.tls.enabled }}

[tls]
cert = "/etc/herald/tls/tls.crt"
key = "/etc/herald/tls/tls.key"
{{- end }}
{{- end }}

{{/* Release-scoped name, at most 63 characters. */}}
{{- define "overwatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "overwatch.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "overwatch.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "overwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}
{{- .Values.serviceAccount.name -}}
{{- else -}}
{{- include "overwatch.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "overwatch.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{/* Environment shared by both components. */}}
{{- define "overwatch.env" -}}
- name: OVERWATCH_CONFIG
  value: /etc/overwatch/overwatch.toml
{{- range .Values.secretEnv }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
{{- range .Values.extraEnv }}
- name: {{ .name }}
  value: {{ .value | quote }}
{{- end }}
{{- end -}}

{{/*
Refuses, with a message naming the value to change, a release that could lose
data or leak a secret. Included by the ConfigMap, so every render runs it.
*/}}
{{- define "overwatch.validate" -}}
{{- $config := .Values.config | default "" -}}
{{- if regexMatch "(?m)^\\s*\\[\\s*cold_storage\\s*\\]" $config -}}
{{- fail "config must not hold a [cold_storage] section: set coldStorage.kind (local or s3) and its values, so the chart can mount storage that outlives the pod" -}}
{{- end -}}
{{- if regexMatch "(?m)^\\s*(listen|operations_listen|shutdown_timeout_ms)\\s*=" $config -}}
{{- fail "config must not set listen, operations_listen or shutdown_timeout_ms: the chart sets them from gateway.port, gateway.operationsPort, workerd.port and gateway.shutdownTimeoutSeconds" -}}
{{- end -}}
{{- if regexMatch "(?m)^\\s*(password|secret|secret_access_key)\\s*=\\s*\"[^\"]+\"" $config -}}
{{- fail "config holds a password or secret, which would land in a ConfigMap: pass it from a Secret with secretEnv (e.g. OVERWATCH__CLICKHOUSE__PASSWORD)" -}}
{{- end -}}
{{- if regexMatch "(?m)^\\s*url\\s*=\\s*\"https://(hooks\\.slack\\.com|(discord|discordapp)\\.com/api/webhooks)/" $config -}}
{{- fail "config holds a Slack or Discord hook URL, which is a secret and would land in a ConfigMap: put the channels in a Secret and pass them with secretEnv as OVERWATCH__NOTIFICATIONS__CHANNELS (a TOML array)" -}}
{{- end -}}
{{- range concat .Values.extraEnv .Values.secretEnv -}}
{{- if hasPrefix "OVERWATCH__COLD_STORAGE__" .name -}}
{{- fail (printf "%s: set cold storage through coldStorage values, not environment variables" .name) -}}
{{- end -}}
{{- end -}}
{{- $cold := .Values.coldStorage -}}
{{- if eq $cold.kind "local" -}}
{{- if and (not $cold.local.existingClaim) (not $cold.local.size) -}}
{{- fail "coldStorage.kind=local needs coldStorage.local.existingClaim or coldStorage.local.size (the chart never keeps archives in an emptyDir: raw events are deleted once archived)" -}}
{{- end -}}
{{- if and (gt (int .Values.workerd.replicas) 1) (ne $cold.local.accessMode "ReadWriteMany") -}}
{{- fail "workerd.replicas > 1 with local cold storage needs coldStorage.local.accessMode=ReadWriteMany (every replica must see the same archives), or coldStorage.kind=s3" -}}
{{- end -}}
{{- else if eq $cold.kind "s3" -}}
{{- if not $cold.s3.bucket -}}
{{- fail "coldStorage.kind=s3 needs coldStorage.s3.bucket" -}}
{{- end -}}
{{- else -}}
{{- fail (printf "coldStorage.kind must be local or s3, not %q" $cold.kind) -}}
{{- end -}}
{{- $gw := .Values.gateway -}}
{{- $need := add $gw.preStopSeconds $gw.shutdownTimeoutSeconds 5 -}}
{{- if lt (int $gw.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%v) must be at least preStopSeconds + shutdownTimeoutSeconds + 5 = %v, or Kubernetes kills requests the broker has not acknowledged" $gw.terminationGracePeriodSeconds $need) -}}
{{- end -}}
{{- end -}}

{{/* workerd's cold storage settings (the chart owns the [cold_storage] section). */}}
{{- define "overwatch.coldStorageEnv" -}}
{{- $cold := .Values.coldStorage -}}
- name: OVERWATCH__COLD_STORAGE__KIND
  value: {{ $cold.kind | quote }}
{{- if eq $cold.kind "local" }}
- name: OVERWATCH__COLD_STORAGE__DIR
  value: /var/lib/overwatch/cold
{{- else }}
- name: OVERWATCH__COLD_STORAGE__BUCKET
  value: {{ $cold.s3.bucket | quote }}
- name: OVERWATCH__COLD_STORAGE__PREFIX
  value: {{ $cold.s3.prefix | quote }}
- name: OVERWATCH__COLD_STORAGE__REGION
  value: {{ $cold.s3.region | quote }}
- name: OVERWATCH__COLD_STORAGE__ENDPOINT
  value: {{ $cold.s3.endpoint | quote }}
- name: OVERWATCH__COLD_STORAGE__ALLOW_HTTP
  value: {{ $cold.s3.allowHttp | quote }}
{{- with $cold.s3.credentialsSecret }}
{{- if .name }}
- name: OVERWATCH__COLD_STORAGE__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .accessKeyIdKey }}
- name: OVERWATCH__COLD_STORAGE__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "overwatch.coldClaimName" -}}
{{- .Values.coldStorage.local.existingClaim | default (printf "%s-cold" (include "overwatch.fullname" .)) -}}
{{- end -}}

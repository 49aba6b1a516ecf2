{{/* Names and labels. */}}
{{- define "s3-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "s3-gateway.fullname" -}}
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

{{- define "s3-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "s3-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "s3-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "s3-gateway.labels" -}}
helm.sh/chart: {{ include "s3-gateway.chart" . }}
{{ include "s3-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "s3-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "s3-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "s3-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "s3-gateway.configMapName" -}}
{{- .Values.existingConfigMap | default (printf "%s-config" (include "s3-gateway.fullname" .)) -}}
{{- end -}}

{{- define "s3-gateway.configKey" -}}
{{- if .Values.existingConfigMap -}}{{ .Values.existingConfigMapKey }}{{- else -}}gateway.toml{{- end -}}
{{- end -}}

{{/* Whether the chart creates the client-keys Secret. */}}
{{- define "s3-gateway.generateClientKeys" -}}
{{- $g := .Values.credentials.generateClientKeys -}}
{{- if kindIs "invalid" $g -}}
{{- if and .Values.embedded.enabled (not .Values.credentials.client.existingSecret) (not .Values.credentials.existingSecret) -}}true{{- end -}}
{{- else if $g -}}true{{- end -}}
{{- end -}}

{{/* Secret name of a credentials group: (list $ "client"|"backend"|"lambda"|"function"). */}}
{{- define "s3-gateway.secretName" -}}
{{- $root := index . 0 -}}
{{- $group := index . 1 -}}
{{- if and (eq $group "client") (include "s3-gateway.generateClientKeys" $root) (not $root.Values.credentials.client.existingSecret) -}}
{{- printf "%s-client" (include "s3-gateway.fullname" $root) -}}
{{- else -}}
{{- $g := index $root.Values.credentials $group -}}
{{- $g.existingSecret | default $root.Values.credentials.existingSecret | default (printf "%s-credentials" (include "s3-gateway.fullname" $root)) -}}
{{- end -}}
{{- end -}}

{{/* "host:port" of a listener on bindAddress. */}}
{{- define "s3-gateway.listen" -}}
{{- $addr := index . 0 -}}
{{- $port := index . 1 -}}
{{- if contains ":" $addr -}}[{{ $addr }}]:{{ $port }}{{- else -}}{{ $addr }}:{{ $port }}{{- end -}}
{{- end -}}

{{/* Whether the callback address is the pod IP, filled in by the init container. */}}
{{- define "s3-gateway.podIPCallback" -}}
{{- if and (not .Values.embedded.enabled) .Values.config.tier.enabled (eq .Values.callback.advertise "podIP") -}}true{{- end -}}
{{- end -}}

{{/* Whether the callback port is open (functions on a real Lambda dial it). */}}
{{- define "s3-gateway.callbackOpen" -}}
{{- if and (not .Values.embedded.enabled) .Values.config.tier.enabled -}}true{{- end -}}
{{- end -}}

{{/* Checks across values that the schema cannot express. */}}
{{- define "s3-gateway.validate" -}}
{{- $c := .Values.config -}}
{{- if and $c.tier.enabled (gt (int .Values.replicas) 1) -}}
{{- fail "replicas > 1 with config.tier.enabled=true: every pod would have its own journal and memory index while sharing the buckets, which must have a single writer (stale reads, write-back races). Keep replicas: 1, or set config.tier.enabled=false for a plain proxy." -}}
{{- end -}}
{{- if not .Values.embedded.enabled -}}
{{- if not (trim (toString $c.backend.url)) -}}
{{- fail "config.backend.url is empty: set the backing S3 endpoint (https://s3.<region>.amazonaws.com), or embedded.enabled=true for the embedded store" -}}
{{- end -}}
{{- if and $c.tier.enabled (not (trim (toString $c.functions.lambda_endpoint))) -}}
{{- fail "config.functions.lambda_endpoint is empty: set the Lambda endpoint (https://lambda.<region>.amazonaws.com), or embedded.enabled=true for the local emulator" -}}
{{- end -}}
{{- if and (include "s3-gateway.callbackOpen" .) (eq .Values.callback.advertise "address") (not .Values.callback.address) -}}
{{- fail "callback.advertise=address needs callback.address (host:port the functions dial)" -}}
{{- end -}}
{{- end -}}
{{- if $c.tier.enabled -}}
{{- $dp := add (int $c.tier.data_chunks) (int $c.tier.parity_chunks) -}}
{{- if lt (int $c.functions.count) (int $dp) -}}
{{- fail (printf "config.functions.count (%d) must be at least config.tier.data_chunks + config.tier.parity_chunks (%d)" (int $c.functions.count) (int $dp)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The configuration as the gateway reads it: `config` with what the chart decides itself.
Returns YAML of a dict (fromYaml it).
*/}}
{{- define "s3-gateway.effectiveConfig" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- range $s := list "server" "auth" "backend" "embedded" "log" "tier" "functions" "policy" -}}
{{- if not (hasKey $cfg $s) -}}{{- $_ := set $cfg $s dict -}}{{- end -}}
{{- end -}}
{{- $_ := set $cfg "data_dir" .Values.dataDir -}}
{{- $_ := set $cfg.server "listen" (include "s3-gateway.listen" (list .Values.bindAddress .Values.ports.s3)) -}}
{{- $_ := set $cfg.server "admin_listen" (include "s3-gateway.listen" (list .Values.bindAddress .Values.ports.admin)) -}}
{{- if .Values.embedded.enabled -}}
{{- $_ := set $cfg.backend "url" "" -}}
{{- $_ := set $cfg.backend "force_path_style" true -}}
{{- $_ := set $cfg.functions "lambda_endpoint" "" -}}
{{- $_ := set $cfg.functions "memory_mb" .Values.embedded.functionMemoryMb -}}
{{- if .Values.embedded.functionBinary -}}
{{- $_ := set $cfg.functions "function_binary" .Values.embedded.functionBinary -}}
{{- end -}}
{{- $_ := set $cfg.functions "callback_listen" "127.0.0.1:0" -}}
{{- $_ := set $cfg.functions "callback_advertise" "" -}}
{{- else -}}
{{- if .Values.credentials.awsDefaultChain -}}
{{- /* Empty keys ask the gateway for the AWS default credential chain. */ -}}
{{- $_ := set $cfg.backend "access_key" "" -}}
{{- $_ := set $cfg.backend "secret_key" "" -}}
{{- end -}}
{{- if .Values.config.tier.enabled -}}
{{- if .Values.credentials.awsDefaultChain -}}
{{- $_ := set $cfg.functions "lambda_access_key" "" -}}
{{- $_ := set $cfg.functions "lambda_secret_key" "" -}}
{{- end -}}
{{- $_ := set $cfg.functions "callback_listen" (include "s3-gateway.listen" (list .Values.bindAddress .Values.ports.callback)) -}}
{{- if eq .Values.callback.advertise "podIP" -}}
{{- $_ := set $cfg.functions "callback_advertise" (printf "__POD_IP__:%d" (int .Values.ports.callback)) -}}
{{- else -}}
{{- $_ := set $cfg.functions "callback_advertise" .Values.callback.address -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* One TOML value: string, bool, number or array of them. */}}
{{- define "s3-gateway.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $v := . -}}{{- if $i -}}, {{ end -}}{{- include "s3-gateway.tomlValue" $v -}}{{- end -}}]
{{- else -}}
{{- fail (printf "config: cannot write a %s value (%v) into TOML" (kindOf .) .) -}}
{{- end -}}
{{- end -}}

{{/* The gateway's TOML file. Null values are left out (the gateway's default applies). */}}
{{- define "s3-gateway.toml" -}}
{{- $cfg := include "s3-gateway.effectiveConfig" . | fromYaml -}}
# Rendered by the s3-gateway chart from its values (`config`); see gateway.example.toml.
{{- range $k := keys $cfg | sortAlpha }}
{{- $v := index $cfg $k }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "s3-gateway.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $s := list "server" "auth" "backend" "embedded" "log" "tier" "functions" "policy" }}
{{- $sec := index $cfg $s }}
{{- if $sec }}

[{{ $s }}]
{{- range $k := keys $sec | sortAlpha }}
{{- $v := index $sec $k }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "s3-gateway.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $sec | sortAlpha }}
{{- $sub := index $sec $k }}
{{- if kindIs "map" $sub }}

[{{ $s }}.{{ $k }}]
{{- range $kk := keys $sub | sortAlpha }}
{{- $v := index $sub $kk }}
{{- if kindIs "map" $v }}
{{- fail (printf "config.%s.%s.%s: nested tables are not supported here" $s $k $kk) }}
{{- else if not (kindIs "invalid" $v) }}
{{ $kk }} = {{ include "s3-gateway.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k := keys $cfg | sortAlpha }}
{{- if and (kindIs "map" (index $cfg $k)) (not (has $k (list "server" "auth" "backend" "embedded" "log" "tier" "functions" "policy"))) }}
{{- fail (printf "config.%s: unknown section" $k) }}
{{- end }}
{{- end }}
{{ end -}}

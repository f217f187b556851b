{{/* The name of every namespaced object, and of the webhook configuration. */}}
{{- define "kube-hardener.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selects the webhook pods; never changes across upgrades. */}}
{{- define "kube-hardener.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "kube-hardener.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: kube-hardener
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kube-hardener.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "existing" -}}
{{- required "certificates.existing.secretName is required with certificates.mode=existing" .Values.certificates.existing.secretName -}}
{{- else -}}
{{- printf "%s-tls" (include "kube-hardener.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The port of an IP:port address such as server.listen. */}}
{{- define "kube-hardener.port" -}}
{{- splitList ":" . | last | int -}}
{{- end -}}

{{/*
  How Services and probes name a container port: by name, or by number with
  hostNetwork, where the container declares no ports (a declared port would be
  a host port, and the scheduler would keep a rolling update's new pod off the
  node its old pod is on). Takes (list $ "webhook"|"health").
*/}}
{{- define "kube-hardener.portRef" -}}
{{- $ := index . 0 -}}
{{- $name := index . 1 -}}
{{- if $.Values.hostNetwork -}}
{{- include "kube-hardener.port" (ternary $.Values.server.listen $.Values.server.health_listen (eq $name "webhook")) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/*
  The configuration file: the three tables as the values give them, null keys
  left out (the binary's default applies). Helm reads every number in values as
  a float; the schema allows only integers where the configuration wants them,
  so they are written back as integers.
*/}}
{{- define "kube-hardener.config" -}}
{{- $config := dict -}}
{{- range $table := list "hardening" "server" "images" -}}
{{- $out := dict -}}
{{- range $key, $value := index $.Values $table -}}
{{- if kindIs "map" $value -}}
{{- $inner := dict -}}
{{- range $k, $v := $value -}}
{{- if kindIs "float64" $v }}{{ $v = int64 $v }}{{ end -}}
{{- if not (kindIs "invalid" $v) }}{{ $_ := set $inner $k $v }}{{ end -}}
{{- end -}}
{{- $_ := set $out $key $inner -}}
{{- else -}}
{{- if kindIs "float64" $value }}{{ $value = int64 $value }}{{ end -}}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $out $key $value }}{{ end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $config $table $out -}}
{{- end -}}
{{- /* Set from the pod's namespace (downward API) by the Deployment. */ -}}
{{- $_ := unset $config.server "own_namespace" -}}
{{- if $.Values.registryCredentials.secretName -}}
{{- $_ := set $config.images "credentials_file" "/etc/kube-hardener/registry/.dockerconfigjson" -}}
{{- end -}}
{{- $config | toToml -}}
{{- end -}}

{{/* Namespaces the webhook is never called for: its own and the excluded ones. */}}
{{- define "kube-hardener.excludedNamespaces" -}}
{{- prepend .Values.hardening.excluded_namespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}

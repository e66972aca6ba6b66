{{/* The chart's name. */}}
{{- define "retail-stream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The StatefulSet's name, and the prefix of every object's name. Kept to 50 characters: pod
names add "-<ordinal>", the headless Service "-hl", and a StatefulSet's pods carry a
controller-revision-hash label of the name plus 11 characters (at most 63).
*/}}
{{- define "retail-stream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service that gives pod i the DNS name <fullname>-i.<fullname>-hl. */}}
{{- define "retail-stream.headless" -}}
{{- printf "%s-hl" (include "retail-stream.fullname" .) }}
{{- end }}

{{- define "retail-stream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "retail-stream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "retail-stream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dataflow
{{- end }}

{{- define "retail-stream.labels" -}}
helm.sh/chart: {{ include "retail-stream.chart" . }}
{{ include "retail-stream.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: retail-stream
{{- end }}

{{- define "retail-stream.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret holding the Kafka client properties, or "" when there is none. */}}
{{- define "retail-stream.clientSecret" -}}
{{- if .Values.clientProperties.create }}
{{- printf "%s-client" (include "retail-stream.fullname" .) }}
{{- else if .Values.clientProperties.existingSecret }}
{{- .Values.clientProperties.existingSecret }}
{{- end }}
{{- end }}

{{/* The dataflow's arguments after the entry point's own (-n, -p, -w, -h, -F, --http). */}}
{{- define "retail-stream.args" -}}
{{- $args := .Values.args }}
{{- if not $args }}
{{- $args = list "--topic" .Values.topic "--job-id" .Values.jobId "-b" .Values.kafka.bootstrapServers }}
{{- if .Values.sinks }}
{{- $args = concat $args (list "--sinks" (join "," .Values.sinks)) }}
{{- end }}
{{- end }}
{{- toYaml (concat $args .Values.extraArgs) }}
{{- end }}

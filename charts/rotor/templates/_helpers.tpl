{{/*
Chart name.
*/}}
{{- define "rotor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "rotor.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "rotor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "rotor.labels" -}}
helm.sh/chart: {{ include "rotor.chart" . }}
{{ include "rotor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels (immutable on the Deployment: keep them stable).
*/}}
{{- define "rotor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rotor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "rotor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rotor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Required values, checked before anything renders.
*/}}
{{- define "rotor.validate" -}}
{{- if not .Values.clusterName }}
{{- fail "clusterName is required: set --set clusterName=<name>. It goes into the rotor.dev/owner tag of every AWS secret rotor manages, must be unique among clusters sharing an AWS account, and must never change afterwards." }}
{{- else if not (regexMatch "^[A-Za-z0-9._-]{1,63}$" (toString .Values.clusterName)) }}
{{- fail (printf "clusterName %q is invalid: use 1-63 characters of letters, digits, '-', '_' or '.'." (toString .Values.clusterName)) }}
{{- end }}
{{- if not .Values.aws.region }}
{{- fail "aws.region is required: set --set aws.region=<region>, e.g. us-east-1 (passed to rotor as AWS_REGION)." }}
{{- end }}
{{- if not (has (toString .Values.logFormat) (list "json" "text")) }}
{{- fail (printf "logFormat must be json or text, got %q" (toString .Values.logFormat)) }}
{{- end }}
{{- end }}

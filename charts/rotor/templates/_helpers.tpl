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
The app.kubernetes.io/version label: the chart's appVersion made label-safe
(at most 63 of [A-Za-z0-9._-], alphanumeric at both ends). Never the image tag
or digest, which may be anything (a digest does not fit in a label).
*/}}
{{- define "rotor.versionLabel" -}}
{{- regexReplaceAll "[^A-Za-z0-9._-]" (toString .Chart.AppVersion) "_" | trunc 63 | trimAll "._-" }}
{{- end }}

{{/*
Common labels: on every object the chart renders (except the CRD, whose body
is the generated file).
*/}}
{{- define "rotor.labels" -}}
helm.sh/chart: {{ include "rotor.chart" . }}
{{ include "rotor.selectorLabels" . }}
{{- with include "rotor.versionLabel" . }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
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
The container image: repository@digest when a digest is set (it wins over the
tag), else repository:tag with the tag defaulting to the chart's appVersion.
*/}}
{{- define "rotor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the leader-election Lease (in the release namespace).
*/}}
{{- define "rotor.leaseName" -}}
{{- include "rotor.fullname" . }}
{{- end }}

{{/*
Name of the metrics Service; also the `job` label Prometheus gives rotor's
series when scraped through the ServiceMonitor.
*/}}
{{- define "rotor.metricsServiceName" -}}
{{- printf "%s-metrics" (include "rotor.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The controller's rules from files/clusterrole-rules.yaml, as YAML, without any
rule for coordination.k8s.io: the Lease permission is granted only in the
release namespace, by the Lease Role (files/lease-rules.yaml).
*/}}
{{- define "rotor.controllerRules" -}}
{{- $rules := list }}
{{- range (.Files.Get "files/clusterrole-rules.yaml" | fromYamlArray) }}
{{- if not (has "coordination.k8s.io" (.apiGroups | default list)) }}
{{- $rules = append $rules . }}
{{- end }}
{{- end }}
{{- if not $rules }}
{{- fail "files/clusterrole-rules.yaml holds no rules (or does not parse as a YAML list of PolicyRules)" }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
The Lease Role's rules from files/lease-rules.yaml. Every rule without the
`create` verb is restricted to the release's Lease by name (create cannot be
restricted by resourceNames: the name is not known at authorization time).
*/}}
{{- define "rotor.leaseRules" -}}
{{- $lease := include "rotor.leaseName" . }}
{{- $rules := list }}
{{- range (.Files.Get "files/lease-rules.yaml" | fromYamlArray) }}
{{- $rule := deepCopy . }}
{{- if not (has "create" ($rule.verbs | default list)) }}
{{- $_ := set $rule "resourceNames" (list $lease) }}
{{- end }}
{{- $rules = append $rules $rule }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express well, failing with a
message that says what to change. Included once, by deployment.yaml.
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
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount=%d needs leaderElection.enabled=true: without it every replica reconciles and they would fight over the same AWS secrets and Secrets." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.watchNamespaces (ne .Values.rbac.scope "namespaced") }}
{{- fail "watchNamespaces is set, so set rbac.scope=namespaced too: rotor then gets a Role in each watched namespace instead of cluster-wide access it would not use." }}
{{- end }}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces (the namespaces to grant access in); with no watchNamespaces rotor watches all namespaces and needs rbac.scope=cluster." }}
{{- end }}
{{- end }}

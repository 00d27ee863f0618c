{{/*
The chart name, or nameOverride.
*/}}
{{- define "corral.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's object name: fullnameOverride, or <release>-<chart> (just <release> when it
already contains the chart name). DNS label: at most 63 characters.
*/}}
{{- define "corral.fullname" -}}
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
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): the release namespace
is part of it, so two releases of the same name in two namespaces do not collide.
*/}}
{{- define "corral.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "corral.fullname" .) }}
{{- end }}

{{- define "corral.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "corral.labels" -}}
helm.sh/chart: {{ include "corral.chart" . }}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- end }}

{{/*
Labels that select the operator's pods (Deployment, Service, PDB, NetworkPolicy). Never
change them in an upgrade: a Deployment's selector is immutable.
*/}}
{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "corral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "corral.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "corral.leaseName" -}}
{{- default (include "corral.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "corral.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Where runners post activity reports: the operator's Service.
*/}}
{{- define "corral.activityURL" -}}
{{- printf "http://%s.%s.svc:%v/v1/activity" (include "corral.fullname" .) .Release.Namespace .Values.service.port }}
{{- end }}

{{/*
The Secret holding the activity token key (key `key`): the chart's, or an existing one.
*/}}
{{- define "corral.activityKeySecret" -}}
{{- default (printf "%s-activity-key" (include "corral.fullname" .)) .Values.activityReporting.existingSecret }}
{{- end }}

{{/*
Where the operator reads that key (corral.config.OperatorConfig.activityKeyFile).
*/}}
{{- define "corral.activityKeyDir" -}}
/var/run/corral-operator/activity-key
{{- end }}

{{/*
Labels of the session runner pods the operator creates (corral.render.meta): app name
`agentsession`, component `runner`, managed by `corral`.
*/}}
{{- define "corral.runnerPodLabels" -}}
app.kubernetes.io/name: agentsession
app.kubernetes.io/component: runner
app.kubernetes.io/managed-by: corral
{{- end }}

{{/*
The OperatorConfig YAML: .Values.config, plus the release namespace and, with activity
reporting, where runners post reports (activityUrl) and the egress rule that lets them
reach the operator's pods (activityPeer), and with the runner PodMonitor, the pods that
may scrape runners (metricsScraper), unless config sets those itself.
*/}}
{{- define "corral.operatorConfig" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "namespace" .Release.Namespace }}
{{- if not $config.defaultImage }}
{{- $_ := set $config "defaultImage" (printf "%s:%s" .Values.runnerImage.repository (.Values.runnerImage.tag | default .Chart.AppVersion)) }}
{{- end }}
{{- if .Values.activityReporting.enabled }}
{{- if not $config.activityUrl }}
{{- $_ := set $config "activityUrl" (include "corral.activityURL" .) }}
{{- end }}
{{- if not $config.activityPeer }}
{{- $ports := list (dict "port" (int .Values.operator.port) "protocol" "TCP") }}
{{- $peer := dict "namespace" .Release.Namespace "podLabels" (include "corral.selectorLabels" . | fromYaml) "ports" $ports }}
{{- $_ := set $config "activityPeer" $peer }}
{{- end }}
{{- else }}
{{- $_ := unset $config "activityUrl" }}
{{- $_ := unset $config "activityPeer" }}
{{- end }}
{{- if include "corral.sessionKey" . }}
{{- if not $config.activityKeyFile }}
{{- $_ := set $config "activityKeyFile" (printf "%s/key" (include "corral.activityKeyDir" .)) }}
{{- end }}
{{- else }}
{{- $_ := unset $config "activityKeyFile" }}
{{- end }}
{{- if and .Values.gateway.enabled (not $config.gateway) }}
{{- $_ := set $config "gateway" (dict "namespace" .Release.Namespace "podLabels" (include "corral.gatewaySelectorLabels" . | fromYaml)) }}
{{- end }}
{{- if and .Values.gateway.enabled .Values.gateway.egressCanary.enabled (not $config.egressCanary) }}
{{- $address := printf "%s.%s.svc:%d" (include "corral.gatewayName" .) .Release.Namespace (int .Values.gateway.service.port) }}
{{- $_ := set $config "egressCanary" (dict "address" $address "maxWaitSeconds" .Values.gateway.egressCanary.maxWaitSeconds "trySeconds" .Values.gateway.egressCanary.trySeconds) }}
{{- end }}
{{- if and .Values.gateway.enabled .Values.gateway.egressProxy.enabled (not $config.egressProxy) }}
{{- $url := printf "http://%s.%s.svc:%d" (include "corral.gatewayName" .) .Release.Namespace (int .Values.gateway.egressProxy.port) }}
{{- $_ := set $config "egressProxy" (dict "url" $url "port" (int .Values.gateway.egressProxy.port)) }}
{{- end }}
{{- if include "corral.modelProxy" . }}
{{- $proxy := .Values.gateway.modelProxy }}
{{- if or $config.runnerEnv.ANTHROPIC_API_KEY $config.runnerEnv.ANTHROPIC_AUTH_TOKEN }}
{{- fail "gateway.modelProxy.enabled keeps keys out of session pods, but config.runnerEnv sets ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN): put the key in the Secret gateway.modelProxy.apiKeySecret names and remove it from config.runnerEnv (docs/model-proxy.md, Migration)" }}
{{- end }}
{{- range $namespace, $secret := $proxy.namespaceKeys }}
{{- if or (gt (len $namespace) 63) (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $namespace)) }}
{{- fail (printf "gateway.modelProxy.namespaceKeys: %q is not a namespace name (lowercase letters, digits and '-', at most 63): use the namespace of the sessions that should use the key" $namespace) }}
{{- end }}
{{- end }}
{{- $url := printf "http://%s.%s.svc:%v" (include "corral.gatewayName" .) .Release.Namespace $proxy.port }}
{{- $model := dict "url" $url "spendConfigMap" (include "corral.modelSpendName" .) "port" (int $proxy.port) "upstreamUrl" $proxy.upstreamUrl "keyFile" (printf "%s/key" (include "corral.modelKeyDir" .)) "requestsPerMinute" (int $proxy.requestsPerMinute) "tokensPerMinute" (int $proxy.tokensPerMinute) "namespaceBudgetsUsd" $proxy.namespaceBudgetsUsd "namespaceKeys" $proxy.namespaceKeys "keyRefreshSeconds" $proxy.keyRefreshSeconds "statusIntervalSeconds" $proxy.statusIntervalSeconds }}
{{- with $proxy.prices }}
{{- $_ := set $model "prices" . }}
{{- end }}
{{- $_ := set $config "modelProxy" (merge (default (dict) $config.modelProxy) $model) }}
{{- end }}
{{- if and .Values.metrics.runnerPodMonitor.enabled (not $config.metricsScraper) }}
{{- $scraper := deepCopy .Values.metrics.runnerPodMonitor.scraper }}
{{- $_ := required "metrics.runnerPodMonitor.scraper.namespace is required with metrics.runnerPodMonitor.enabled: the namespace of the Prometheus that scrapes runners (session NetworkPolicies admit its pods)" $scraper.namespace }}
{{- $_ := set $config "metricsScraper" $scraper }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Rules of the operator's access to sessions and their children, in the namespaces it
manages (every namespace with a ClusterRole, or a Role per watched namespace). Each verb is
one the operator really calls; see docs/install.md ("What the operator may do").
*/}}
{{- define "corral.sessionRules" -}}
# AgentSessions: kopf lists and watches; the TTL of finished sessions deletes them.
- apiGroups: ["corral.dev"]
  resources: ["agentsessions"]
  verbs: ["list", "watch", "delete"]
# The operator writes only status, never spec.
- apiGroups: ["corral.dev"]
  resources: ["agentsessions/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion; clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) require this.
- apiGroups: ["corral.dev"]
  resources: ["agentsessions/finalizers"]
  verbs: ["update"]
# Runner pods: created, patched (labels/annotations), deleted (idle, suspend, done); get:
# a pod the status names but the watch has not shown is looked up before it is replaced.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "get", "create", "patch", "delete"]
# A runner pod's CPU limit is lowered in place once it has started (config.startupCpuLimit).
- apiGroups: [""]
  resources: ["pods/resize"]
  verbs: ["patch"]
# Service and PVC: created once; garbage collection removes them with the session.
# get: a create answered AlreadyExists is checked for its owner (a name taken by an object
# that is not the session's is reported, not used); patch: a Service or NetworkPolicy
# edited by hand, or whose spec.network changed, is put back in place; delete: a finished
# session's TTL that deletes only its children (spec.cleanupAfterFinished: Children).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "get", "patch", "delete"]
# The volume: created once, read back when its create finds the name taken (ownership).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "get"]
# The session NetworkPolicy is patched in place when spec.network or the operator's egress,
# DNS, activity, gateway or metrics settings change, and when a hand edit is repaired; read
# back when its create finds the name taken (ownership); deleted like the Service.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "get", "patch", "delete"]
# The credentials Secret's metadata: whether it exists (Credentials condition) and its
# labels. The operator asks for PartialObjectMetadata, so a Secret's data never reaches it;
# RBAC cannot grant a metadata-only read, hence plain `get` (no list/watch). See
# docs/install.md ("Why the operator may get Secrets").
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Non-empty when the release needs the session key (activity tokens, gateway credentials).
*/}}
{{- define "corral.sessionKey" -}}
{{- if or .Values.activityReporting.enabled .Values.gateway.enabled }}true{{- end }}
{{- end }}

{{/*
The session gateway: names and labels (component `gateway`), from the operator's image.
*/}}
{{- define "corral.gatewayName" -}}
{{- printf "%s-gateway" (include "corral.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "corral.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "corral.gatewayLabels" -}}
helm.sh/chart: {{ include "corral.chart" . }}
{{ include "corral.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- end }}

{{/*
What the gateway reads, in the namespaces it serves: sessions (state, wake annotation),
the operator's runner pods (where to forward), and Events (who woke a session).
*/}}
{{- define "corral.gatewaySessionRules" -}}
# Sessions: watched for their state; patched only to set the corral.dev/wake annotation.
- apiGroups: ["corral.dev"]
  resources: ["agentsessions"]
  verbs: ["list", "watch", "patch"]
# Runner pods: watched to forward to the current ready one.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# A WokenByRequest Event naming the user who woke a session; BudgetExceeded.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if include "corral.modelProxy" . }}
# The model proxy writes metered usage (status.modelUsage) and the BudgetExceeded condition,
# each write guarded by the resourceVersion it read.
- apiGroups: ["corral.dev"]
  resources: ["agentsessions/status"]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{/*
Non-empty when the gateway's model proxy is on (it needs the gateway and the key Secret).
*/}}
{{- define "corral.modelProxy" -}}
{{- if and .Values.gateway.enabled .Values.gateway.modelProxy.enabled }}
{{- $_ := required "gateway.modelProxy.apiKeySecret.name is required with gateway.modelProxy.enabled: the Secret (in the release namespace) holding the real Anthropic API key" .Values.gateway.modelProxy.apiKeySecret.name }}true
{{- end }}
{{- end }}

{{/*
Where the gateway reads the real model key (modelProxy.keyFile).
*/}}
{{- define "corral.modelKeyDir" -}}
/var/run/corral-gateway/model-key
{{- end }}

{{/*
The ConfigMap where the gateway keeps each namespace's model spend of the month.
*/}}
{{- define "corral.modelSpendName" -}}
{{- printf "%s-model-spend" (include "corral.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the admin guardrails (the admission policy, its binding, its ConfigMaps).
*/}}
{{- define "corral.guardrailLabels" -}}
helm.sh/chart: {{ include "corral.chart" . }}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: guardrails
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- end }}

{{/*
The domains every session may reach through the egress proxy: gateway.egressProxy.allow and
the hosts (with their ports) of the model API URLs the operator allows.
*/}}
{{- define "corral.egressAllow" -}}
{{- $urls := list }}
{{- range .Values.config.allowedBaseUrls }}{{ $urls = append $urls . }}{{ end }}
{{- with .Values.config.defaultAnthropicBaseUrl }}{{ $urls = append $urls . }}{{ end }}
{{- $hosts := list }}
{{- range .Values.gateway.egressProxy.allow }}{{ $hosts = append $hosts . }}{{ end }}
{{- range $urls }}
{{- $u := urlParse . }}
{{- $host := $u.host }}
{{- if not (contains ":" $host) }}
{{- $host = printf "%s:%s" $host (ternary "443" "80" (eq $u.scheme "https")) }}
{{- end }}
{{- $hosts = append $hosts (lower $host) }}
{{- end }}
{{- range (uniq $hosts) }}
- --egress-allow={{ . }}
{{- end }}
{{- end }}

{{/*
The image pre-puller (component `image-prepuller`): a DaemonSet that keeps the runner
image on the nodes where sessions may run.
*/}}
{{- define "corral.prePullerName" -}}
{{- printf "%s-image-prepuller" (include "corral.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "corral.prePullerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: image-prepuller
{{- end }}

{{- define "corral.prePullerLabels" -}}
helm.sh/chart: {{ include "corral.chart" . }}
{{ include "corral.prePullerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: corral
{{- end }}

{{- define "corral.prePullerContainerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

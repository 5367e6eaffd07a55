{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{- define "bakeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bakeline.fullname" -}}
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

{{/* Cluster-scoped objects carry the release namespace: two releases never collide. */}}
{{- define "bakeline.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "bakeline.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bakeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bakeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bakeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bakeline.labels" -}}
helm.sh/chart: {{ include "bakeline.chart" . }}
{{ include "bakeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: bakeline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "bakeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bakeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bakeline.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches when not cluster-wide: the list, or the release's. */}}
{{- define "bakeline.watchedNamespaces" -}}
{{- if .Values.watch.namespaces }}
{{- toJson (uniq .Values.watch.namespaces) }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/*
The operator's RBAC rules: exactly the verbs it uses, no wildcards, no Secrets.
Derived from operator/handlers/kube.py (every API call the operator makes) plus what kopf
needs in --standalone mode; tests/unit/test_chart_rbac.py fails when the two drift apart.
*/}}
{{- define "bakeline.rules" -}}
# kopf watches the four kinds; reconcilers read them (get) and list a lane's jobs.
- apiGroups: ["bakeline.io"]
  resources: ["bakingjobs", "workflows", "lanes", "slopolicies"]
  verbs: ["get", "list", "watch"]
# The operator writes status only, never spec (GitOps sees no drift).
- apiGroups: ["bakeline.io"]
  resources: ["bakingjobs/status", "workflows/status", "lanes/status", "slopolicies/status"]
  verbs: ["patch"]
# Stage pods, checkpoint volumes and checkpoint records carry an owner reference to their job
# with blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement admission plugin is
# on (OpenShift, hardened clusters) that needs update on the owner's finalizers subresource.
- apiGroups: ["bakeline.io"]
  resources: ["bakingjobs/finalizers"]
  verbs: ["update"]
# One pod per stage attempt; kopf watches them (by the bakeline.io/job label); a pod is
# deleted when its job's deadline passes or its lane drains.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "list", "watch", "delete"]
# One checkpoint volume per job.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["create"]
# Checkpoint records (immutable ConfigMaps), watched (by label) to repair status and find
# cache hits; create also makes each namespace's SLO ledger on first use; delete prunes a
# finished job's checkpoints beyond spec.checkpoints.retain (records and store objects).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "list", "watch", "delete"]
# The SLO ledger (job outcomes by key), the circuit breakers (failures by lane and agent) and
# the stage durations, one of each per namespace, are the only ConfigMaps it changes.
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["bakeline-slo-ledger"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["bakeline-circuits"]
  verbs: ["get", "patch"]
# Finished jobs' stage durations, one per namespace: what the duration predictor learns from.
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["bakeline-stage-durations"]
  verbs: ["get", "patch"]
# Events on the jobs (kubectl describe bj), posted by the operator and by kopf.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Settings that contradict each other fail the render instead of surprising later. */}}
{{- define "bakeline.validate" -}}
{{- if and .Values.watch.allNamespaces .Values.watch.namespaces }}
{{- fail "watch.allNamespaces and watch.namespaces exclude each other: set one" }}
{{- end }}
{{- $election := .Values.operator.leaderElection }}
{{- if and (gt (int .Values.operator.replicas) 1) (not $election.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: two operators must never reconcile at once" }}
{{- end }}
{{- if $election.enabled }}
{{- if not (lt (float64 $election.renewDeadline) (float64 $election.leaseDuration)) }}
{{- fail "operator.leaderElection.renewDeadline must be less than leaseDuration" }}
{{- end }}
{{- if not (gt (float64 $election.renewDeadline) (mulf 1.2 $election.retryPeriod)) }}
{{- fail "operator.leaderElection.renewDeadline must exceed 1.2 x retryPeriod" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Where stage pods of ConfigMap lanes reach the API server, for their NetworkPolicy (JSON:
{"cidrs": [...], "ports": [...]}): stagePods.networkPolicy.apiServer, or, when it names no
CIDR, the endpoints of the `kubernetes` Service as `helm install` finds them in its EndpointSlice,
which kube-apiserver keeps (policies see traffic after the Service's address is translated).
`helm template` finds none; nor does a cluster whose API server advertises a loopback address.
*/}}
{{- define "bakeline.apiServerEgress" -}}
{{- $given := .Values.stagePods.networkPolicy.apiServer }}
{{- $cidrs := $given.cidrs }}
{{- $ports := $given.ports }}
{{- if not $cidrs }}
{{- $found := dict "cidrs" list "ports" list }}
{{- $slice := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "kubernetes" }}
{{- range $endpoint := (($slice | default dict).endpoints | default list) }}
{{- range $ip := ($endpoint.addresses | default list) }}
{{- $_ := set $found "cidrs" (append $found.cidrs (printf "%s/%s" $ip (ternary "128" "32" (contains ":" $ip)))) }}
{{- end }}
{{- end }}
{{- range $port := (($slice | default dict).ports | default list) }}
{{- $_ := set $found "ports" (append $found.ports $port.port) }}
{{- end }}
{{- $cidrs = $found.cidrs }}
{{- if $found.ports }}
{{- $ports = $found.ports | uniq }}
{{- end }}
{{- end }}
{{- toJson (dict "cidrs" $cidrs "ports" $ports) }}
{{- end }}

{{/*
The leader election Lease's name: the release's full name, so releases sharing a namespace
never share a Lease. The operator's Role pins get and update to it.
*/}}
{{- define "bakeline.leaseName" -}}
{{ include "bakeline.fullname" . }}
{{- end }}

{{/*
The one egress rule to the API server's endpoints: (dict "cidrs" LIST "ports" LIST).
*/}}
{{- define "bakeline.apiServerEgressRule" -}}
- to:
    {{- range $cidr := .cidrs }}
    - ipBlock:
        cidr: {{ $cidr }}
    {{- end }}
  ports:
    {{- range $port := .ports }}
    - protocol: TCP
      port: {{ $port }}
    {{- end }}
{{- end }}

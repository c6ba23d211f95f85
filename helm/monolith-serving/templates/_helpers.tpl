{{/* Names, labels and the shared pieces of every pod. */}}

{{- define "monolith.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "monolith.fullname" -}}
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

{{/* "<fullname>-<component>", kept within the 63 characters of a DNS label. The StatefulSets' (ps, zookeeper) within
52: their controller labels every pod with "<name>-<revision hash of up to 10 characters>", a label value that must
fit in 63 characters too, and a longer name leaves the StatefulSet without pods. Their Services share the name. */}}
{{- define "monolith.componentName" -}}
{{- $max := ternary 52 63 (has .component (list "ps" "zookeeper")) -}}
{{- printf "%s-%s" (include "monolith.fullname" .root | trunc (int (sub (sub $max 1) (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "monolith.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "monolith.selectorLabels" . }}
{{- end -}}

{{- define "monolith.selectorLabels" -}}
app.kubernetes.io/name: {{ include "monolith.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "monolith.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* ZooKeeper connect string: the bundled server's Service or the external ensemble. */}}
{{- define "monolith.zkServers" -}}
{{- if .Values.discovery.zookeeper.bundled -}}
{{- printf "%s:2181" (include "monolith.componentName" (dict "root" . "component" "zookeeper")) -}}
{{- else -}}
{{- required "discovery.zookeeper.servers is required when discovery.zookeeper.bundled is false" .Values.discovery.zookeeper.servers -}}
{{- end -}}
{{- end -}}

{{- define "monolith.psShards" -}}
{{- if gt (int .Values.ps.shards) 0 -}}{{ int .Values.ps.shards }}{{- else -}}{{ int .Values.model.numPs }}{{- end -}}
{{- end -}}

{{/* Export base path inside the pods. */}}
{{- define "monolith.basePath" -}}
{{- $source := .Values.model.source -}}
{{- if eq $source.type "path" -}}
{{- required "model.source.path is required when model.source.type is path" $source.path -}}
{{- else -}}
{{- printf "/models/%s" .Values.model.name -}}
{{- end -}}
{{- end -}}

{{/* agent.conf lines shared by every role (REFERENCE §9 syntax). */}}
{{- define "monolith.agentConfCommon" -}}
bzid {{ .Values.bzid }}
base_name {{ .Values.model.name }}
base_path {{ include "monolith.basePath" . }}
num_ps {{ int .Values.model.numPs }}
num_shard {{ include "monolith.psShards" . }}
agent_version 1
version_policy {{ .Values.model.versionPolicy }}
{{- if eq .Values.model.versionPolicy "specific" }}
version_data {{ int64 .Values.model.versionData }}
{{- end }}
update_model_status_interval 1
{{- if eq .Values.discovery.backend "consul" }}
discovery consul
consul_address {{ required "discovery.consul.address is required when discovery.backend is consul" .Values.discovery.consul.address }}
{{- else }}
discovery zk
zk_servers {{ include "monolith.zkServers" . }}
{{- end }}
{{- end -}}

{{/* Pod annotations: config checksum (restart on agent.conf change) and annotation-based scraping. */}}
{{- define "monolith.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if .root.Values.monitoring.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Environment every agent-run pod needs: its own address for the registry and its ports. */}}
{{- define "monolith.agentEnv" -}}
- name: MY_HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: MY_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: PORT2
  value: {{ .Values.ports.agent | quote }}
- name: PORT3
  value: {{ .Values.ports.grpc | quote }}
- name: PORT4
  value: {{ .Values.ports.http | quote }}
- name: MONOLITH_HOST_SHARD_N
  value: {{ include "monolith.psShards" . | quote }}
{{- end -}}

{{/* The model source: volume(s) and the demo export init container. */}}
{{- define "monolith.modelVolumes" -}}
{{- $source := .Values.model.source -}}
{{- if eq $source.type "demo" }}
- name: models
  emptyDir: {}
{{- else if eq $source.type "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ required "model.source.pvc.claimName is required when model.source.type is pvc" $source.pvc.claimName }}
    readOnly: true
{{- end }}
- name: config
  configMap:
    name: {{ include "monolith.componentName" (dict "root" . "component" "config") }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "monolith.modelMounts" -}}
{{- $source := .Values.model.source -}}
{{- if eq $source.type "demo" }}
- name: models
  mountPath: /models
{{- else if eq $source.type "pvc" }}
- name: models
  mountPath: {{ printf "/models/%s" .Values.model.name }}
  {{- with $source.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
  readOnly: true
{{- end }}
- name: config
  mountPath: /etc/monolith
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "monolith.demoInit" -}}
{{- if eq .Values.model.source.type "demo" }}
initContainers:
  - name: export-demo
    image: {{ include "monolith.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      - export-demo
      - --out={{ include "monolith.basePath" . }}
      - --num-ps={{ int .Values.model.numPs }}
      - --rows={{ int .Values.model.source.demo.rows }}
      - --seed={{ int .Values.model.source.demo.seed }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    resources:
      requests: {cpu: 100m, memory: 128Mi}
      limits: {memory: 512Mi}
    volumeMounts:
      - name: models
        mountPath: /models
{{- end }}
{{- end -}}

{{/* gRPC health probes: startup and readiness on the `readiness` port (the model server: SERVING once its models are
loaded), liveness on the `liveness` port (the agent). Kubernetes runs liveness only after the startup probe has passed,
so the startup budget (periodSeconds * failureThreshold) is what a model load may take. */}}
{{- define "monolith.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ .readiness }}
  periodSeconds: {{ .root.Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .root.Values.probes.startup.failureThreshold }}
livenessProbe:
  grpc:
    port: {{ .liveness }}
  periodSeconds: {{ .root.Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .root.Values.probes.liveness.failureThreshold }}
readinessProbe:
  grpc:
    port: {{ .readiness }}
  periodSeconds: {{ .root.Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .root.Values.probes.readiness.failureThreshold }}
{{- end -}}

{{- define "monolith.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

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

{{/* The probes of monolith.grpcProbes as exec probes running `.command` (a list), for a port Kubernetes' gRPC probe
cannot check (it has no TLS). A Python process per check: the timeout allows for its start on a busy node. */}}
{{- define "monolith.execProbes" -}}
{{- range $probe, $values := dict "startupProbe" .root.Values.probes.startup "livenessProbe" .root.Values.probes.liveness "readinessProbe" .root.Values.probes.readiness }}
{{ $probe }}:
  exec:
    command:
      {{- toYaml $.command | nindent 6 }}
  timeoutSeconds: 5
  periodSeconds: {{ $values.periodSeconds }}
  failureThreshold: {{ $values.failureThreshold }}
{{- end }}
{{- end -}}

{{/* The proxy's TLS (proxy.tls): where the Secret is mounted, and the in-memory copy the proxy and its probes use. */}}
{{- define "monolith.proxyTlsSecretPath" -}}/etc/monolith-tls-secret{{- end -}}
{{- define "monolith.proxyTlsPath" -}}/etc/monolith-tls{{- end -}}

{{/* Render-time checks of proxy.tls; what only the Secret can tell (ca.crt present) is checked when the proxy
container starts, by monolith.proxyTlsStart. */}}
{{- define "monolith.proxyTlsChecks" -}}
{{- $tls := .Values.proxy.tls -}}
{{- if $tls.secretName -}}
{{- if not $tls.serverName -}}
{{- fail "proxy.tls.serverName is required when proxy.tls.secretName is set: a DNS name (or IP) of the certificate, which the probes check instead of 127.0.0.1" -}}
{{- end -}}
{{- else -}}
{{- if $tls.clientVerify -}}
{{- fail "proxy.tls.clientVerify needs proxy.tls.secretName: without a Secret the proxy serves plaintext" -}}
{{- end -}}
{{- if $tls.serverName -}}
{{- fail "proxy.tls.serverName applies only with proxy.tls.secretName (TLS is off without it)" -}}
{{- end -}}
{{- end -}}
{{- range .Values.proxy.extraArgs -}}
{{- if regexMatch "^--?ssl[-_]config[-_]file" . -}}
{{- fail "proxy.extraArgs: set proxy.tls instead of --ssl_config_file (the probes must know the port serves TLS)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The proxy container's start when it serves TLS: copy the Secret into the in-memory volume, write the SSLConfig
from that copy (monolith-serving ssl-config), then exec the proxy with the container's args. At every start of the
container, not once per pod: the kubelet restarts the container when its probes fail (the certificate expired), and it
must then take the renewed Secret, not the copy it served until then. The proxy and its probes read the copy only: the
kubelet updates a mounted Secret in place when the certificate is renewed, and probes trusting the new certificate
would fail every pod still serving the one it started with. tls.crt and tls.key read during such an update may not
match: ssl-config refuses the pair, the container exits and its next start copies afresh. cp -f replaces the copy of
the last start, whose files are read-only (the Secret's mode). `exec`: the proxy replaces the shell, so it gets the
kubelet's SIGTERM. Until then the shell is the container's PID 1, which has no default signal actions: without the
traps the kubelet's SIGTERM would be dropped and the pod would wait out its grace period for the SIGKILL. sh runs a trap
only once its foreground command ends, so ssl-config runs in the background under `wait`, which a trapped signal
interrupts; when the shell exits, the container's end takes ssl-config with it. `wait` returns ssl-config's status, so
a refused pair still stops the start (set -e). */}}
{{- define "monolith.proxyTlsStart" -}}
{{- $tls := .Values.proxy.tls -}}
{{- $secret := include "monolith.proxyTlsSecretPath" . -}}
{{- $copy := include "monolith.proxyTlsPath" . -}}
set -eu
trap 'exit 143' TERM
trap 'exit 130' INT
{{- if $tls.clientVerify }}
if [ ! -s {{ $secret }}/ca.crt ]; then
  echo "proxy.tls.clientVerify is true but Secret {{ $tls.secretName }} has no ca.crt (or an empty one): client certificates must chain to it" >&2
  exit 2
fi
cp -f {{ $secret }}/tls.crt {{ $secret }}/tls.key {{ $secret }}/ca.crt {{ $copy }}/
monolith-serving ssl-config --server_cert_file={{ $copy }}/tls.crt --server_key_file={{ $copy }}/tls.key --custom_ca_file={{ $copy }}/ca.crt --client_verify --out={{ $copy }}/ssl.config &
wait $!
{{- else }}
cp -f {{ $secret }}/tls.crt {{ $secret }}/tls.key {{ $copy }}/
monolith-serving ssl-config --server_cert_file={{ $copy }}/tls.crt --server_key_file={{ $copy }}/tls.key --out={{ $copy }}/ssl.config &
wait $!
{{- end }}
exec monolith-serving "$@"
{{- end -}}

{{/* `monolith-serving health` of the TLS proxy's own port, as its exec probes run it. */}}
{{- define "monolith.proxyTlsHealthCommand" -}}
{{- $tls := .Values.proxy.tls -}}
{{- $copy := include "monolith.proxyTlsPath" . -}}
- monolith-serving
- health
- --addr=127.0.0.1:{{ .Values.ports.grpc }}
- --timeout_s=3
- --ssl_ca_file={{ $copy }}/tls.crt
- --ssl_target_name_override={{ $tls.serverName }}
{{- if $tls.clientVerify }}
- --ssl_cert_file={{ $copy }}/tls.crt
- --ssl_key_file={{ $copy }}/tls.key
{{- end }}
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

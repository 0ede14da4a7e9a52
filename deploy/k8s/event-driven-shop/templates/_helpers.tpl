{{/* What the code says: services, topics, Kafka users (files/registry.yaml, generated). */}}
{{- define "shop.registry" -}}
{{- .Files.Get "files/registry.yaml" -}}
{{- end -}}

{{- define "shop.labels" -}}
app.kubernetes.io/name: event-driven-shop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: event-driven-shop
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selects one component's pods: (dict "root" $ "component" "order") */}}
{{- define "shop.selector" -}}
app.kubernetes.io/name: event-driven-shop
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Strimzi Kafka cluster's name; its bootstrap Service is <name>-kafka-bootstrap. */}}
{{- define "shop.kafka" -}}
{{ .Release.Name }}
{{- end -}}

{{/* A service's CloudNativePG cluster: (dict "root" $ "name" "order") */}}
{{- define "shop.database" -}}
{{ printf "%s-%s-db" .root.Release.Name .name }}
{{- end -}}

{{/* One service's settings: `defaults` with `services.<name>` over them, as YAML. */}}
{{- define "shop.config" -}}
{{- $override := get .root.Values.services .name | default dict -}}
{{- toYaml (mustMergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $override)) -}}
{{- end -}}

{{/* A service's resources: its own, else computed from its measured footprint. */}}
{{- define "shop.resources" -}}
{{- $config := .config -}}
{{- if $config.resources -}}
{{- toYaml $config.resources -}}
{{- else -}}
{{- $footprint := required (printf "footprint.%s is missing" .name) (get .root.Values.footprint .name) -}}
{{- $cpu := ceil (addf $footprint.idleMillicores (mulf $config.designOrdersPerSecond $footprint.cpuMsPerOrder)) | int -}}
{{- $memory := ceil (mulf $footprint.peakRssMiB $config.memoryHeadroom) | int -}}
requests:
  cpu: {{ printf "%dm" $cpu }}
  memory: {{ printf "%dMi" $memory }}
limits:
  cpu: {{ $config.cpuLimit | quote }}
  memory: {{ printf "%dMi" (ceil (mulf $memory $config.memoryLimitFactor) | int) }}
{{- end -}}
{{- end -}}

{{/* The largest partition count among the topics a service consumes. */}}
{{- define "shop.partitions" -}}
{{- $registry := include "shop.registry" .root | fromYaml -}}
{{- $most := 1 -}}
{{- range $topic := $registry.topics -}}
{{- if has $topic.name $.service.subscribes -}}
{{- $override := get $.root.Values.kafka.topics $topic.name | default dict -}}
{{- $most = max $most ($override.partitions | default $topic.partitions) -}}
{{- end -}}
{{- end -}}
{{- $most -}}
{{- end -}}

{{- define "shop.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shop.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Egress to DNS: the peers of networkPolicy.dns. */}}
{{- define "shop.egressDns" -}}
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end -}}

{{/* Egress to the Kubernetes API: networkPolicy.kubeApi. */}}
{{- define "shop.egressKubeApi" -}}
- to:
    {{- range .cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    {{- range .ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}

{{/* A memory quantity in Mi or Gi as a number of MiB. */}}
{{- define "shop.mebibytes" -}}
{{- if hasSuffix "Gi" . -}}{{ mul (trimSuffix "Gi" . | int) 1024 }}
{{- else if hasSuffix "Mi" . -}}{{ trimSuffix "Mi" . | int }}
{{- else -}}{{ fail (printf "memory %q: give it in Mi or Gi" .) }}
{{- end -}}
{{- end -}}

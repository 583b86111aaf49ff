{{/*
ragmesh's named templates. Everything an environment changes is a value (values.yaml); the
templates never test an environment's name except through these.
*/}}

{{/* The suffix of the objects each environment keeps apart in istio-system ("" in prod). */}}
{{- define "ragmesh.suffix" -}}
{{- if ne .Values.environment "prod" }}-{{ .Values.environment }}{{ end -}}
{{- end }}

{{/* A ragmesh image: registry/name[-cuda]:tag; (list . "query"), or (list . "retrieval" true) for the CUDA flavor. */}}
{{- define "ragmesh.image" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $cuda := and (gt (len .) 2) (index . 2) -}}
{{- $svc := index $root.Values $name | default dict -}}
{{- $tag := (($svc.image | default dict).tag) | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- printf "%s/%s%s:%s" (trimSuffix "/" $root.Values.image.registry) $name (ternary "-cuda" "" $cuda) $tag -}}
{{- end }}

{{/* Labels every object of the release carries. */}}
{{- define "ragmesh.labels" -}}
app.kubernetes.io/part-of: ragmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
ragmesh.io/environment: {{ .Values.environment }}
{{- end }}

{{/* A container's resources; (list RESOURCES true) adds one nvidia.com/gpu. */}}
{{- define "ragmesh.resources" -}}
{{- $resources := deepCopy (index . 0) -}}
{{- if index . 1 -}}
{{- $_ := set $resources "requests" (merge (dict "nvidia.com/gpu" "1") ($resources.requests | default dict)) -}}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" "1") ($resources.limits | default dict)) -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end }}

{{/* A GPU pod's scheduling: GPU nodes only, their NVIDIA taint tolerated. */}}
{{- define "ragmesh.gpuScheduling" -}}
nodeSelector:
  {{- toYaml .Values.gpu.nodeSelector | nindent 2 }}
tolerations:
- key: nvidia.com/gpu
  operator: Exists
  effect: NoSchedule
{{- end }}

{{/* The OpenAI-compatible server generation calls: generation.openai.url, or the chart's vLLM server. */}}
{{- define "ragmesh.modelServerUrl" -}}
{{- .Values.generation.openai.url | default (printf "http://vllm.%s.svc.cluster.local:8000/v1" .Release.Namespace) -}}
{{- end }}

{{/*
The Sidecar egress host of generation.openai.url's server, "" when none is set: an in-cluster
Service (a .svc.cluster.local name) in any namespace, any other host as ./<host> (its
ServiceEntry in this namespace).
*/}}
{{- define "ragmesh.modelServerHost" -}}
{{- with .Values.generation.openai.url -}}
{{- $host := splitList ":" (urlParse .).host | first -}}
{{- if hasSuffix ".svc.cluster.local" $host -}}*/{{ $host }}{{- else -}}./{{ $host }}{{- end -}}
{{- end -}}
{{- end }}

{{/* Redis of a role ("queue" or "cache"): its host, the chart's or redis.external's. */}}
{{- define "ragmesh.redisHost" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- if $root.Values.redis.external.enabled -}}
{{- (index $root.Values.redis.external $role).host -}}
{{- else -}}
{{- printf "%s.%s.svc.cluster.local" (ternary "redis" "redis-cache" (eq $role "queue")) $root.Values.redis.namespace -}}
{{- end -}}
{{- end }}

{{/* Redis of a role: host:port. */}}
{{- define "ragmesh.redisAddress" -}}
{{- $root := index . 0 -}}
{{- $port := ternary (index $root.Values.redis.external (index . 1)).port 6379 $root.Values.redis.external.enabled -}}
{{- printf "%s:%v" (include "ragmesh.redisHost" .) $port -}}
{{- end }}

{{/* The URL of Redis of a role, with the password from the pod's REDIS_PASSWORD. */}}
{{- define "ragmesh.redisUrl" -}}
{{- $root := index . 0 -}}
{{- printf "%s://:$(REDIS_PASSWORD)@%s/0" (ternary "rediss" "redis" $root.Values.redis.external.tls) (include "ragmesh.redisAddress" .) -}}
{{- end }}

{{/* The Sidecar egress host of Redis of a role (external: this namespace's ServiceEntry). */}}
{{- define "ragmesh.redisEgress" -}}
{{- $root := index . 0 -}}
{{- ternary "." $root.Values.redis.namespace $root.Values.redis.external.enabled }}/{{ include "ragmesh.redisHost" . }}
{{- end }}

{{/* The pod's imagePullSecrets (image.pullSecrets: a private registry or mirror), or nothing. */}}
{{- define "ragmesh.pullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
- name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* retrieval.backend milvus: the server's URI (default: the release deploy/milvus installs). */}}
{{- define "ragmesh.milvusUri" -}}
{{- .Values.retrieval.milvus.uri | default (printf "http://milvus.%s.svc.cluster.local:19530" .Values.retrieval.milvus.namespace) -}}
{{- end }}

{{/*
The Sidecar egress host of the Milvus server: an in-cluster Service (a .svc.cluster.local name)
in its namespace, any other host as ./<host> (its ServiceEntry in this namespace).
*/}}
{{- define "ragmesh.milvusEgress" -}}
{{- $host := splitList ":" (urlParse (include "ragmesh.milvusUri" .)).host | first -}}
{{- if hasSuffix ".svc.cluster.local" $host -}}{{ index (splitList "." $host) 1 }}/{{ $host }}{{- else -}}./{{ $host }}{{- end -}}
{{- end }}

{{/* The retrieval ConfigMap's index settings for a role (reader or writer). */}}
{{- define "ragmesh.retrievalIndex" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- if eq $root.Values.retrieval.backend "milvus" }}
RAGMESH_INDEX_BACKEND: milvus
RAGMESH_MILVUS_URI: {{ include "ragmesh.milvusUri" $root }}
RAGMESH_MILVUS_COLLECTION: {{ $root.Values.retrieval.milvus.collection }}
RAGMESH_MILVUS_CONSISTENCY: {{ $root.Values.retrieval.milvus.consistency }}
RAGMESH_INDEX_ROLE: {{ $role }}
RAGMESH_INDEX_KIND: {{ $root.Values.retrieval.milvus.indexKind }}
RAGMESH_INDEX_DEVICE: {{ ternary "cuda" "cpu" $root.Values.retrieval.milvus.gpuIndex }}
{{- else }}
RAGMESH_INDEX_DIR: /var/lib/ragmesh/volume/index
RAGMESH_INDEX_ROLE: {{ $role }}
{{- if eq $role "writer" }}
# writer candidates: the lease holder writes (docs/operations.md, writer failover)
RAGMESH_INDEX_LEASE_SECONDS: {{ $root.Values.retrieval.writer.leaseSeconds | quote }}
{{- end }}
RAGMESH_INDEX_KIND: flat
RAGMESH_INDEX_DEVICE: {{ ternary (ternary "cuda" "auto" $root.Values.gpu.enabled) "cpu" (eq $role "reader") }}
# malloc asks for transparent huge pages (FAISS scans in 2 MiB pages) and returns blocks of
# 1 MiB or more when freed (a snapshot's buffers do not stay resident): docs/benchmarks.md
GLIBC_TUNABLES: glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576
{{- end }}
{{- end }}

{{/* The Milvus token of retrieval's pods (retrieval.milvus.tokenSecret), or nothing. */}}
{{- define "ragmesh.milvusToken" -}}
{{- if and (eq .Values.retrieval.backend "milvus") .Values.retrieval.milvus.tokenSecret }}
env:
- name: RAGMESH_MILVUS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.retrieval.milvus.tokenSecret }}
      key: token
{{- end }}
{{- end }}

{{- /* The quality gate's golden set: the deployment's own (gate.golden), else the chart's. */}}
{{- define "ragmesh.golden" -}}
{{- .Values.gate.golden | default (.Files.Get "files/golden.jsonl") -}}
{{- end }}

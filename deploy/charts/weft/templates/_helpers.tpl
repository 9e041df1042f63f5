{{/* Labels every weft object carries; the name label is how weftctl
finds components (cli/src/cluster/kube.rs NAME_LABEL). */}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: weft
{{- end }}

{{/* The selector of a component's pods. */}}
{{- define "weft.selector" -}}
app.kubernetes.io/name: {{ . }}
{{- end }}

{{/* A component's image, from the one image table of values.yaml: by
digest when image.digests gives one (`make images` writes them to
images.json), else by tag. */}}
{{- define "weft.image" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $name := index $root.Values.image.names $key -}}
{{- $digest := index ($root.Values.image.digests | default dict) $key -}}
{{- if $digest -}}
{{ printf "%s/%s@%s" $root.Values.image.registry $name $digest }}
{{- else -}}
{{ printf "%s/%s:%s" $root.Values.image.registry $name $root.Values.image.tag }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations for a metrics port (design.md §3). */}}
{{- define "weft.scrape" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* What weftctl reads: the kinds of its registry (weft_cluster::registry)
and the waypoints' pods. Shared by the view and admin roles. */}}
{{- define "weft.viewRules" -}}
- apiGroups: [""]
  resources: [namespaces, pods, services, serviceaccounts]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, gatewayclasses, httproutes, grpcroutes, referencegrants]
  verbs: [get, list, watch]
- apiGroups: [security.weft.dev]
  resources: [authorizationpolicies, peerauthentications]
  verbs: [get, list, watch]
{{- end }}

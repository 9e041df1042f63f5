//! The cluster DNS add-on, as cluster installers ship it: CoreDNS (built
//! from Go modules, `e2e/clusterdns`) as a Deployment in `kube-system`
//! behind the `kube-dns` Service at [`CLUSTER_DNS`], answering for
//! `cluster.local` from the API server's Services and EndpointSlices.

use std::net::Ipv4Addr;

use super::kubectl::Kubectl;
use crate::error::Result;

/// The `kube-dns` Service's address, every pod's nameserver.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The image the add-on names (the harness runs CoreDNS for it).
pub const IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.15.0";

/// The add-on's objects.
pub fn manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
  - apiGroups: [""]
    resources: [services, namespaces, pods]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:1053 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }}
        cache 30
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      priorityClassName: system-cluster-critical
      containers:
        - name: coredns
          image: {IMAGE}
          args: ["-conf", "/etc/coredns/Corefile"]
          ports:
            - {{name: dns, containerPort: 1053, protocol: UDP}}
            - {{name: dns-tcp, containerPort: 1053, protocol: TCP}}
          readinessProbe:
            httpGet: {{path: /ready, port: 8181}}
            periodSeconds: 1
          livenessProbe:
            httpGet: {{path: /health, port: 8080}}
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {{drop: [ALL]}}
          volumeMounts: [{{name: config, mountPath: /etc/coredns, readOnly: true}}]
      volumes: [{{name: config, configMap: {{name: coredns}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {CLUSTER_DNS}
  selector: {{k8s-app: kube-dns}}
  ports:
    - {{name: dns, port: 53, targetPort: 1053, protocol: UDP}}
    - {{name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}}
"#
    )
}

/// Installs the add-on and waits until it answers (its Deployment
/// Available).
pub fn install(kubectl: &Kubectl) -> Result<()> {
    kubectl.apply(&manifest())?;
    kubectl.wait_for("kube-system", "Available", "deployment/coredns", 120)?;
    Ok(())
}

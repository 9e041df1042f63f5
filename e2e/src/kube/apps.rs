//! The applications the kube cluster's tests and demo run: the e2e echo
//! server as Deployments, written as a user would write them.

/// A Deployment `namespace/name` of one echo server (TCP 9000, HTTP 8080)
/// pinned to node `node`, running as ServiceAccount `account`, Ready once it
/// listens; `labels` are extra pod labels (`key: value, …`).
pub fn echo_deployment(
    namespace: &str,
    name: &str,
    account: &str,
    node: usize,
    labels: &str,
) -> String {
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!(", {labels}")
    };
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}{labels}}}}}
    spec:
      serviceAccountName: {account}
      nodeSelector: {{kubernetes.io/hostname: node-{node}}}
      containers:
        - name: main
          image: e2e-app
          args: ["serve", "--name", "{namespace}/{name}"]
          readinessProbe: {{tcpSocket: {{port: 9000}}, periodSeconds: 1}}
"#
    )
}

/// A waypoint for `shop`: its Gateway, and the Service `shop/server`
/// (HTTP on 80 to the echo server's 8080) bound to it.
pub const SHOP_WAYPOINT: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-waypoint, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: shop
  labels: {weft.dev/use-waypoint: shop-waypoint}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
";

/// An L7 policy at `shop/server`'s waypoint: GET only.
pub const GET_ONLY: &str = "apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  targetRefs: [{group: \"\", kind: Service, name: server}]
  action: ALLOW
  rules:
    - to: [{operation: {methods: [GET]}}]
";

/// ServiceAccounts `names` in `namespace`.
pub fn service_accounts(namespace: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_names_its_server_and_node() {
        let d = echo_deployment("shop", "server", "server", 2, "tier: back");
        assert!(d.contains("kubernetes.io/hostname: node-2"), "{d}");
        assert!(d.contains("app: server, tier: back"), "{d}");
        assert!(d.contains(r#""shop/server""#), "{d}");
        let accounts = service_accounts("shop", &["a", "b"]);
        assert_eq!(accounts.matches("kind: ServiceAccount").count(), 2);
    }
}

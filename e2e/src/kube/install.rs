//! Installing weft on the control plane the way a user does: the pinned
//! Gateway API CRDs, then `deploy/` with kubectl.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::control_plane::ControlPlane;
use crate::error::{Error, Result};
use crate::process::wait_until;

/// The repository's `deploy/base` (namespace, CRDs, controller, RBAC,
/// GatewayClass).
pub fn deploy_base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base")
}

/// Applies the Gateway API standard CRDs and waits until the API serves
/// them. Server-side apply: the CRDs are larger than the annotation
/// client-side apply keeps.
pub fn gateway_api(plane: &ControlPlane) -> Result<()> {
    let crds = plane.toolchain().gateway_api_crds();
    plane
        .kubectl()
        .run(&["apply", "--server-side", "-f", &crds.display().to_string()])?;
    wait_established(
        plane,
        &[
            "gateways.gateway.networking.k8s.io",
            "httproutes.gateway.networking.k8s.io",
            "gatewayclasses.gateway.networking.k8s.io",
            "grpcroutes.gateway.networking.k8s.io",
            "referencegrants.gateway.networking.k8s.io",
        ],
    )
}

/// The Prometheus Operator release whose PodMonitor CRD the chart's
/// `monitoring.podMonitors` objects are checked against.
pub const PROMETHEUS_OPERATOR: &str = "v0.85.0";

/// Applies the Prometheus Operator's PodMonitor CRD (from its Go module, as
/// the proxy serves it) and waits until the API serves it.
pub fn pod_monitor_crd(plane: &ControlPlane) -> Result<()> {
    let module =
        format!("github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR}");
    let out = std::process::Command::new("go")
        .args(["mod", "download", "-json", &module])
        // Outside any module: only the module cache is touched.
        .current_dir(std::env::temp_dir())
        .output()
        .map_err(|e| Error::Missing {
            what: "go".into(),
            hint: format!("install Go to fetch {module}: {e}"),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("go mod download {module}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Invalid(format!("go mod download -json: {e}")))?;
    let dir = info["Dir"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("go mod download {module}: no Dir")))?;
    let crd = Path::new(dir)
        .join("example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml");
    plane
        .kubectl()
        .run(&["apply", "--server-side", "-f", &crd.display().to_string()])?;
    wait_established(plane, &["podmonitors.monitoring.coreos.com"])
}

/// `kubectl apply -k deploy/base`, as the install guide says, after the
/// Gateway API CRDs its GatewayClass needs. The CRDs are applied first and
/// awaited, so that the custom resources in the same kustomization find
/// their kinds.
pub fn weft(plane: &ControlPlane) -> Result<()> {
    let base = deploy_base();
    let rendered = plane
        .kubectl()
        .run(&["kustomize", &base.display().to_string()])?;
    crds_first(plane, &rendered)?;
    plane
        .kubectl()
        .run(&["apply", "-k", &base.display().to_string()])?;
    Ok(())
}

/// Installs weft from `manifests` (a rendering of deploy/base, e.g. an
/// earlier release's) as a user does with `kubectl apply -f`.
pub fn weft_manifests(plane: &ControlPlane, manifests: &str) -> Result<()> {
    crds_first(plane, manifests)?;
    plane.kubectl().apply(manifests)?;
    Ok(())
}

/// The Gateway API's and weft's CRDs of `rendered`, applied and served.
fn crds_first(plane: &ControlPlane, rendered: &str) -> Result<()> {
    gateway_api(plane)?;
    let crds: String = rendered
        .split("\n---\n")
        .filter(|doc| doc.contains("kind: CustomResourceDefinition"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    plane.kubectl().apply(&crds)?;
    wait_established(
        plane,
        &[
            "authorizationpolicies.security.weft.dev",
            "peerauthentications.security.weft.dev",
        ],
    )
}

/// The workloads `deploy/` runs, as `kind/name` in `weft-system`.
pub const WORKLOADS: [&str; 3] = [
    "deployment/weft-controller",
    "daemonset/weft-node-agent",
    "daemonset/ztunnel",
];

/// Waits until every workload of [`WORKLOADS`] has rolled out (each pod
/// updated and Ready), for at most `seconds` each.
pub fn rolled_out(plane: &ControlPlane, seconds: u32) -> Result<()> {
    for workload in WORKLOADS {
        plane.kubectl().run(&[
            "rollout",
            "status",
            "-n",
            "weft-system",
            workload,
            &format!("--timeout={seconds}s"),
        ])?;
    }
    Ok(())
}

fn wait_established(plane: &ControlPlane, crds: &[&str]) -> Result<()> {
    for crd in crds {
        let mut last = String::new();
        let established = wait_until(
            &format!("CRD {crd} established"),
            Duration::from_secs(30),
            || match plane.kubectl().run(&[
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ]) {
                Ok(status) => status.trim() == "True",
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
        );
        established.map_err(|e| Error::Invalid(format!("{e}; last error: {last}")))?;
    }
    Ok(())
}

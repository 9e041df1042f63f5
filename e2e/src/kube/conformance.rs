//! The Gateway API conformance suite against weft on the real control plane
//! (docs/conformance.md): the suite's own test binary, built from its Go
//! module by `scripts/build-conformance.sh` at the release of the CRDs the
//! cluster installs, run unmodified in the control plane's network namespace
//! with the admin kubeconfig, for the mesh profiles weft claims.
//!
//! The suite deploys its echo backends itself (Istio's echo server, its
//! manifests' `echo-advanced` image, which [`echo_image`] makes from the
//! same build) and sends every request from inside one of them, with
//! `pods/exec` through the API server to the harness's kubelet. What weft
//! adds is what a user of a mesh does before: the suite's two mesh
//! namespaces are enrolled and bound to a waypoint of their own
//! ([`prepare`]), and `--namespace-labels` keeps that when the suite
//! applies its manifests over them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use weft_image::archive::{FileSpec, ImageSpec};
use weft_image::base::{Base, NONROOT};
use weft_image::recipes::PATH;

use super::cluster::KubeCluster;
use crate::error::{Error, Result};
use crate::process::{ManagedProcess, wait_until};

/// The image the suite's mesh manifests run (its tag is not checked).
pub const ECHO_IMAGE: &str = "gcr.io/k8s-staging-gateway-api/echo-advanced";

/// The namespaces the suite's mesh tests run in: their Services are bound
/// to a waypoint by this name in each.
pub const MESH_NAMESPACES: [&str; 2] = [
    "gateway-conformance-mesh",
    "gateway-conformance-mesh-consumer",
];

/// The waypoint of each mesh namespace.
pub const WAYPOINT: &str = "waypoint";

/// The profiles weft claims.
pub const PROFILES: [&str; 2] = ["MESH-HTTP", "MESH-GRPC"];

/// What weft supports: the profiles' core features and every extended
/// feature their tests exercise. A feature is listed only when each test
/// that needs it passes.
pub const FEATURES: &[&str] = &[
    "Mesh",
    "HTTPRoute",
    "GRPCRoute",
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "MeshHTTPRouteRewritePath",
    "MeshHTTPRouteSchemeRedirect",
    "MeshHTTPRouteRedirectPort",
    "MeshHTTPRouteRedirectPath",
    "MeshHTTPRouteBackendRequestHeaderModification",
    "MeshHTTPRouteQueryParamMatching",
    "MeshHTTPRouteNamedRouteRule",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteParentRefPort",
    "HTTPRoute303RedirectStatusCode",
    // Not HTTPRoute307RedirectStatusCode: the suite's v1.5.1 test of it
    // applies the 303 test's manifest (fixed in v1.6.0), so nothing passes
    // it; weft's redirects take any 3xx status (docs/conformance.md).
    "HTTPRoute308RedirectStatusCode",
];

/// How long the whole suite may run: each of its tests waits up to a minute
/// for convergence, far more than a passing one takes.
const SUITE_TIMEOUT: &str = "40m";
const SUITE_LIMIT: Duration = Duration::from_secs(42 * 60);

/// The directory `scripts/build-conformance.sh` built into (the suite's
/// test binary and Istio's echo server and client), or
/// `$WEFT_CONFORMANCE_DIR`.
pub fn built() -> Result<PathBuf> {
    super::built_by_script(
        "build-conformance.sh",
        "WEFT_CONFORMANCE_DIR",
        "the conformance suite",
        |dir| dir.join("conformance.test").is_file(),
    )
}

/// The `echo-advanced` image: Istio's echo server as its entrypoint, its
/// client on the PATH (the suite execs `client <url>`), and the serving
/// certificate the manifests' `--crt=/cert.crt --key=/cert.key` name, made
/// once beside the binaries (a test certificate for the echo's own TLS
/// port, which weft never terminates).
pub fn echo_image(dir: &Path) -> Result<(Base, ImageSpec)> {
    let (crt, key) = (dir.join("cert.crt"), dir.join("cert.key"));
    if !crt.is_file() || !key.is_file() {
        let invalid = |e: rcgen::Error| Error::Invalid(format!("echo certificate: {e}"));
        let made = rcgen::generate_simple_self_signed(vec!["echo".to_string()]).map_err(invalid)?;
        std::fs::write(&key, made.signing_key.serialize_pem()).map_err(Error::io(&key))?;
        std::fs::write(&crt, made.cert.pem()).map_err(Error::io(&crt))?;
    }
    let file = |source: PathBuf, path: &str, mode: u32| FileSpec {
        source,
        path: path.into(),
        mode,
    };
    let server = "/usr/local/bin/server";
    Ok((
        Base::Cc,
        ImageSpec {
            name: weft_image::names::repository(ECHO_IMAGE).into(),
            reference: format!("{ECHO_IMAGE}:latest"),
            files: vec![
                file(dir.join("echo-server"), server, 0o755),
                file(dir.join("echo-client"), "/usr/local/bin/client", 0o755),
                file(crt, "/cert.crt", 0o644),
                // Readable by the image's user: a throwaway test key.
                file(key, "/cert.key", 0o644),
            ],
            entrypoint: vec![server.into()],
            cmd: Vec::new(),
            user: format!("{NONROOT}:{NONROOT}"),
            env: vec![PATH.into()],
            working_dir: "/".into(),
            labels: BTreeMap::new(),
        },
    ))
}

/// The suite's mesh namespaces as a weft user prepares them: enrolled,
/// bound to a waypoint, and that waypoint programmed.
pub fn prepare(cluster: &KubeCluster) -> Result<()> {
    let k = cluster.kubectl();
    let mut manifests = Vec::new();
    for ns in MESH_NAMESPACES {
        let labels: String = namespace_labels()
            .iter()
            .map(|(k, v)| format!(", {k}: {v}"))
            .collect();
        manifests.push(format!(
            "apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{gateway-conformance: {role}{labels}}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {WAYPOINT}, namespace: {ns}}}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
",
            role = ns.trim_start_matches("gateway-conformance-"),
        ));
    }
    k.apply(&manifests.join("---\n"))?;
    for ns in MESH_NAMESPACES {
        let gateway = format!("gateway/{WAYPOINT}");
        wait_until(
            &format!("{ns}/{WAYPOINT} exists"),
            Duration::from_secs(60),
            || k.run(&["get", "-n", ns, &gateway]).is_ok(),
        )?;
        k.run(&[
            "wait",
            "-n",
            ns,
            &gateway,
            "--for=condition=Programmed",
            "--timeout=120s",
        ])?;
    }
    Ok(())
}

/// The labels every namespace the suite makes carries: enrolled, its
/// Services bound to the namespace's waypoint.
pub fn namespace_labels() -> [(&'static str, &'static str); 2] {
    [
        ("weft.dev/dataplane-mode", "ambient"),
        ("weft.dev/use-waypoint", WAYPOINT),
    ]
}

/// One run of the suite: its exit, its log and the report it wrote.
pub struct SuiteRun {
    /// Whether `go test` passed (every test it ran).
    pub passed: bool,
    /// The suite's verbose output.
    pub log: PathBuf,
    /// The conformance report, as the suite wrote it (YAML).
    pub report_text: String,
    /// The report, parsed.
    pub report: Report,
}

/// Runs the suite against `cluster` for [`PROFILES`] and [`FEATURES`],
/// its log and report written into `out` (kept past the cluster's
/// teardown); `skip` names tests not to run (each with its reason in the
/// caller).
pub fn run(cluster: &KubeCluster, out: &Path, skip: &[&str]) -> Result<SuiteRun> {
    let dir = built()?;
    let plane = cluster.control_plane();
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    let report_path = out.join("report.yaml");
    let log = out.join("suite.log");
    let labels: Vec<String> = namespace_labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut cmd = Command::new("ip");
    if let Some(netns) = plane.toolchain().netns() {
        cmd.args(["netns", "exec", netns]);
    }
    cmd.arg(dir.join("conformance.test"))
        .current_dir(out)
        .env("KUBECONFIG", plane.kubectl().kubeconfig())
        .arg("-test.v")
        .arg(format!("-test.timeout={SUITE_TIMEOUT}"))
        .arg("-test.run=^TestConformance$")
        .arg("-gateway-class=weft-waypoint")
        .arg(format!("-conformance-profiles={}", PROFILES.join(",")))
        .arg(format!("-supported-features={}", FEATURES.join(",")))
        .arg(format!("-namespace-labels={}", labels.join(",")))
        .arg("-organization=weft")
        .arg("-project=weft")
        .arg("-url=https://weft.dev")
        .arg(format!("-version=v{}", env!("CARGO_PKG_VERSION")))
        .arg("-contact=https://weft.dev")
        .arg(format!("-report-output={}", report_path.display()))
        // The cluster is torn down after the run; deleting first only
        // costs time.
        .arg("-cleanup-base-resources=false");
    if !skip.is_empty() {
        cmd.arg(format!("-skip-tests={}", skip.join(",")));
    }
    // A run's files are its own: the log is appended to, and a report left
    // by an earlier run must not pass for this one's.
    for old in [&log, &report_path] {
        let _ = std::fs::remove_file(old);
    }
    let mut process = ManagedProcess::spawn("conformance", cmd, &log)?;
    // Past the suite's own -test.timeout, which then fails with a dump.
    let status = process.wait_timeout(SUITE_LIMIT).ok_or_else(|| {
        Error::Invalid(format!(
            "the suite ran past {SUITE_LIMIT:?}; log {}",
            log.display()
        ))
    })?;
    let report_text = std::fs::read_to_string(&report_path).map_err(|e| {
        Error::Invalid(format!(
            "the suite wrote no report at {} ({e}); its log: {}",
            report_path.display(),
            log.display()
        ))
    })?;
    let report: Report = weft_api::yaml::from_str(&report_text)
        .map_err(|e| Error::decode("the conformance report", e))?;
    Ok(SuiteRun {
        passed: status.success(),
        log,
        report_text,
        report,
    })
}

/// The parts of the suite's report (its `ConformanceReport`, apiVersion
/// `gateway.networking.k8s.io/v1`) a run is judged by.
#[derive(Debug, Deserialize)]
pub struct Report {
    /// The Gateway API release the suite is.
    #[serde(rename = "gatewayAPIVersion")]
    pub gateway_api_version: String,
    /// The Gateway API channel of the installed CRDs.
    #[serde(rename = "gatewayAPIChannel")]
    pub gateway_api_channel: String,
    /// One entry per profile run.
    pub profiles: Vec<ProfileReport>,
}

/// A profile's results.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileReport {
    /// e.g. `MESH-HTTP`.
    pub name: String,
    /// `success`, `partial` or `failure`.
    pub summary: String,
    /// Its core tests.
    pub core: Results,
    /// Its extended tests, with the features claimed.
    #[serde(default)]
    pub extended: Option<Results>,
}

/// The results of a profile's core or extended tests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    /// `success`, `partial` or `failure`.
    pub result: String,
    /// The counts.
    pub statistics: Statistics,
    /// Tests that failed, by short name.
    #[serde(default)]
    pub failed_tests: Vec<String>,
    /// Tests that were skipped.
    #[serde(default)]
    pub skipped_tests: Vec<String>,
    /// Features claimed (extended only).
    #[serde(default)]
    pub supported_features: Vec<String>,
    /// Features of the profile not claimed.
    #[serde(default)]
    pub unsupported_features: Vec<String>,
}

/// Passed, failed and skipped counts (the suite writes these keys
/// capitalized).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Statistics {
    /// Tests that passed.
    #[serde(default)]
    pub passed: u32,
    /// Tests that failed.
    #[serde(default)]
    pub failed: u32,
    /// Tests that were skipped.
    #[serde(default)]
    pub skipped: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report weft publishes is one the suite wrote: it parses, and
    /// says what the claim says.
    #[test]
    fn the_published_report_parses_and_every_claimed_profile_passed() {
        let text = include_str!("../../../docs/conformance/report.yaml");
        let report: Report = weft_api::yaml::from_str(text).expect("the suite's report parses");
        assert_eq!(report.gateway_api_channel, "standard");
        let names: Vec<&str> = report.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), PROFILES.len());
        for profile in &report.profiles {
            assert!(PROFILES.contains(&profile.name.as_str()));
            assert_eq!(profile.core.result, "success");
            assert!(profile.core.statistics.passed > 0);
            assert_eq!(profile.core.statistics.failed, 0);
            for f in profile.extended.iter().flat_map(|e| &e.supported_features) {
                assert!(FEATURES.contains(&f.as_str()), "{f} not claimed");
            }
        }
    }
}

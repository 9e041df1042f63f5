//! Prometheus, built from Go modules by `scripts/build-prometheus.sh` (once
//! per machine, cached in `/var/cache/weft/prometheus-<key>`), run beside a
//! kube cluster as operators run it: it finds weft's pods through the API
//! server (`kubernetes_sd_configs`, role `pod`, as a ServiceAccount allowed
//! only to read pods) and scrapes those whose `prometheus.io/*` annotations
//! ask for it, with the relabelling most clusters' configs carry.
//!
//! It runs in the control plane's network namespace, the one place that
//! reaches everything it needs: the API server listens there, every node's
//! address is on the same underlay (ztunnel serves its metrics on the host
//! network), and the namespace has a route to every node's pod CIDR (the
//! controller's pods), over which the API server answers pods. Its queries go
//! through the same namespace; the machine itself stays off the underlay.
//! A harness killed before dropping it leaves nothing either: teardown kills
//! every process inside the run's namespaces and removes the run directory
//! its files are in.
//!
//! ```no_run
//! # use weft_e2e::kube::{KubeCluster, prometheus::Prometheus};
//! # fn f(cluster: &KubeCluster) -> weft_e2e::Result<()> {
//! let prometheus = Prometheus::start(cluster)?;
//! let series = prometheus.wait_for("up == 1", std::time::Duration::from_secs(30))?;
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cluster::KubeCluster;
use crate::error::{Error, Result};
use crate::http;
use crate::netns::Netns;
use crate::process::{ManagedProcess, TAIL_LINES};

/// How often Prometheus scrapes and re-evaluates: short, so a test sees a
/// change within seconds.
pub const SCRAPE_INTERVAL: &str = "2s";

/// The scrape job of annotated pods (the `job` label of every series).
pub const JOB: &str = "kubernetes-pods";

/// Where Prometheus's ServiceAccount lives, and its name.
const NAMESPACE: &str = "monitoring";
const ACCOUNT: &str = "prometheus";

/// How long Prometheus may take to open its storage and serve.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// What the ServiceAccount needs for pod discovery, and no more.
const RBAC: &str = "apiVersion: v1
kind: Namespace
metadata: {name: monitoring}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus, namespace: monitoring}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: weft-e2e-prometheus}
rules:
  - apiGroups: [\"\"]
    resources: [pods]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: weft-e2e-prometheus}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: weft-e2e-prometheus}
subjects: [{kind: ServiceAccount, name: prometheus, namespace: monitoring}]
";

/// The prometheus binary: `$WEFT_PROMETHEUS`, else what
/// `scripts/build-prometheus.sh` built. The script runs once per process (a
/// hash when warm, minutes when cold; its progress goes to stderr), and a
/// failure is remembered rather than paid again by every test.
pub fn binary() -> Result<PathBuf> {
    super::built_by_script(
        "build-prometheus.sh",
        "WEFT_PROMETHEUS",
        "prometheus",
        Path::is_file,
    )
}

/// The scrape configuration: every pod the API server lists, kept if its
/// annotations ask to be scraped, at its pod IP and annotated port and path,
/// labelled with its namespace, name and node. JSON is YAML.
pub fn config(api_server: &str, ca: &Path, token_file: &Path) -> Value {
    let annotation = |name: &str| format!("__meta_kubernetes_pod_annotation_prometheus_io_{name}");
    json!({
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [{
            "job_name": JOB,
            "kubernetes_sd_configs": [{
                "role": "pod",
                "api_server": api_server,
                "tls_config": {"ca_file": ca},
                "authorization": {"type": "Bearer", "credentials_file": token_file},
            }],
            "relabel_configs": [
                {"source_labels": [annotation("scrape")], "regex": "true", "action": "keep"},
                // A finished pod's address may already be another pod's.
                {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Pending|Succeeded|Failed", "action": "drop"},
                {"source_labels": [annotation("path")], "regex": "(.+)", "target_label": "__metrics_path__"},
                {
                    "source_labels": ["__meta_kubernetes_pod_ip", annotation("port")],
                    "regex": "(.+);([0-9]+)",
                    "replacement": "$1:$2",
                    "target_label": "__address__",
                },
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
            ],
        }],
    })
}

/// A running Prometheus; dropping it stops the process and removes its
/// files (its config, token and storage).
pub struct Prometheus {
    process: Option<ManagedProcess>,
    netns: Netns,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus against `cluster`'s API server as ServiceAccount
    /// `monitoring/prometheus` (created, with read access to pods), and
    /// waits until it serves queries.
    pub fn start(cluster: &KubeCluster) -> Result<Prometheus> {
        let binary = binary()?;
        let plane = cluster.control_plane();
        let netns = plane
            .toolchain()
            .netns()
            .ok_or_else(|| Error::Invalid("the control plane has no network namespace".into()))
            .and_then(Netns::open)?;
        let kubectl = plane.kubectl();
        kubectl.apply(RBAC)?;
        // Long enough for any test; the API server caps it at its maximum.
        let token = kubectl.run(&["create", "token", ACCOUNT, "-n", NAMESPACE, "--duration=2h"])?;

        // A free port in the namespace Prometheus listens in, not ours.
        let addr = netns
            .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()))?
            .map_err(|e| Error::Invalid(format!("no free port in {}: {e}", netns.name())))?;
        // Named by its port, so that two of them never share files.
        let dir = cluster.dir().join(format!("prometheus-{}", addr.port()));
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(Error::io(&data))?;
        let token_file = dir.join("token");
        super::write_private(&token_file, token.trim())?;
        let config_file = dir.join("prometheus.yml");
        let text = serde_json::to_string_pretty(&config(plane.server(), plane.ca(), &token_file))
            .map_err(|e| Error::decode("Prometheus's config", e))?;
        std::fs::write(&config_file, text).map_err(Error::io(&config_file))?;

        let mut cmd = netns.command(&binary);
        cmd.current_dir(&dir)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info");
        let process = ManagedProcess::spawn("prometheus", cmd, &dir.join("prometheus.log"))?;
        let mut prometheus = Prometheus {
            process: Some(process),
            netns,
            addr,
            dir,
        };
        let ready = |p: &Prometheus| p.get("/-/ready").is_ok_and(|r| r.status == 200);
        let started = Instant::now();
        while !ready(&prometheus) {
            let process = prometheus.process_mut()?;
            process.check_running()?;
            if started.elapsed() > READY_WITHIN {
                return Err(Error::NotReady {
                    what: format!("prometheus at {addr} (/-/ready)"),
                    waited: READY_WITHIN,
                    log_tail: process.log_tail(TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(prometheus)
    }

    fn process_mut(&mut self) -> Result<&mut ManagedProcess> {
        self.process
            .as_mut()
            .ok_or_else(|| Error::Invalid("prometheus is stopped".into()))
    }

    /// Where it listens, inside the control plane's namespace.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    fn get(&self, path: &str) -> Result<http::Response> {
        http::get(Some(&self.netns), self.addr, path)
    }

    /// GET `path` of its HTTP API, returning `data` of a `success` answer.
    fn api(&self, path: &str) -> Result<Value> {
        let answer = self.get(path)?.json()?;
        if answer["status"] != "success" {
            return Err(Error::Invalid(format!(
                "prometheus GET {path}: {} {}",
                answer["errorType"], answer["error"]
            )));
        }
        Ok(answer["data"].clone())
    }

    /// The instant vector `promql` evaluates to now (`/api/v1/query`): an
    /// array of `{"metric": {labels}, "value": [time, "value"]}`.
    pub fn query(&self, promql: &str) -> Result<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(promql)))?;
        if data["resultType"] != "vector" {
            return Err(Error::Invalid(format!(
                "`{promql}` is a {}, not an instant vector",
                data["resultType"]
            )));
        }
        Ok(data["result"].clone())
    }

    /// Polls `promql` until its vector is not empty, and returns it; after
    /// `limit`, fails with the last answer and every target's health.
    pub fn wait_for(&self, promql: &str, limit: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let last = match self.query(promql) {
                Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => return Ok(v),
                Ok(v) => format!("empty: {v}"),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= limit {
                return Err(Error::Invalid(format!(
                    "no series for `{promql}` after {limit:?} (last answer: {last})\n\
                     prometheus's targets:\n{}\nprometheus's last log lines:\n{}",
                    self.describe_targets(),
                    crate::process::log_tail(&self.log(), TAIL_LINES),
                )));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The targets it scrapes (`/api/v1/targets`, `activeTargets`): labels,
    /// `scrapeUrl`, `health` and `lastError` of each.
    pub fn targets(&self) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/targets?state=active")?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// One line per target: its pod, URL, health and last error; for
    /// failure messages.
    pub fn describe_targets(&self) -> String {
        match self.targets() {
            Ok(targets) if targets.is_empty() => "  (none discovered)".into(),
            Ok(targets) => targets
                .iter()
                .map(|t| {
                    let labels = &t["labels"];
                    format!(
                        "  {}/{} {} {} {}",
                        labels["namespace"].as_str().unwrap_or("?"),
                        labels["pod"].as_str().unwrap_or("?"),
                        t["scrapeUrl"].as_str().unwrap_or("?"),
                        t["health"].as_str().unwrap_or("?"),
                        t["lastError"].as_str().unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("  (cannot list targets: {e})"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(5));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("prometheus: removing {}: {e}", self.dir.display());
        }
    }
}

/// `text` as a URL query value: everything but RFC 3986's unreserved
/// characters percent-encoded (PromQL is full of `{"=~ }`).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_is_percent_encoded_whole() {
        assert_eq!(
            encode(r#"up{job="a b"} == 1"#),
            "up%7Bjob%3D%22a%20b%22%7D%20%3D%3D%201"
        );
    }

    #[test]
    fn the_config_keeps_annotated_pods_at_their_annotated_port_and_path() {
        let c = config(
            "https://10.10.0.2:6443",
            Path::new("/ca.pem"),
            Path::new("/token"),
        );
        let job = &c["scrape_configs"][0];
        assert_eq!(job["job_name"], JOB);
        let sd = &job["kubernetes_sd_configs"][0];
        assert_eq!(sd["role"], "pod");
        assert_eq!(sd["authorization"]["credentials_file"], "/token");
        let relabel = job["relabel_configs"].as_array().expect("relabelling");
        assert_eq!(relabel[0]["action"], "keep");
        assert_eq!(
            relabel[0]["source_labels"][0],
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape"
        );
        let targets: Vec<&str> = relabel
            .iter()
            .filter_map(|r| r["target_label"].as_str())
            .collect();
        assert_eq!(
            targets,
            [
                "__metrics_path__",
                "__address__",
                "namespace",
                "pod",
                "node"
            ]
        );
    }
}

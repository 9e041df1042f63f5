//! `weftctl check`: preflight and health, each failure with what to do.
//!
//! - the controller answers and is ready, and its registry read every object;
//! - on every node: the CNI plugin is installed (local runs: the node's CNI
//!   config lists `weft-cni` and the binary is there; Kubernetes: the node
//!   agent pod, which installs it, is ready), the node agent answers, ztunnel
//!   is ready and connected to the agent;
//! - coverage: every pod that should be in the mesh is redirected, its
//!   ztunnel listeners are up, and no pod outside the mesh is redirected (the
//!   node agent's report);
//! - datapath: which path each node's local legs take (the kernel bypass,
//!   or TCP and why);
//! - certificates: none expired, pending with an error, or expiring within
//!   `--cert-expiry-hours`.

use serde::Serialize;
use weft_api::admin::{CertState, CertsResponse, ConfigSync};

use crate::args::{CheckArgs, Format, GlobalArgs};
use crate::cluster::kube::{AGENT_APP, ZTUNNEL_APP};
use crate::cluster::{Cluster, NodeAdmin};
use crate::exit::{Outcome, Result};
use crate::format;
use crate::output::{self, Table};

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; does not fail the check.
    Warn,
    /// A problem.
    Fail,
}

/// One finding.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What was checked: `controller`, `cni`, `agent`, `ztunnel`,
    /// `coverage`, `datapath`, `certs`.
    pub check: String,
    /// Where: `cluster`, a node, or a pod.
    pub target: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (failures and warnings).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// No finding failed.
    pub ok: bool,
    /// Every finding.
    pub findings: Vec<Finding>,
}

/// What a check found so far.
pub(crate) struct Findings(pub(crate) Vec<Finding>);

impl Findings {
    /// The report: ok when no finding failed.
    pub(crate) fn into_report(self) -> Report {
        let ok = self.0.iter().all(|x| x.status != Status::Fail);
        Report {
            ok,
            findings: self.0,
        }
    }

    pub(crate) fn add(
        &mut self,
        check: &str,
        target: &str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            check: check.into(),
            target: target.into(),
            status,
            detail: detail.into(),
            fix: if status == Status::Ok {
                String::new()
            } else {
                fix.into()
            },
        });
    }
}

/// Runs the command.
pub async fn run(global: &GlobalArgs, args: &CheckArgs) -> Result<Outcome> {
    if args.pre {
        return super::preflight::run(global).await;
    }
    let cluster = Cluster::connect(global).await?;
    let f = findings(&cluster, args).await;
    report(global, f)
}

/// Every finding of `check` on `cluster`, unprinted (`bug-report` archives
/// them).
pub(crate) async fn findings(cluster: &Cluster, args: &CheckArgs) -> Findings {
    let mut f = Findings(Vec::new());
    controller(cluster, &mut f).await;
    let nodes = match cluster.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            f.add(
                "nodes",
                "cluster",
                Status::Fail,
                e.to_string(),
                "is weft installed on this cluster?",
            );
            Vec::new()
        }
    };
    if nodes.is_empty() {
        f.add(
            "nodes",
            "cluster",
            Status::Fail,
            "no node runs weft",
            "deploy the node agent and ztunnel DaemonSets (deploy/), or bring the local cluster up",
        );
    }
    proxies(cluster, &mut f).await;
    let ztunnels: Vec<NodeAdmin> = cluster.ztunnels(None).await.unwrap_or_default();
    let agents = cluster.agents().await.unwrap_or_default();
    let ztunnel_pods = cluster.system_pods(ZTUNNEL_APP).await.unwrap_or_default();
    let agent_pods = cluster.system_pods(AGENT_APP).await.unwrap_or_default();
    for node in &nodes {
        cni(cluster, node, &agent_pods, &mut f);
        match agents.iter().find(|a| &a.node == node) {
            None => f.add(
                "agent",
                node,
                Status::Fail,
                "no node agent",
                "start the node agent on this node (DaemonSet weft-node-agent)",
            ),
            Some(agent) => coverage(agent, cluster.timeout(), &mut f).await,
        }
        let pod_ready = ztunnel_pods
            .iter()
            .find(|p| &p.node == node)
            .map(|p| p.ready);
        match ztunnels.iter().find(|z| &z.node == node) {
            None => f.add(
                "ztunnel",
                node,
                Status::Fail,
                "no ztunnel",
                "start ztunnel on this node (DaemonSet ztunnel)",
            ),
            Some(z) => {
                ztunnel(z, pod_ready, &mut f).await;
                certs(z, args.cert_expiry_hours, &mut f).await;
            }
        }
    }
    f
}

/// Prints the findings as the format asks; exit 5 if any failed.
pub(crate) fn report(global: &GlobalArgs, f: Findings) -> Result<Outcome> {
    let report = f.into_report();
    let ok = report.ok;
    let text = match global.output {
        Format::Table | Format::Wide => text(&report, global.output == Format::Wide),
        other => output::render(other, &report, |_| Table::default())?,
    };
    output::print(&text);
    Ok(if ok { Outcome::Ok } else { Outcome::Problems })
}

/// Every proxy on its controller's current config: a refused version or
/// one stuck behind fails ([`ConfigSync::is_problem`], the rule
/// `weftctl proxy-status` shows).
async fn proxies(cluster: &Cluster, f: &mut Findings) {
    let Ok((reports, _)) = super::proxy_status::fetch(cluster).await else {
        // The controller finding already says why it cannot be read.
        return;
    };
    let mut synced = 0;
    for report in &reports {
        for p in &report.proxies {
            let target = if p.waypoint.is_empty() {
                format!("{} ({})", p.node, p.proxy_id)
            } else {
                format!("{} ({})", p.waypoint, p.proxy_id)
            };
            match p.sync {
                ConfigSync::Nacked => f.add(
                    "config",
                    &target,
                    Status::Fail,
                    format!(
                        "refused config version {} and runs {}: {}",
                        p.nacked_version.unwrap_or_default(),
                        p.acked_version,
                        p.nack.as_deref().unwrap_or("no reason given")
                    ),
                    "read the proxy's log for the object it refused; fix or delete that object",
                ),
                ConfigSync::Stale => f.add(
                    "config",
                    &target,
                    Status::Fail,
                    format!(
                        "behind: runs version {} of {} for {} s or more",
                        p.acked_version,
                        report.model_version,
                        weft_api::admin::STALE_AFTER_SECONDS
                    ),
                    "is the proxy overloaded or wedged? read its log; restarting it gets a full snapshot",
                ),
                ConfigSync::Synced | ConfigSync::Pending => synced += 1,
            }
        }
    }
    if synced > 0 {
        f.add(
            "config",
            "cluster",
            Status::Ok,
            format!("{synced} proxies on their controller's current config (or receiving it)"),
            "",
        );
    }
}

async fn controller(cluster: &Cluster, f: &mut Findings) {
    let endpoint = match cluster.controller().await {
        Ok(e) => e,
        Err(e) => {
            f.add(
                "controller",
                "cluster",
                Status::Fail,
                e.to_string(),
                "start the controller (weft-controller) and check its logs",
            );
            return;
        }
    };
    match endpoint.get_text("/healthz/ready").await {
        Ok((status, _)) if status.is_success() => {
            f.add("controller", "cluster", Status::Ok, "reachable and ready", "");
        }
        Ok((status, body)) => f.add(
            "controller",
            "cluster",
            Status::Fail,
            format!("not ready ({status}): {}", body.trim()),
            "the registry has not synced: check the controller's logs (API server access, CRDs installed)",
        ),
        Err(e) => {
            f.add("controller", "cluster", Status::Fail, e.to_string(), "start the controller (weft-controller) and check its logs");
            return;
        }
    }
    if let Ok(registry) = endpoint.get_json::<serde_json::Value>("/registry").await {
        let invalid = registry["invalid"].as_array().cloned().unwrap_or_default();
        for bad in invalid {
            let text = |k: &str| bad[k].as_str().unwrap_or_default().to_string();
            f.add(
                "registry",
                &text("file"),
                Status::Warn,
                format!(
                    "skipped {} ({}): {}",
                    text("object"),
                    text("field"),
                    text("message")
                ),
                "fix the manifest; the controller ignores it until then",
            );
        }
    }
}

fn cni(
    cluster: &Cluster,
    node: &str,
    agent_pods: &[crate::cluster::kube::SystemPod],
    f: &mut Findings,
) {
    if let Some(install) = cluster.cni_install(node) {
        let file = install
            .config_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "no CNI config".into());
        match (install.in_config, install.binary) {
            (true, true) => f.add("cni", node, Status::Ok, format!("weft-cni chained in {file}"), ""),
            (false, _) => f.add("cni", node, Status::Fail, format!("weft-cni is not in the active CNI config ({file})"), "the node agent installs it at start and keeps it there: is the agent running? (its log says why not)"),
            (true, false) => f.add("cni", node, Status::Fail, "the CNI config lists weft-cni but the binary is missing", "restart the node agent so it copies the plugin binary again"),
        }
        return;
    }
    match agent_pods.iter().find(|p| p.node == node) {
        Some(p) if p.ready => f.add(
            "cni",
            node,
            Status::Ok,
            format!("installed by node agent pod {} (ready)", p.name),
            "",
        ),
        Some(p) => f.add(
            "cni",
            node,
            Status::Fail,
            format!(
                "node agent pod {} is not ready: the plugin may not be installed",
                p.name
            ),
            "kubectl -n weft-system logs the agent pod",
        ),
        None => f.add(
            "cni",
            node,
            Status::Fail,
            "no node agent pod on this node: the plugin is not installed",
            "check the weft-node-agent DaemonSet's tolerations and node selector",
        ),
    }
}

async fn coverage(agent: &crate::cluster::Agent, timeout: std::time::Duration, f: &mut Findings) {
    let node = agent.node.as_str();
    let report = match agent.coverage(timeout).await {
        Ok(r) => r,
        Err(e) => {
            f.add(
                "agent",
                node,
                Status::Fail,
                e.to_string(),
                "start the node agent (weft-node-agent run) and check its log",
            );
            return;
        }
    };
    f.add(
        "agent",
        node,
        Status::Ok,
        format!("answers; {} pod(s) on the node", report.pods.len()),
        "",
    );
    local_legs(node, &report.local_legs, f);
    if report.ztunnels_connected == 0 {
        f.add(
            "ztunnel",
            node,
            Status::Fail,
            "no ztunnel is connected to the node agent's handoff socket",
            "start ztunnel with --handoff-socket pointing at the agent's socket",
        );
    }
    let mut covered = 0;
    for pod in &report.pods {
        if pod.problems.is_empty() {
            if pod.should_enroll {
                covered += 1;
            }
            continue;
        }
        f.add(
            "coverage",
            &format!("{}/{} on {node}", pod.namespace, pod.name),
            Status::Fail,
            pod.problems.join("; "),
            "the agent re-applies missing rules at its next resync; if it persists, read the node agent's log for this pod",
        );
    }
    f.add(
        "coverage",
        node,
        Status::Ok,
        format!("{covered} enrolled pod(s) redirected"),
        "",
    );
}

/// Which path the node's local legs take: the bypass asked for but refused
/// is worth a warning (the node works, on TCP); off is a choice.
fn local_legs(node: &str, legs: &weft_cni::report::LocalLegs, f: &mut Findings) {
    use weft_cni::report::LocalPath;
    let reason = legs.reason.as_deref().unwrap_or("");
    match (legs.path, legs.requested) {
        (LocalPath::Sockmap, _) => f.add(
            "datapath",
            node,
            Status::Ok,
            format!(
                "local legs: sockmap ({} leg(s) paired, {} moved socket to socket)",
                legs.counters.paired_legs,
                format::bytes(legs.counters.bypassed_bytes)
            ),
            "",
        ),
        (LocalPath::Tcp, true) => f.add(
            "datapath",
            node,
            Status::Warn,
            format!("local legs: tcp, the bypass was refused: {reason}"),
            "the node works on TCP; to get the bypass, fix the cause above (kernel with BPF sockmap and cgroup v2, the agent built with clang) and restart the node agent",
        ),
        (LocalPath::Tcp, false) => f.add(
            "datapath",
            node,
            Status::Ok,
            format!("local legs: tcp ({reason})"),
            "",
        ),
    }
}

async fn ztunnel(z: &NodeAdmin, pod_ready: Option<bool>, f: &mut Findings) {
    if pod_ready == Some(false) {
        f.add(
            "ztunnel",
            &z.node,
            Status::Fail,
            "the ztunnel pod is not ready",
            "kubectl -n weft-system describe the ztunnel pod",
        );
    }
    match z.admin.get_text("/healthz/ready").await {
        Ok((status, _)) if status.is_success() => f.add("ztunnel", &z.node, Status::Ok, "ready", ""),
        Ok((status, body)) => f.add("ztunnel", &z.node, Status::Fail, format!("not ready ({status}): {}", body.trim()), "ztunnel is ready once it has config from the controller and its pods from the node agent: check both, and its log"),
        Err(e) => f.add("ztunnel", &z.node, Status::Fail, e.to_string(), "start ztunnel on this node and check its log"),
    }
}

async fn certs(z: &NodeAdmin, expiry_hours: f64, f: &mut Findings) {
    let response = match z.admin.get_json::<CertsResponse>("/certs").await {
        Ok(r) => r,
        Err(e) => {
            f.add(
                "certs",
                &z.node,
                Status::Fail,
                e.to_string(),
                "check ztunnel's admin API",
            );
            return;
        }
    };
    let findings = cert_findings(&response, expiry_hours, format::now());
    let problems = findings.iter().filter(|x| x.status != Status::Ok).count();
    f.0.extend(findings);
    if problems == 0 {
        f.add(
            "certs",
            &z.node,
            Status::Ok,
            format!("{} certificate(s) valid", response.certificates.len()),
            "",
        );
    }
}

/// The problems among one ztunnel's certificates (only problems; pure, for
/// tests).
pub fn cert_findings(
    r: &CertsResponse,
    expiry_hours: f64,
    now: time::OffsetDateTime,
) -> Vec<Finding> {
    let mut f = Findings(Vec::new());
    let threshold = (expiry_hours * 3600.0) as i64;
    for c in &r.certificates {
        let target = format!("{} on {}", c.identity, r.node);
        let left = c
            .not_after
            .as_deref()
            .and_then(|t| format::seconds_until(t, now));
        match c.state {
            CertState::Expired => f.add("certs", &target, Status::Fail, "expired", "ztunnel could not renew it: is the controller (the CA) reachable? see ztunnel's log"),
            CertState::Pending => {
                let status = if c.last_error.is_some() { Status::Fail } else { Status::Warn };
                f.add("certs", &target, status, format!("not issued yet{}", c.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()), "the CA signs an identity only for pods of that service account on this node; check the controller's log");
            }
            CertState::Valid => match left {
                Some(s) if s < threshold => f.add("certs", &target, Status::Fail, format!("expires {}", format::relative(s)), "ztunnel renews at half-life: if it has not, the CA is unreachable or refusing; see ztunnel's log"),
                _ => {
                    let overdue = c.renew_at.as_deref().and_then(|t| format::seconds_until(t, now)).is_some_and(|s| s < -300);
                    if overdue {
                        f.add("certs", &target, Status::Warn, "rotation is overdue", "see ztunnel's log for CA errors");
                    }
                }
            },
        }
    }
    f.0
}

fn text(report: &Report, wide: bool) -> String {
    let mut t = Table::new(["CHECK", "TARGET", "STATUS", "DETAIL"]);
    for x in &report.findings {
        if !wide && x.status == Status::Ok && x.check == "coverage" && x.target.contains('/') {
            continue;
        }
        let status = match x.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        t.row([
            x.check.clone(),
            x.target.clone(),
            status.to_string(),
            x.detail.clone(),
        ]);
    }
    let mut out = t.render();
    let fixes: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|x| !x.fix.is_empty())
        .collect();
    if !fixes.is_empty() {
        out.push_str("\nWHAT TO DO\n");
        for x in fixes {
            out.push_str(&format!("  - {} {}: {}\n", x.check, x.target, x.fix));
        }
    }
    out.push_str(if report.ok {
        "\nall checks passed\n"
    } else {
        "\nproblems found\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::admin::CertInfo;

    fn cert(state: CertState, not_after: &str, error: Option<&str>) -> CertInfo {
        CertInfo {
            identity: "spiffe://cluster.local/ns/a/sa/b".into(),
            state,
            serial: Some("01".into()),
            not_before: None,
            not_after: Some(not_after.into()),
            renew_at: None,
            chain_pem: Vec::new(),
            last_error: error.map(str::to_owned),
        }
    }

    #[test]
    fn local_legs_say_the_path_and_warn_only_when_the_bypass_was_refused() {
        use weft_cni::report::{BypassCounters, LocalLegs, LocalPath};
        let mut f = Findings(Vec::new());
        let running = LocalLegs {
            path: LocalPath::Sockmap,
            reason: None,
            requested: true,
            counters: BypassCounters {
                bypassed_bytes: 3 << 20,
                paired_legs: 7,
                ..Default::default()
            },
        };
        local_legs("n1", &running, &mut f);
        let refused = LocalLegs {
            path: LocalPath::Tcp,
            reason: Some("the kernel refused the bypass at loading the object: EPERM".into()),
            requested: true,
            counters: BypassCounters::default(),
        };
        local_legs("n2", &refused, &mut f);
        local_legs("n3", &LocalLegs::default(), &mut f);
        let found: Vec<_> = f.0.iter().map(|x| (x.target.as_str(), x.status)).collect();
        assert_eq!(
            found,
            [("n1", Status::Ok), ("n2", Status::Warn), ("n3", Status::Ok)]
        );
        assert!(
            f.0[0].detail.contains("sockmap (7 leg(s) paired, 3.0MiB"),
            "{}",
            f.0[0].detail
        );
        assert!(f.0[1].detail.contains("EPERM") && !f.0[1].fix.is_empty());
        assert!(f.0[2].detail.starts_with("local legs: tcp"));
        assert!(f.into_report().ok);
    }

    #[test]
    fn certificate_problems() {
        let now = time::OffsetDateTime::UNIX_EPOCH + std::time::Duration::from_secs(86400);
        let r = CertsResponse {
            node: "n".into(),
            certificates: vec![
                cert(CertState::Valid, "1970-01-03T00:00:00Z", None),
                cert(CertState::Valid, "1970-01-02T01:00:00Z", None),
                cert(CertState::Expired, "1970-01-01T00:00:00Z", None),
                cert(
                    CertState::Pending,
                    "1970-01-03T00:00:00Z",
                    Some("CA refused"),
                ),
            ],
        };
        let found = cert_findings(&r, 2.0, now);
        let statuses: Vec<(Status, &str)> = found
            .iter()
            .map(|x| (x.status, x.detail.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                (Status::Fail, "expires in 1h0m"),
                (Status::Fail, "expired"),
                (Status::Fail, "not issued yet: CA refused"),
            ]
        );
    }
}

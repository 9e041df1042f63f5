//! `weftctl bug-report`: everything a maintainer asks for first, from every
//! component weftctl can reach, in one `.tar.gz`, with secrets removed.
//!
//! Inside `weft-bug-report-<UTC time>/`:
//!
//! ```text
//! manifest.json                        every other file and its size; the run's options
//! errors.json                          what could not be collected, and why
//! versions.json                        weftctl, the API server, each pod's images, config versions
//! check.json                           `weftctl check -o json`'s report
//! controller/<replica>/                ready.txt model.json proxy-status.json subscribers.json registry.json
//! ztunnel/<node>/                      ready.txt config_dump.json workloads.json services.json
//!                                      policies.json certs.json connections.json logging.json
//! waypoint/<ns>/<gateway>[/<pod>]/     the same, and routes.json
//! node-agent/<node>/coverage.json      the node agent's coverage report
//! logs/…                               Kubernetes: logs/<ns>/<pod>/<container>[.previous].log;
//!                                      local runs: the run directory's component logs
//! run/state.json                       local runs: the run's state file
//! ```
//!
//! Every file goes through [`redact::Redactor::file`] before it is written
//! ([`seal`] is the only way to make what `write_archive` takes). A
//! component that cannot be reached is an entry of `errors.json`, the rest
//! is still collected, and the exit code is 7 (partial).

pub mod redact;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use weft_cluster::model::labels;

use self::redact::Redactor;
use crate::admin::{AdminEndpoint, Dialer};
use crate::args::{BugReportArgs, CheckArgs, DEFAULT_CERT_EXPIRY_HOURS, Format, GlobalArgs};
use crate::cluster::kube::{KubeCluster, kube_error};
use crate::cluster::{Agent, Cluster, NodeAdmin};
use crate::exit::{CliError, Outcome, Result};
use crate::{format, output};

/// The read-only endpoints of each admin API (docs/design.md §9; the
/// controller's debug API). `/healthz/ready` is asked first, as the probe.
pub const ZTUNNEL_PATHS: &[&str] = &[
    "/config_dump",
    "/workloads",
    "/services",
    "/policies",
    "/certs",
    "/connections",
    "/logging",
];
pub const WAYPOINT_PATHS: &[&str] = &[
    "/config_dump",
    "/workloads",
    "/services",
    "/policies",
    "/routes",
    "/certs",
    "/connections",
    "/logging",
];
pub const CONTROLLER_PATHS: &[&str] = &["/model", "/proxy-status", "/subscribers", "/registry"];

/// The newest bytes kept of one log.
const MAX_LOG_BYTES: u64 = 16 << 20;
/// Log requests in flight at once: a large cluster has a ztunnel and an
/// agent per node, and the API server serves other clients too.
const LOG_CONCURRENCY: usize = 8;
/// A secret file larger than this is no token or key of the run.
const MAX_SECRET_FILE: u64 = 64 << 10;

/// What `manifest.json` says of redaction (itself redacted like the rest:
/// a test keeps it intact).
const REDACTION_NOTE: &str = "private keys, JWTs, Authorization/Bearer values, secret-named fields and the run's known secrets are replaced by <redacted> (docs/weftctl.md, bug-report)";

/// Local runs: where the e2e harness keeps the CA and the bootstrap tokens
/// (e2e/src/components/controller.rs), relative to the run directory.
const LOCAL_CA_DIR: &str = "controller/ca";
const LOCAL_TOKENS_DIR: &str = "controller/tokens";

/// Something that could not be collected.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Missing {
    /// The component (`ztunnel on node-2 (unix:…)`, `pod weft-system/x`),
    /// or what could not be listed (`ztunnels`).
    pub component: String,
    /// What of it, when the component answered but this did not:
    /// `/certs`, `log of container ztunnel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// Why.
    pub error: String,
}

impl Missing {
    fn redacted(&self, redactor: &Redactor) -> Missing {
        Missing {
            component: redactor.text(&self.component),
            item: self.item.as_deref().map(|i| redactor.text(i)),
            error: redactor.text(&self.error),
        }
    }
}

/// What was collected from one component (or the cluster), unredacted.
#[derive(Default)]
struct Part {
    files: Vec<(String, Vec<u8>)>,
    missing: Vec<Missing>,
}

impl Part {
    fn file(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.files.push((path.into(), bytes.into()));
    }

    fn miss(&mut self, component: impl Into<String>, item: Option<&str>, error: impl ToString) {
        self.missing.push(Missing {
            component: component.into(),
            item: item.map(str::to_owned),
            error: error.to_string(),
        });
    }

    fn extend(&mut self, other: Part) {
        self.files.extend(other.files);
        self.missing.extend(other.missing);
    }

    /// Says on stderr what came of one component.
    fn progress(self, label: &str, redactor: &Redactor) -> Part {
        if !self.files.is_empty() {
            eprintln!("{label}: {} file(s)", self.files.len());
        }
        for m in &self.missing {
            eprintln!("weftctl: warning: {}", describe(&m.redacted(redactor)));
        }
        self
    }
}

fn describe(m: &Missing) -> String {
    match &m.item {
        Some(item) => format!("{}: {item}: {}", m.component, m.error),
        None => m.error.clone(),
    }
}

/// Files that went through the redactor: the only input `write_archive`
/// takes.
pub struct Sealed(Vec<(String, Vec<u8>)>);

/// Redacts every file ([`Redactor::file`]); the one place it happens.
pub fn seal(redactor: &Redactor, files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Sealed {
    Sealed(
        files
            .into_iter()
            .map(|(path, bytes)| {
                let clean = redactor.file(&path, &bytes);
                (path, clean)
            })
            .collect(),
    )
}

impl Sealed {
    fn append(&mut self, other: Sealed) {
        self.0.extend(other.0);
    }
}

/// `-o json`: what was written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The archive.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// The files in it, under its top directory.
    pub files: Vec<String>,
    /// What could not be collected.
    pub errors: Vec<Missing>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    weftctl: &'static str,
    created: String,
    mode: &'static str,
    log_since_seconds: u64,
    log_tail_lines: u64,
    redaction: &'static str,
    files: Vec<ManifestFile<'a>>,
    errors: usize,
}

#[derive(Serialize)]
struct ManifestFile<'a> {
    path: &'a str,
    bytes: usize,
}

/// Parses `--since`: `90s`, `30m`, `1h`, `2h30m`, `1d`, or bare seconds.
pub fn parse_since(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return positive(seconds);
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h, d)")),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a unit without a number"))?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?}: too long"))?;
    }
    if !number.is_empty() {
        return Err(format!("{text:?}: a number without a unit at the end"));
    }
    positive(total)
}

fn positive(seconds: u64) -> std::result::Result<Duration, String> {
    if seconds == 0 {
        return Err("must be at least one second".into());
    }
    Ok(Duration::from_secs(seconds))
}

/// `20261204T213544Z`: sorts, and has no character a file system minds.
fn stamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A name as one path segment of the archive: node and pod names come from
/// files and the API server, and must not climb out of their directory.
fn segment(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match clean.as_str() {
        "" | "." | ".." => "_".into(),
        _ => clean,
    }
}

/// `dir`, or `dir-2`, `dir-3`… when taken (two ztunnels on a node during a
/// surge rollout).
fn unique(used: &mut HashSet<String>, dir: String) -> String {
    let mut candidate = dir.clone();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{dir}-{n}");
        n += 1;
    }
    candidate
}

/// Runs the command.
pub async fn run(global: &GlobalArgs, args: &BugReportArgs) -> Result<Outcome> {
    let started = format::now();
    let top = format!("weft-bug-report-{}", stamp(started));
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{top}.tar.gz")));
    let cluster = Cluster::connect(global).await?;
    let redactor = known_secrets(cluster.run_dir());
    let mode = if cluster.is_local() {
        "local"
    } else {
        "kubernetes"
    };
    eprintln!(
        "collecting a bug report ({mode} cluster) into {}",
        path.display()
    );

    let (controllers, ztunnels, waypoints, agents, check, env) = tokio::join!(
        controllers(&cluster, &redactor),
        ztunnels(&cluster, &redactor),
        waypoints(&cluster, &redactor),
        agents(&cluster, &redactor),
        check(&cluster),
        environment(&cluster, args, started, &redactor),
    );
    let (env, kube_versions) = env;
    let mut all = Part::default();
    for part in [controllers, ztunnels, waypoints, agents, check, env] {
        all.extend(part);
    }
    let versions = versions(&all.files, kube_versions);
    all.file("versions.json", json_bytes(&versions));
    // Redacted here too: the summary prints them on stdout.
    let errors: Vec<Missing> = all.missing.iter().map(|m| m.redacted(&redactor)).collect();
    all.file("errors.json", json_bytes(&errors));

    let mut sealed = seal(&redactor, all.files);
    sealed.0.sort_by(|a, b| a.0.cmp(&b.0));
    let manifest = Manifest {
        weftctl: env!("CARGO_PKG_VERSION"),
        created: started.format(&Rfc3339).unwrap_or_default(),
        mode,
        log_since_seconds: args.since.as_secs(),
        log_tail_lines: args.tail,
        redaction: REDACTION_NOTE,
        files: sealed
            .0
            .iter()
            .map(|(path, bytes)| ManifestFile {
                path,
                bytes: bytes.len(),
            })
            .collect(),
        errors: errors.len(),
    };
    let manifest = seal(
        &redactor,
        [("manifest.json".to_string(), json_bytes(&manifest))],
    );
    let mut archive = manifest;
    archive.append(sealed);
    let files: Vec<String> = archive.0.iter().map(|(p, _)| p.clone()).collect();

    let mtime = started.unix_timestamp().max(0) as u64;
    let bytes = write_archive(&path, &top, &archive, mtime)
        .map_err(|e| CliError::other(format!("cannot write {}: {e}", path.display())))?;
    let summary = Summary {
        path: path.display().to_string(),
        bytes,
        files,
        errors,
    };
    let text = match global.output {
        Format::Table | Format::Wide => {
            let mut line = format!(
                "wrote {} ({}): {} files",
                summary.path,
                format::bytes(bytes),
                summary.files.len()
            );
            if !summary.errors.is_empty() {
                line.push_str(&format!(
                    "; {} thing(s) could not be collected (errors.json)",
                    summary.errors.len()
                ));
            }
            line + "\n"
        }
        other => output::render(other, &summary, |_| output::Table::default())?,
    };
    output::print(&text);
    Ok(if summary.errors.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Partial
    })
}

fn json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut text =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text.into_bytes()
}

/// `/config_dump` → `config_dump.json`.
fn file_name(path: &str) -> String {
    format!("{}.json", path.trim_start_matches('/').replace('/', "_"))
}

/// One admin API, and its label: its readiness (which also says whether it
/// is reachable at all: an unreachable one is one error, not one per
/// endpoint), then every path at once.
async fn admin(dir: &str, endpoint: &AdminEndpoint, paths: &[&str]) -> (String, Part) {
    let mut part = Part::default();
    match endpoint.get_text("/healthz/ready").await {
        Ok((status, body)) => part.file(format!("{dir}/ready.txt"), format!("{status}\n{body}")),
        Err(e) => {
            part.miss(endpoint.label.clone(), None, e);
            return (endpoint.label.clone(), part);
        }
    }
    let answers = futures::future::join_all(paths.iter().map(|p| endpoint.get_text(p))).await;
    for (p, answer) in paths.iter().zip(answers) {
        match answer {
            Ok((StatusCode::OK, body)) => part.file(format!("{dir}/{}", file_name(p)), body),
            Ok((status, body)) => part.miss(
                endpoint.label.clone(),
                Some(p),
                format!("answered {status}: {}", body.trim()),
            ),
            Err(e) => part.miss(endpoint.label.clone(), Some(p), e),
        }
    }
    (endpoint.label.clone(), part)
}

/// The pod a port-forward reaches, if that is how the endpoint is reached.
fn pod_of(endpoint: &AdminEndpoint) -> Option<&str> {
    match &endpoint.dialer {
        Dialer::PortForward { pod, .. } => Some(pod),
        _ => None,
    }
}

/// Collects from every component a listing found, all at once, each into
/// its own directory; a listing that failed is one error.
async fn each<T, Fut>(
    what: &str,
    listed: Result<Vec<T>>,
    redactor: &Redactor,
    dir: impl Fn(&T) -> String,
    collect: impl Fn(T, String) -> Fut,
) -> Part
where
    Fut: Future<Output = (String, Part)>,
{
    let mut all = Part::default();
    let items = match listed {
        Ok(items) => items,
        Err(e) => {
            all.miss(what, None, e);
            return all.progress(what, redactor);
        }
    };
    let mut used = HashSet::new();
    let jobs: Vec<Fut> = items
        .into_iter()
        .map(|item| {
            let d = unique(&mut used, dir(&item));
            collect(item, d)
        })
        .collect();
    for (label, part) in futures::future::join_all(jobs).await {
        all.extend(part.progress(&label, redactor));
    }
    all
}

async fn controllers(cluster: &Cluster, redactor: &Redactor) -> Part {
    let dir = |e: &AdminEndpoint| match pod_of(e) {
        Some(pod) => format!("controller/{}", segment(pod)),
        None => "controller/local".to_string(),
    };
    let collect =
        |e: AdminEndpoint, dir: String| async move { admin(&dir, &e, CONTROLLER_PATHS).await };
    let listed = cluster.controllers().await;
    each("the controller", listed, redactor, dir, collect).await
}

async fn ztunnels(cluster: &Cluster, redactor: &Redactor) -> Part {
    let dir = |n: &NodeAdmin| format!("ztunnel/{}", segment(&n.node));
    let collect =
        |n: NodeAdmin, dir: String| async move { admin(&dir, &n.admin, ZTUNNEL_PATHS).await };
    let listed = cluster.ztunnels(None).await;
    each("ztunnels", listed, redactor, dir, collect).await
}

async fn waypoints(cluster: &Cluster, redactor: &Redactor) -> Part {
    let dir = |(key, endpoint): &(String, AdminEndpoint)| {
        let mut dir = String::from("waypoint");
        for name in key.split('/').chain(pod_of(endpoint)) {
            dir.push('/');
            dir.push_str(&segment(name));
        }
        dir
    };
    let collect = |(_, e): (String, AdminEndpoint), dir: String| async move {
        admin(&dir, &e, WAYPOINT_PATHS).await
    };
    let listed = cluster.waypoints().await;
    each("waypoints", listed, redactor, dir, collect).await
}

async fn agents(cluster: &Cluster, redactor: &Redactor) -> Part {
    let timeout = cluster.timeout();
    let dir = |a: &Agent| format!("node-agent/{}", segment(&a.node));
    let collect = |agent: Agent, dir: String| async move {
        let mut part = Part::default();
        match agent.coverage(timeout).await {
            Ok(report) => part.file(format!("{dir}/coverage.json"), json_bytes(&report)),
            Err(e) => part.miss(agent.describe(), None, e),
        }
        (format!("node agent on {}", agent.node), part)
    };
    let listed = cluster.agents().await;
    each("node agents", listed, redactor, dir, collect).await
}

/// `weftctl check`'s own findings, from the same code (no second process).
async fn check(cluster: &Cluster) -> Part {
    let args = CheckArgs {
        cert_expiry_hours: DEFAULT_CERT_EXPIRY_HOURS,
        pre: false,
    };
    let report = super::check::findings(cluster, &args).await.into_report();
    eprintln!(
        "check: {} finding(s), {}",
        report.findings.len(),
        if report.ok {
            "no problem"
        } else {
            "problems found"
        }
    );
    let mut part = Part::default();
    part.file("check.json", json_bytes(&report));
    part
}

/// What the Kubernetes API server says about the cluster and weft's pods.
#[derive(Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct KubeVersions {
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<Value>,
    pods: Vec<PodVersion>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodVersion {
    namespace: String,
    name: String,
    node: String,
    phase: String,
    containers: Vec<ContainerVersion>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerVersion {
    name: String,
    image: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    image_id: String,
    ready: bool,
    restarts: i32,
}

/// Logs and what runs: through the API server on Kubernetes, from the run
/// directory locally.
async fn environment(
    cluster: &Cluster,
    args: &BugReportArgs,
    now: OffsetDateTime,
    redactor: &Redactor,
) -> (Part, Option<KubeVersions>) {
    if let Some(k) = cluster.kube() {
        let (part, versions) = kube_environment(k, args, cluster.timeout()).await;
        return (part.progress("logs", redactor), Some(versions));
    }
    let mut part = Part::default();
    match cluster.run_dir() {
        Some(dir) => {
            if let Ok(state) = std::fs::read(dir.join(crate::cluster::local::STATE_FILE)) {
                part.file("run/state.json", state);
            }
            part.extend(local_logs(dir, now - args.since, args.tail));
        }
        None => part.file(
            "logs/NOTE.txt",
            "no run directory (only --manifests): no logs to collect\n",
        ),
    }
    (part.progress("logs", redactor), None)
}

async fn kube_environment(
    k: &KubeCluster,
    args: &BugReportArgs,
    timeout: Duration,
) -> (Part, KubeVersions) {
    let mut part = Part::default();
    let mut versions = KubeVersions::default();
    match k.client.apiserver_version().await {
        Ok(info) => versions.kubernetes = serde_json::to_value(info).ok(),
        Err(e) => part.miss(
            "the Kubernetes API server",
            Some("version"),
            kube_error("reading the version", e),
        ),
    }
    let mut pods: Vec<Pod> = Vec::new();
    match k.system_pods_api().list(&ListParams::default()).await {
        Ok(list) => pods.extend(list.items),
        Err(e) => part.miss(
            format!("pods in {}", k.system_namespace),
            None,
            kube_error("listing pods", e),
        ),
    }
    // weft's waypoints only, by the class label the deployer sets: another
    // implementation's Gateway pods (and their logs) are not weft's to take.
    let waypoint_pods: Api<Pod> = Api::all(k.client.clone());
    let selector = ListParams::default().labels(&format!(
        "{}={}",
        labels::GATEWAY_CLASS_NAME,
        labels::WAYPOINT_CLASS
    ));
    match waypoint_pods.list(&selector).await {
        Ok(list) => {
            for pod in list.items {
                let known = pods
                    .iter()
                    .any(|p| p.namespace() == pod.namespace() && p.name_any() == pod.name_any());
                if !known {
                    pods.push(pod);
                }
            }
        }
        Err(e) => part.miss("waypoint pods", None, kube_error("listing pods", e)),
    }

    let mut jobs = Vec::new();
    for pod in &pods {
        let version = pod_version(pod);
        for c in &version.containers {
            jobs.push((
                version.namespace.clone(),
                version.name.clone(),
                c.name.clone(),
                false,
            ));
            if c.restarts > 0 {
                jobs.push((
                    version.namespace.clone(),
                    version.name.clone(),
                    c.name.clone(),
                    true,
                ));
            }
        }
        versions.pods.push(version);
    }
    let since = args.since.as_secs().max(1) as i64;
    let tail = i64::try_from(args.tail).unwrap_or(i64::MAX);
    // Logs are larger than admin documents: more than one component's timeout.
    let wait = timeout * 4;
    let logs = futures::stream::iter(jobs)
        .map(|(ns, pod, container, previous)| {
            let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
            async move {
                let params = LogParams {
                    container: Some(container.clone()),
                    since_seconds: Some(since),
                    tail_lines: Some(tail),
                    timestamps: true,
                    limit_bytes: Some(MAX_LOG_BYTES as i64),
                    previous,
                    ..LogParams::default()
                };
                let answer = tokio::time::timeout(wait, api.logs(&pod, &params)).await;
                (ns, pod, container, previous, answer)
            }
        })
        .buffer_unordered(LOG_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for (ns, pod, container, previous, answer) in logs {
        let suffix = if previous { ".previous" } else { "" };
        let path = format!(
            "logs/{}/{}/{}{suffix}.log",
            segment(&ns),
            segment(&pod),
            segment(&container)
        );
        let item = format!(
            "log of container {container}{}",
            if previous { " (previous)" } else { "" }
        );
        match answer {
            Ok(Ok(text)) => part.file(path, text),
            Ok(Err(e)) => part.miss(
                format!("pod {ns}/{pod}"),
                Some(&item),
                kube_error("reading the log", e),
            ),
            Err(_) => part.miss(
                format!("pod {ns}/{pod}"),
                Some(&item),
                format!("not read within {wait:?}"),
            ),
        }
    }
    (part, versions)
}

fn pod_version(pod: &Pod) -> PodVersion {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let statuses: Vec<_> = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .collect();
    let containers = spec
        .into_iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .map(|c| {
            let st = statuses.iter().find(|s| s.name == c.name);
            ContainerVersion {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: st.map(|s| s.image_id.clone()).unwrap_or_default(),
                ready: st.is_some_and(|s| s.ready),
                restarts: st.map_or(0, |s| s.restart_count),
            }
        })
        .collect();
    PodVersion {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        containers,
    }
}

/// `versions.json`: weftctl's, the cluster's, and the config version each
/// proxy and controller reports (the admin APIs report no build version).
fn versions(files: &[(String, Vec<u8>)], kube: Option<KubeVersions>) -> Value {
    let mut config = BTreeMap::new();
    for (path, bytes) in files {
        let Some(dir) = path
            .strip_suffix("/config_dump.json")
            .or_else(|| path.strip_suffix("/proxy-status.json"))
        else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<Value>(bytes) else {
            continue;
        };
        let version = doc.get("version").or_else(|| doc.get("modelVersion"));
        if let Some(v) = version {
            config.insert(dir.to_string(), v.clone());
        }
    }
    let mut out = serde_json::json!({
        "weftctl": env!("CARGO_PKG_VERSION"),
        "configVersions": config,
    });
    if let Some(k) = kube
        && let Ok(v) = serde_json::to_value(k)
        && let (Some(out), Value::Object(k)) = (out.as_object_mut(), v)
    {
        out.extend(k);
    }
    out
}

/// The component logs of a local run: `*.log` in the run directory, its
/// `controller/`, `waypoints/` and each `nodes/<node>/` (not `pods/`: those
/// are the applications' own).
fn local_logs(run: &Path, cutoff: OffsetDateTime, tail: u64) -> Part {
    let mut part = Part::default();
    let mut dirs = vec![
        run.to_path_buf(),
        run.join("controller"),
        run.join("waypoints"),
    ];
    dirs.extend(
        sorted_entries(&run.join("nodes"))
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())),
    );
    for dir in dirs {
        for path in sorted_entries(&dir) {
            let is_log = path.extension().is_some_and(|e| e == "log")
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file());
            if !is_log {
                continue;
            }
            let Ok(relative) = path.strip_prefix(run) else {
                continue;
            };
            let name: Vec<String> = relative
                .iter()
                .map(|s| segment(&s.to_string_lossy()))
                .collect();
            match read_tail(&path, MAX_LOG_BYTES) {
                Ok(text) => part.file(
                    format!("logs/{}", name.join("/")),
                    recent(&text, cutoff, tail),
                ),
                Err(e) => part.miss(format!("log {}", path.display()), None, e),
            }
        }
    }
    if part.files.is_empty() {
        part.file(
            "logs/NOTE.txt",
            format!("no component log (*.log) in {}\n", run.display()),
        );
    }
    part
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// The last `max` bytes of a file, from a line start.
fn read_tail(path: &Path, max: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let cut = len > max;
    if cut {
        file.seek(SeekFrom::Start(len - max))?;
    }
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(match (cut, text.split_once('\n')) {
        (true, Some((_, rest))) => rest.to_string(),
        _ => text,
    })
}

/// The lines of a log written since `cutoff`, at most the last `tail`. A
/// line's time is its leading RFC 3339 timestamp (weft's text logs) or its
/// `timestamp` field (JSON logs); a line without one (a continuation)
/// goes with the line before it.
fn recent(text: &str, cutoff: OffsetDateTime, tail: u64) -> String {
    let mut keep = true;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            if let Some(t) = line_time(line) {
                keep = t >= cutoff;
            }
            keep
        })
        .collect();
    let tail = usize::try_from(tail).unwrap_or(usize::MAX);
    let start = kept.len().saturating_sub(tail);
    let mut out = kept[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

fn line_time(line: &str) -> Option<OffsetDateTime> {
    let line = line.trim_start();
    let candidate = if line.starts_with('{') {
        const FIELD: &str = "\"timestamp\":\"";
        let rest = &line[line.find(FIELD)? + FIELD.len()..];
        &rest[..rest.find('"')?]
    } else {
        line.split_whitespace().next()?
    };
    OffsetDateTime::parse(candidate, &Rfc3339).ok()
}

/// The redactor, with the local run's own secrets as exact values: its
/// CA's private key and the bootstrap tokens the harness wrote. The
/// patterns would find a PEM key or a `token=` field anyway; these catch
/// the same secrets in any other form (a bare token in a message, a key's
/// base64 without its PEM lines). Kubernetes secrets are never read.
fn known_secrets(run: Option<&Path>) -> Redactor {
    let mut redactor = Redactor::new();
    let Some(run) = run else {
        return redactor;
    };
    let keys = sorted_entries(&run.join(LOCAL_CA_DIR))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("key"))
        });
    let mut files: Vec<PathBuf> = keys.collect();
    collect_files(&run.join(LOCAL_TOKENS_DIR), 4, &mut files);
    for path in files {
        let small = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_SECRET_FILE);
        let Some(text) = small.then(|| std::fs::read_to_string(&path).ok()).flatten() else {
            continue;
        };
        redactor = redactor.with_literal(&text);
        for body in pem_key_bodies(&text) {
            redactor = redactor.with_literal(&body.concat());
            for line in body {
                redactor = redactor.with_literal(line);
            }
        }
    }
    redactor
}

fn collect_files(dir: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    for path in sorted_entries(dir) {
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => out.push(path),
            Ok(m) if m.is_dir() && depth > 0 => collect_files(&path, depth - 1, out),
            _ => {}
        }
    }
}

/// The base64 lines of each PEM private key in `text`.
fn pem_key_bodies(text: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") && line.ends_with("PRIVATE KEY-----") {
            current = Some(Vec::new());
        } else if line.starts_with("-----END") {
            out.extend(current.take());
        } else if let Some(body) = current.as_mut()
            && !line.contains(':')
            && !line.is_empty()
        {
            body.push(line);
        }
    }
    out
}

/// Writes the archive: a temporary file beside `path` (owner-only: even
/// redacted, a bug report describes the cluster), renamed over it when
/// complete, so a failed run leaves no half archive. Returns its size.
fn write_archive(path: &Path, top: &str, files: &Sealed, mtime: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weft-bug-report.tar.gz".into());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = (|| {
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in &files.0 {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            tar.append_data(&mut header, format!("{top}/{name}"), bytes.as_slice())?;
        }
        let file = tar.into_inner()?.finish()?;
        file.sync_all()
    })();
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(std::fs::metadata(path)?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since() {
        assert_eq!(parse_since("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_since("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_since("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_since("0").is_err());
        assert!(parse_since("1x").is_err());
        assert!(parse_since("h").is_err());
        assert!(parse_since("1h3").is_err());
        assert!(parse_since("").is_err());
    }

    #[test]
    fn names_stay_in_their_directory() {
        assert_eq!(segment("node-1"), "node-1");
        assert_eq!(segment("../etc"), ".._etc");
        assert_eq!(segment(".."), "_");
        assert_eq!(segment("a/b"), "a_b");
        let mut used = HashSet::new();
        assert_eq!(unique(&mut used, "z/n".into()), "z/n");
        assert_eq!(unique(&mut used, "z/n".into()), "z/n-2");
        assert_eq!(stamp(OffsetDateTime::UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(file_name("/config_dump"), "config_dump.json");
        assert_eq!(file_name("/proxy-status"), "proxy-status.json");
    }

    #[test]
    fn recent_lines() {
        let cutoff = OffsetDateTime::parse("2026-01-01T10:00:00Z", &Rfc3339).expect("time");
        let log = "2026-01-01T09:00:00.1Z  INFO old\n  continued old\n2026-01-01T10:00:01Z  INFO new\n  continued new\n{\"timestamp\":\"2026-01-01T09:30:00Z\",\"msg\":\"old json\"}\n{\"timestamp\":\"2026-01-01T10:30:00Z\",\"msg\":\"new json\"}\n";
        assert_eq!(
            recent(log, cutoff, 100),
            "2026-01-01T10:00:01Z  INFO new\n  continued new\n{\"timestamp\":\"2026-01-01T10:30:00Z\",\"msg\":\"new json\"}\n"
        );
        assert_eq!(
            recent(log, cutoff, 1),
            "{\"timestamp\":\"2026-01-01T10:30:00Z\",\"msg\":\"new json\"}\n"
        );
        assert_eq!(recent("", cutoff, 10), "");
    }

    #[test]
    fn the_manifests_note_survives_redaction() {
        assert_eq!(Redactor::new().text(REDACTION_NOTE), REDACTION_NOTE);
    }

    #[test]
    fn key_bodies() {
        let text = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\nBBBB\n-----END EC PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_key_bodies(text), vec![vec!["AAAA", "BBBB"]]);
    }
}

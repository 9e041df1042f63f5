//! `weftctl install | upgrade | uninstall`: weft's embedded manifests
//! ([`crate::install`]) onto a Kubernetes cluster and off it again.
//!
//! Progress goes to stderr as it happens (each object applied or deleted,
//! each workload's ready count as it changes); stdout gets the result: a
//! line for people, or with `-o json|yaml` a document listing what was done.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use crate::args::{Format, GlobalArgs, InstallArgs, UninstallArgs};
use crate::cluster::kube::{AGENT_APP, KubeCluster, NAME_LABEL, kube_error};
use crate::exit::{CliError, Outcome, Result};
use crate::install::{self, Object, Resolver, Rollout};
use crate::output;

/// What a command did, for `-o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Done {
    action: &'static str,
    /// `Kind namespace/name` of every object touched.
    objects: Vec<String>,
    /// Each workload's rollout when the command ended (install, upgrade).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rollouts: Vec<Rollout>,
    /// `Kind namespace/name` of what an upgrade removed: objects of an
    /// earlier release that this one no longer has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pruned: Vec<String>,
}

pub(crate) async fn client(global: &GlobalArgs) -> Result<Client> {
    let args = &global.cluster;
    if args.run_dir.is_some() || args.manifests.is_some() {
        return Err(CliError::Usage(
            "install, upgrade and uninstall act on a Kubernetes cluster, not a local run (drop --run-dir/--manifests)".into(),
        ));
    }
    let cluster = KubeCluster::connect(
        args.kubeconfig.as_ref(),
        args.context.as_deref(),
        &args.system_namespace,
    )
    .await?;
    Ok(cluster.client)
}

fn progress(line: &str) {
    eprintln!("{line}");
}

fn finish(global: &GlobalArgs, done: &Done, line: String) -> Result<Outcome> {
    let text = match global.output {
        Format::Table | Format::Wide => line + "\n",
        other => output::render(other, done, |_| output::Table::default())?,
    };
    output::print(&text);
    Ok(Outcome::Ok)
}

/// `--dry-run`: the manifests as they would be applied.
fn print_manifests(global: &GlobalArgs, objects: &[Object]) -> Result<Outcome> {
    let text = match global.output {
        Format::Json | Format::Yaml => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": objects.iter().map(|o| &o.body).collect::<Vec<_>>(),
            });
            output::render(global.output, &list, |_| output::Table::default())?
        }
        Format::Table | Format::Wide => install::MANIFESTS.to_string(),
    };
    output::print(&text);
    Ok(Outcome::Ok)
}

/// Runs `install` (`upgrade = false`) or `upgrade`.
pub async fn install(global: &GlobalArgs, args: &InstallArgs, upgrade: bool) -> Result<Outcome> {
    let objects = install::objects()?;
    if args.dry_run {
        return print_manifests(global, &objects);
    }
    let client = client(global).await?;
    let mut resolver = Resolver::new(client.clone());
    let workloads = install::workloads(&objects);
    if upgrade {
        // An upgrade of nothing is a mistake worth saying: the user meant
        // install, or the wrong cluster.
        let mut present = false;
        for w in &workloads {
            present |= resolver.exists(w).await?;
        }
        if !present {
            return Err(CliError::NotFound(
                "weft is not installed on this cluster (no controller or DaemonSets): use `weftctl install`".into(),
            ));
        }
    }
    let verb = if upgrade { "upgrade" } else { "install" };
    let mut done = Done {
        action: verb,
        objects: Vec::new(),
        rollouts: Vec::new(),
        pruned: Vec::new(),
    };
    let mut crds_pending = Vec::new();
    for object in &objects {
        // Objects after the CRDs may need their kinds served.
        if !object.is_crd() && !crds_pending.is_empty() {
            wait_established(&client, &crds_pending).await?;
            crds_pending.clear();
        }
        if resolver.adopt(object).await? {
            progress(&format!(
                "took over {} from its earlier field managers",
                object.describe()
            ));
        }
        resolver.apply(object).await?;
        progress(&format!("applied {}", object.describe()));
        done.objects.push(object.describe());
        if object.is_crd() {
            crds_pending.push(object.name.clone());
        }
    }
    if upgrade {
        // After the new objects are applied, so nothing the new release
        // still needs under an old name goes first.
        for object in install::stale(&mut resolver, &objects).await? {
            if resolver.delete(&object).await? {
                progress(&format!("pruned {}", object.describe()));
                done.pruned.push(object.describe());
            }
        }
    }
    if args.wait > 0.0 {
        let limit = Duration::from_secs_f64(args.wait);
        done.rollouts = install::wait_rolled_out(&client, &workloads, limit, |r| {
            progress(&format!(
                "{}: {}/{} ready{}",
                r.workload,
                r.ready,
                r.wanted,
                if r.done { ", rolled out" } else { "" }
            ))
        })
        .await?;
    }
    let line = format!(
        "weft {}: {} objects applied (field manager weftctl){}{}",
        if upgrade { "upgraded" } else { "installed" },
        done.objects.len(),
        if done.pruned.is_empty() {
            String::new()
        } else {
            format!(
                ", {} left over from the earlier release pruned",
                done.pruned.len()
            )
        },
        if args.wait > 0.0 {
            ", every workload rolled out"
        } else {
            ""
        }
    );
    finish(global, &done, line)
}

/// Waits until the API server serves the CRDs `names`.
async fn wait_established(client: &Client, names: &[String]) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for name in names {
        loop {
            let crd = api
                .get(name)
                .await
                .map_err(|e| kube_error(&format!("CustomResourceDefinition {name}"), e))?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(CliError::other(format!(
                    "CustomResourceDefinition {name} not established within 60 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}

/// Runs `uninstall`.
pub async fn uninstall(global: &GlobalArgs, args: &UninstallArgs) -> Result<Outcome> {
    let objects = install::objects()?;
    let doomed: Vec<&Object> = objects
        .iter()
        .rev()
        .filter(|o| args.crds || !o.is_crd())
        .collect();
    if args.dry_run {
        let done = Done {
            action: "uninstall (dry run)",
            objects: doomed.iter().map(|o| o.describe()).collect(),
            rollouts: Vec::new(),
            pruned: Vec::new(),
        };
        let line = done.objects.join("\n");
        return finish(global, &done, line);
    }
    let client = client(global).await?;
    let mut resolver = Resolver::new(client.clone());
    let mut done = Done {
        action: "uninstall",
        objects: Vec::new(),
        rollouts: Vec::new(),
        pruned: Vec::new(),
    };
    // What an earlier release left behind goes too: no trace.
    for object in install::stale(&mut resolver, &objects).await? {
        if resolver.delete(&object).await? {
            progress(&format!(
                "deleted {} (from an earlier release)",
                object.describe()
            ));
            done.pruned.push(object.describe());
        }
    }
    for object in &doomed {
        if resolver.delete(object).await? {
            progress(&format!("deleted {}", object.describe()));
            done.objects.push(object.describe());
        }
    }
    if args.wait > 0.0 {
        let namespace = install::system_namespace(&objects).unwrap_or("weft-system");
        wait_gone(&client, namespace, Duration::from_secs_f64(args.wait)).await?;
    }
    let line = format!(
        "weft uninstalled: {} objects deleted{}{}",
        done.objects.len(),
        if args.crds {
            ", CRDs included"
        } else {
            "; CRDs kept (--crds removes them)"
        },
        if args.wait > 0.0 {
            "; every node's CNI config restored"
        } else {
            ""
        }
    );
    finish(global, &done, line)
}

/// Waits until no node agent pod is left (each restores its node's CNI
/// config before it exits: docs/cni.md) and the namespace is gone.
async fn wait_gone(client: &Client, namespace: &str, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let selector = ListParams::default().labels(&format!("{NAME_LABEL}={AGENT_APP}"));
    let mut last_agents = usize::MAX;
    let mut agents_done = false;
    loop {
        if !agents_done {
            let left = pods
                .list(&selector)
                .await
                .map_err(|e| kube_error("listing the node agents", e))?
                .items
                .len();
            if left != last_agents {
                progress(&format!(
                    "node agents restoring their nodes' CNI configs: {left} left"
                ));
                last_agents = left;
            }
            agents_done = left == 0;
        }
        let namespace_left = namespaces
            .get_opt(namespace)
            .await
            .map_err(|e| kube_error(&format!("namespace {namespace}"), e))?
            .is_some();
        if agents_done && !namespace_left {
            progress(&format!("namespace {namespace} gone"));
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CliError::other(format!(
                "uninstall not finished within {limit:?}: {}",
                if agents_done {
                    format!("namespace {namespace} is still terminating")
                } else {
                    format!("{last_agents} node agent(s) still running")
                }
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

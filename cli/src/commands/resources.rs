//! `weftctl workloads`, `services`, `policies`: the model, as the controller
//! published it (its debug API's `/model`) or as each ztunnel holds it (its
//! admin API's `/workloads`, `/services`, `/policies`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use weft_api::config::{
    Action, Authorization, HealthStatus, MtlsMode, PolicyScope, Service, TunnelProtocol, Workload,
};

use super::{enum_name, per_node, short_identity};
use crate::args::{GlobalArgs, ModelReadArgs, ModelSource};
use crate::cluster::Cluster;
use crate::exit::{Outcome, Result};
use crate::output::{self, Table, cell};

/// The controller's `/model` document (the parts weftctl reads).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ControllerModel {
    /// Model version.
    pub version: u64,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<Service>,
    /// Policies.
    pub authorizations: Vec<Authorization>,
    /// Per policy `namespace/name`: what the controller concluded.
    pub policy_reports: BTreeMap<String, PolicyReport>,
}

/// The controller's report on one policy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct PolicyReport {
    /// Usable as written.
    pub accepted: bool,
    /// Why not.
    pub errors: Vec<String>,
    /// Enforced by ztunnel (no waypoint target).
    pub enforced_by_ztunnel: bool,
    /// How the L4 form differs.
    pub l4_warnings: Vec<String>,
}

/// One entry of a listing: the resource, and which ztunnel holds it when
/// read from the ztunnels.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry<T> {
    /// The node whose ztunnel reported it (`--from ztunnel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seen_by: Option<String>,
    /// The controller's report (policies, `--from controller`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<PolicyReport>,
    /// The resource, in the config stream's JSON form.
    #[serde(flatten)]
    pub resource: T,
}

#[derive(Deserialize)]
struct Workloads {
    #[serde(default)]
    workloads: Vec<Workload>,
}
#[derive(Deserialize)]
struct Services {
    #[serde(default)]
    services: Vec<Service>,
}
#[derive(Deserialize)]
struct Policies {
    #[serde(default)]
    policies: Vec<Authorization>,
}

/// Reads the controller's model.
pub async fn controller_model(cluster: &Cluster) -> Result<ControllerModel> {
    let controller = cluster.controller().await?;
    controller.get_json("/model").await
}

/// Reads one list from every ztunnel.
async fn from_ztunnels<D: DeserializeOwned, T>(
    cluster: &Cluster,
    node: Option<&str>,
    path: &'static str,
    items: fn(D) -> Vec<T>,
) -> Result<(Vec<Entry<T>>, Outcome)> {
    let nodes = cluster.ztunnels(node).await?;
    let (answers, outcome) =
        per_node(&nodes, |n| async move { n.admin.get_json::<D>(path).await }).await?;
    let entries = answers
        .into_iter()
        .flat_map(|(node, doc)| {
            items(doc).into_iter().map(move |resource| Entry {
                seen_by: Some(node.clone()),
                report: None,
                resource,
            })
        })
        .collect();
    Ok((entries, outcome))
}

fn plain<T>(items: Vec<T>) -> Vec<Entry<T>> {
    items
        .into_iter()
        .map(|resource| Entry {
            seen_by: None,
            report: None,
            resource,
        })
        .collect()
}

/// `weftctl workloads`.
pub async fn workloads(global: &GlobalArgs, args: &ModelReadArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let read = &args.read;
    output::watch(global.output, &read.watch, "workloads", || async {
        let (mut entries, outcome) = match args.source {
            ModelSource::Controller => (
                plain(controller_model(&cluster).await?.workloads),
                Outcome::Ok,
            ),
            ModelSource::Ztunnel => {
                from_ztunnels(
                    &cluster,
                    read.node.as_deref(),
                    "/workloads",
                    |d: Workloads| d.workloads,
                )
                .await?
            }
        };
        entries.retain(|e| {
            let w = &e.resource;
            read.namespace.as_ref().is_none_or(|ns| *ns == w.namespace)
                && (args.source == ModelSource::Ztunnel
                    || read.node.as_ref().is_none_or(|n| *n == w.node))
        });
        entries.sort_by(|a, b| {
            (&a.resource.namespace, &a.resource.name, &a.seen_by).cmp(&(
                &b.resource.namespace,
                &b.resource.name,
                &b.seen_by,
            ))
        });
        let text = output::render(global.output, &entries, |wide| {
            workload_table(&entries, wide)
        })?;
        Ok((text, outcome))
    })
    .await
}

fn seen_by_column<T>(entries: &[Entry<T>]) -> bool {
    entries.iter().any(|e| e.seen_by.is_some())
}

/// The workloads table.
pub fn workload_table(entries: &[Entry<Workload>], wide: bool) -> Table {
    let seen = seen_by_column(entries);
    let mut header = Vec::new();
    if seen {
        header.push("SEEN-BY");
    }
    header.extend([
        "NAMESPACE",
        "NAME",
        "NODE",
        "ADDRESSES",
        "IDENTITY",
        "PROTOCOL",
        "WAYPOINT",
        "STATUS",
    ]);
    if wide {
        header.extend(["MTLS", "POLICIES", "UID"]);
    }
    let mut t = Table::new(header);
    for e in entries {
        let w = &e.resource;
        let identity = format!(
            "spiffe://{}/ns/{}/sa/{}",
            w.trust_domain, w.namespace, w.service_account
        );
        let mut row = Vec::new();
        if seen {
            row.push(e.seen_by.clone().unwrap_or_default());
        }
        let protocol = TunnelProtocol::try_from(w.protocol)
            .map(|p| enum_name(p.as_str_name(), "TUNNEL_PROTOCOL_"))
            .unwrap_or_else(|_| w.protocol.to_string());
        let protocol = if w.is_waypoint {
            format!("{protocol} (waypoint)")
        } else {
            protocol
        };
        row.extend([
            w.namespace.clone(),
            w.name.clone(),
            cell(&w.node),
            cell(w.addresses.join(",")),
            if wide {
                identity
            } else {
                short_identity(&identity)
            },
            protocol,
            cell(
                w.waypoint
                    .as_ref()
                    .map(|r| format!("{}/{}", r.namespace, r.name))
                    .unwrap_or_default(),
            ),
            HealthStatus::try_from(w.status)
                .map(|s| enum_name(s.as_str_name(), "HEALTH_STATUS_").to_lowercase())
                .unwrap_or_default(),
        ]);
        if wide {
            row.extend([
                MtlsMode::try_from(w.mtls_mode)
                    .map(|m| enum_name(m.as_str_name(), "MTLS_MODE_"))
                    .unwrap_or_default(),
                cell(w.authorization_policies.join(",")),
                w.uid.clone(),
            ]);
        }
        t.row(row);
    }
    t
}

/// `weftctl services`.
pub async fn services(global: &GlobalArgs, args: &ModelReadArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let read = &args.read;
    output::watch(global.output, &read.watch, "services", || async {
        let (mut entries, outcome) = match args.source {
            ModelSource::Controller => (
                plain(controller_model(&cluster).await?.services),
                Outcome::Ok,
            ),
            ModelSource::Ztunnel => {
                from_ztunnels(
                    &cluster,
                    read.node.as_deref(),
                    "/services",
                    |d: Services| d.services,
                )
                .await?
            }
        };
        entries.retain(|e| {
            read.namespace
                .as_ref()
                .is_none_or(|ns| *ns == e.resource.namespace)
        });
        entries.sort_by(|a, b| {
            (&a.resource.namespace, &a.resource.name, &a.seen_by).cmp(&(
                &b.resource.namespace,
                &b.resource.name,
                &b.seen_by,
            ))
        });
        let text = output::render(global.output, &entries, |wide| {
            service_table(&entries, wide)
        })?;
        Ok((text, outcome))
    })
    .await
}

/// The services table.
pub fn service_table(entries: &[Entry<Service>], wide: bool) -> Table {
    let seen = seen_by_column(entries);
    let mut header = Vec::new();
    if seen {
        header.push("SEEN-BY");
    }
    header.extend([
        "NAMESPACE",
        "NAME",
        "VIPS",
        "PORTS",
        "ENDPOINTS",
        "WAYPOINT",
    ]);
    if wide {
        header.extend(["HOSTNAME", "ENDPOINT-UIDS"]);
    }
    let mut t = Table::new(header);
    for e in entries {
        let s = &e.resource;
        let ports: Vec<String> = s
            .ports
            .iter()
            .map(|p| {
                let mut text = if p.target_port == 0 || p.target_port == p.service_port {
                    p.service_port.to_string()
                } else {
                    format!("{}->{}", p.service_port, p.target_port)
                };
                if !p.app_protocol.is_empty() {
                    text.push('/');
                    text.push_str(&p.app_protocol);
                }
                text
            })
            .collect();
        let healthy = s
            .endpoints
            .iter()
            .filter(|ep| ep.status == HealthStatus::Healthy as i32)
            .count();
        let mut row = Vec::new();
        if seen {
            row.push(e.seen_by.clone().unwrap_or_default());
        }
        row.extend([
            s.namespace.clone(),
            s.name.clone(),
            cell(s.vips.join(",")),
            cell(ports.join(",")),
            format!("{healthy}/{}", s.endpoints.len()),
            cell(
                s.waypoint
                    .as_ref()
                    .map(|r| format!("{}/{}", r.namespace, r.name))
                    .unwrap_or_default(),
            ),
        ]);
        if wide {
            row.extend([
                s.hostname.clone(),
                cell(
                    s.endpoints
                        .iter()
                        .map(|e| e.workload_uid.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ]);
        }
        t.row(row);
    }
    t
}

/// `weftctl policies`.
pub async fn policies(global: &GlobalArgs, args: &ModelReadArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let read = &args.read;
    output::watch(global.output, &read.watch, "policies", || async {
        let (mut entries, outcome) = match args.source {
            ModelSource::Controller => {
                let model = controller_model(&cluster).await?;
                let entries = model
                    .authorizations
                    .into_iter()
                    .map(|p| Entry {
                        seen_by: None,
                        report: model
                            .policy_reports
                            .get(&weft_api::authz::policy_key(&p))
                            .cloned(),
                        resource: p,
                    })
                    .collect();
                (entries, Outcome::Ok)
            }
            ModelSource::Ztunnel => {
                from_ztunnels(
                    &cluster,
                    read.node.as_deref(),
                    "/policies",
                    |d: Policies| d.policies,
                )
                .await?
            }
        };
        entries.retain(|e| {
            read.namespace
                .as_ref()
                .is_none_or(|ns| *ns == e.resource.namespace)
        });
        entries.sort_by(|a, b| {
            (&a.resource.namespace, &a.resource.name, &a.seen_by).cmp(&(
                &b.resource.namespace,
                &b.resource.name,
                &b.seen_by,
            ))
        });
        let text = output::render(global.output, &entries, |wide| policy_table(&entries, wide))?;
        Ok((text, outcome))
    })
    .await
}

/// Where a policy applies, in words.
pub fn policy_scope(p: &Authorization) -> String {
    match PolicyScope::try_from(p.scope) {
        Ok(PolicyScope::Namespace) => "namespace".into(),
        Ok(PolicyScope::WorkloadSelector) => "selector".into(),
        Ok(PolicyScope::Mesh) => "mesh".into(),
        Ok(PolicyScope::Waypoint) => match &p.target {
            Some(t) => format!("waypoint: {} {}/{}", t.kind, t.namespace, t.name),
            None => "waypoint".into(),
        },
        Err(_) => p.scope.to_string(),
    }
}

/// A policy's action in words.
pub fn action_name(action: i32) -> String {
    Action::try_from(action)
        .map(|a| enum_name(a.as_str_name(), "ACTION_"))
        .unwrap_or_else(|_| action.to_string())
}

/// The policies table.
pub fn policy_table(entries: &[Entry<Authorization>], wide: bool) -> Table {
    let seen = seen_by_column(entries);
    let mut header = Vec::new();
    if seen {
        header.push("SEEN-BY");
    }
    header.extend([
        "NAMESPACE",
        "NAME",
        "ACTION",
        "SCOPE",
        "RULES",
        "L4-RULES",
        "STATUS",
    ]);
    if wide {
        header.push("NOTES");
    }
    let mut t = Table::new(header);
    for e in entries {
        let p = &e.resource;
        let waypoint = p.scope == PolicyScope::Waypoint as i32;
        let status = match &e.report {
            Some(r) if !r.accepted => "not accepted".to_string(),
            // A waypoint enforces the full rules: the L4 form does not apply.
            _ if !waypoint && !p.l4_warnings.is_empty() => {
                format!("{} L4 warning(s)", p.l4_warnings.len())
            }
            Some(_) => "accepted".into(),
            None => "-".into(),
        };
        let mut row = Vec::new();
        if seen {
            row.push(e.seen_by.clone().unwrap_or_default());
        }
        row.extend([
            p.namespace.clone(),
            p.name.clone(),
            action_name(p.action),
            policy_scope(p),
            p.rules.len().to_string(),
            if waypoint {
                "-".into()
            } else {
                p.l4_rules.len().to_string()
            },
            status,
        ]);
        if wide {
            let notes: Vec<String> = e
                .report
                .iter()
                .flat_map(|r| r.errors.iter().cloned())
                .chain(p.l4_warnings.iter().filter(|_| !waypoint).cloned())
                .collect();
            row.push(cell(notes.join("; ")));
        }
        t.row(row);
    }
    t
}

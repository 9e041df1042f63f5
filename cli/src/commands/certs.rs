//! `weftctl certs`: the certificates each ztunnel holds, from its `/certs`.

use weft_api::admin::{CertInfo, CertState, CertsResponse};

use super::{identity_namespace, per_node};
use crate::args::{GlobalArgs, ReadArgs};
use crate::cluster::Cluster;
use crate::exit::{Outcome, Result};
use crate::format;
use crate::output::{self, Table, cell};

/// Runs the command.
pub async fn run(global: &GlobalArgs, args: &ReadArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    output::watch(global.output, &args.watch, "certs", || async {
        let view = fetch(&cluster, args.node.as_deref(), args.namespace.as_deref()).await?;
        let (view, outcome) = view;
        let text = output::render(global.output, &view, |wide| table(&view, wide))?;
        Ok((text, outcome))
    })
    .await
}

/// Every node's certificates (of identities in `namespace`, when given).
pub async fn fetch(
    cluster: &Cluster,
    node: Option<&str>,
    namespace: Option<&str>,
) -> Result<(Vec<CertsResponse>, Outcome)> {
    let nodes = cluster.ztunnels(node).await?;
    let (answers, outcome) = per_node(&nodes, |n| async move {
        n.admin.get_json::<CertsResponse>("/certs").await
    })
    .await?;
    let view = answers
        .into_iter()
        .map(|(_, mut r)| {
            if let Some(ns) = namespace {
                r.certificates
                    .retain(|c| identity_namespace(&c.identity) == Some(ns));
            }
            r
        })
        .collect();
    Ok((view, outcome))
}

fn state(c: &CertInfo) -> &'static str {
    match c.state {
        CertState::Valid => "valid",
        CertState::Pending => "pending",
        CertState::Expired => "expired",
    }
}

/// The table view.
pub fn table(view: &[CertsResponse], wide: bool) -> Table {
    let now = format::now();
    let mut header = vec![
        "NODE",
        "IDENTITY",
        "STATE",
        "SERIAL",
        "NOT-AFTER",
        "ROTATION",
    ];
    if wide {
        header.extend(["NOT-BEFORE", "EXPIRES", "LAST-ERROR"]);
    }
    let mut t = Table::new(header);
    for r in view {
        for c in &r.certificates {
            let rotation = c
                .renew_at
                .as_deref()
                .and_then(|at| format::seconds_until(at, now))
                .map(format::relative)
                .unwrap_or_else(|| "-".into());
            let mut row = vec![
                r.node.clone(),
                c.identity.clone(),
                state(c).to_string(),
                cell(c.serial.as_deref().unwrap_or("")),
                cell(c.not_after.as_deref().unwrap_or("")),
                rotation,
            ];
            if wide {
                let expires = c
                    .not_after
                    .as_deref()
                    .and_then(|at| format::seconds_until(at, now))
                    .map(format::relative)
                    .unwrap_or_else(|| "-".into());
                row.extend([
                    cell(c.not_before.as_deref().unwrap_or("")),
                    expires,
                    cell(c.last_error.as_deref().unwrap_or("")),
                ]);
            }
            t.row(row);
        }
    }
    t
}

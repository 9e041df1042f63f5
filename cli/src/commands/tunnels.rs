//! `weftctl tunnels`: live connections through each ztunnel, from its
//! `/connections`.

use weft_api::admin::{ConnectionInfo, ConnectionsResponse, Direction, Peer, Transport};

use super::{per_node, short_identity};
use crate::args::{GlobalArgs, ReadArgs};
use crate::cluster::Cluster;
use crate::exit::{Outcome, Result};
use crate::format;
use crate::output::{self, Table, cell};

/// Runs the command.
pub async fn run(global: &GlobalArgs, args: &ReadArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    output::watch(global.output, &args.watch, "tunnels", || async {
        let nodes = cluster.ztunnels(args.node.as_deref()).await?;
        let (answers, outcome) = per_node(&nodes, |n| async move {
            n.admin
                .get_json::<ConnectionsResponse>("/connections")
                .await
        })
        .await?;
        let view: Vec<ConnectionsResponse> = answers
            .into_iter()
            .map(|(_, r)| filter(r, args.namespace.as_deref()))
            .collect();
        let text = output::render(global.output, &view, |wide| table(&view, wide))?;
        Ok((text, outcome))
    })
    .await
}

/// Keeps the connections that involve `namespace` (either end).
pub fn filter(mut response: ConnectionsResponse, namespace: Option<&str>) -> ConnectionsResponse {
    if let Some(ns) = namespace {
        let prefix = format!("{ns}/");
        let involves = |p: &Peer| {
            p.workload
                .as_deref()
                .is_some_and(|w| w.starts_with(&prefix))
        };
        response
            .connections
            .retain(|c| involves(&c.source) || involves(&c.destination));
    }
    response
}

fn peer(p: &Peer) -> String {
    p.workload.clone().unwrap_or_else(|| p.address.clone())
}

fn identity(p: &Peer, wide: bool) -> String {
    match &p.identity {
        Some(id) if wide => id.clone(),
        Some(id) => short_identity(id),
        None => "-".into(),
    }
}

/// The table view.
pub fn table(view: &[ConnectionsResponse], wide: bool) -> Table {
    let mut header = vec![
        "NODE",
        "DIR",
        "SOURCE",
        "SRC-ID",
        "DESTINATION",
        "DST-ID",
        "WAYPOINT",
        "SENT",
        "RECEIVED",
        "AGE",
    ];
    if wide {
        header.extend(["TRANSPORT", "SRC-ADDR", "DST-ADDR", "ID"]);
    }
    let mut t = Table::new(header);
    for r in view {
        let mut conns: Vec<&ConnectionInfo> = r.connections.iter().collect();
        conns.sort_by_key(|c| c.id);
        for c in conns {
            let mut row = vec![
                r.node.clone(),
                match c.direction {
                    Direction::Outbound => "out".into(),
                    Direction::Inbound => "in".into(),
                },
                peer(&c.source),
                identity(&c.source, wide),
                peer(&c.destination),
                identity(&c.destination, wide),
                cell(c.waypoint.as_deref().unwrap_or("")),
                format::bytes(c.bytes_sent),
                format::bytes(c.bytes_received),
                format::age_ms(c.age_ms),
            ];
            if wide {
                row.extend([
                    match c.transport {
                        Transport::Hbone => "HBONE".into(),
                        Transport::Tcp => "TCP".into(),
                    },
                    c.source.address.clone(),
                    c.destination.address.clone(),
                    c.id.to_string(),
                ]);
            }
            t.row(row);
        }
    }
    t
}

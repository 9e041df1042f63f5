//! `weftctl proxy-status`: which config version each proxy was last sent,
//! acknowledged and refused, from every controller replica's
//! `/proxy-status` (a proxy streams from one of them). The state of each is
//! [`ConfigSync::of`], decided by the controller; `weftctl check` fails on
//! the same states.

use weft_api::admin::{ConfigSync, ProxyStatusReport};

use crate::args::{GlobalArgs, WatchArgs};
use crate::cluster::Cluster;
use crate::exit::{CliError, Outcome, Result};
use crate::output::{self, Table, cell};

/// Runs the command.
pub async fn run(global: &GlobalArgs, watch: &WatchArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    output::watch(global.output, watch, "proxy-status", || async {
        let (view, outcome) = fetch(&cluster).await?;
        let text = output::render(global.output, &view, |wide| table(&view, wide))?;
        Ok((text, outcome))
    })
    .await
}

/// Every replica's report; [`Outcome::Partial`] when one could not be
/// read (said on stderr), an error when none could.
pub async fn fetch(cluster: &Cluster) -> Result<(Vec<ProxyStatusReport>, Outcome)> {
    let endpoints = cluster.controllers().await?;
    let answers = futures::future::join_all(
        endpoints
            .iter()
            .map(|e| e.get_json::<ProxyStatusReport>("/proxy-status")),
    )
    .await;
    let mut reports = Vec::new();
    let mut failures: Vec<CliError> = Vec::new();
    for answer in answers {
        match answer {
            Ok(report) => reports.push(report),
            Err(e) => failures.push(e),
        }
    }
    if reports.is_empty() && !failures.is_empty() {
        return Err(failures.swap_remove(0));
    }
    for e in &failures {
        eprintln!("weftctl: warning: {e}");
    }
    reports.sort_by(|a, b| a.controller.cmp(&b.controller));
    let outcome = if failures.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Partial
    };
    Ok((reports, outcome))
}

/// `synced`, `pending`, `stale`, `nacked`.
pub fn sync_word(sync: ConfigSync) -> &'static str {
    match sync {
        ConfigSync::Synced => "synced",
        ConfigSync::Pending => "pending",
        ConfigSync::Stale => "stale",
        ConfigSync::Nacked => "nacked",
    }
}

/// `ztunnel` or `waypoint`, from the proto's enum name.
fn kind_word(kind: &str) -> String {
    kind.strip_prefix("PROXY_KIND_")
        .unwrap_or(kind)
        .to_ascii_lowercase()
}

/// The table view: one row per proxy.
pub fn table(view: &[ProxyStatusReport], wide: bool) -> Table {
    let mut header = vec![
        "PROXY",
        "KIND",
        "FOR",
        "CONTROLLER",
        "SENT",
        "ACKED",
        "STATE",
        "NACK",
    ];
    if wide {
        header.extend(["MODEL", "NACKED"]);
    }
    let mut t = Table::new(header);
    for report in view {
        for p in &report.proxies {
            let target = if p.waypoint.is_empty() {
                &p.node
            } else {
                &p.waypoint
            };
            let mut row = vec![
                cell(&p.proxy_id),
                kind_word(&p.kind),
                cell(target),
                cell(&report.controller),
                p.sent_version.to_string(),
                p.acked_version.to_string(),
                sync_word(p.sync).to_string(),
                cell(p.nack.as_deref().unwrap_or("")),
            ];
            if wide {
                row.push(report.model_version.to_string());
                row.push(
                    p.nacked_version
                        .map_or_else(|| "-".into(), |v| v.to_string()),
                );
            }
            t.row(row);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::admin::ProxyStatus;

    #[test]
    fn a_refused_version_shows_with_its_reason_and_its_proxy() {
        let view = vec![ProxyStatusReport {
            controller: "weft-controller-0".into(),
            model_version: 9,
            model_age_seconds: 3,
            proxies: vec![ProxyStatus {
                proxy_id: "ztunnel-abc".into(),
                kind: "PROXY_KIND_ZTUNNEL".into(),
                node: "node-1".into(),
                waypoint: String::new(),
                connected_at: 0,
                sent_version: 9,
                acked_version: 8,
                nacked_version: Some(9),
                nack: Some("route r1: unknown filter".into()),
                sync: ConfigSync::Nacked,
            }],
        }];
        let rows = table(&view, true);
        let row = &rows.rows()[0];
        assert_eq!(
            row[..7],
            [
                "ztunnel-abc",
                "ztunnel",
                "node-1",
                "weft-controller-0",
                "9",
                "8",
                "nacked"
            ]
        );
        assert!(row[7].contains("unknown filter"));
        assert_eq!(row[9], "9");
    }
}

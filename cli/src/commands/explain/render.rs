//! An explanation for people.

use std::fmt::Write;

use super::path::{Explanation, Hop, Verdict};
use crate::args::AppProtocol;

fn hop_line(out: &mut String, n: usize, hop: &Hop, wide: bool) {
    let mark = if hop.allowed { "pass" } else { "STOP" };
    let _ = writeln!(
        out,
        "  {n}. [{mark}] {} ({}), sees {}",
        hop.enforcer, hop.layer, hop.sees
    );
    let _ = writeln!(out, "       {}", hop.reason);
    if wide || !hop.allowed {
        if hop.policies.is_empty() {
            if hop.layer != "none" {
                let _ = writeln!(out, "       policies here: none");
            }
        } else {
            let _ = writeln!(out, "       policies here: {}", hop.policies.join(", "));
        }
    }
    for a in &hop.audited {
        let _ = writeln!(out, "       audited by AUDIT {} rule {}", a.policy, a.rule);
    }
}

/// The text form.
pub fn text(e: &Explanation, wide: bool) -> String {
    let mut out = String::new();
    let from = &e.from;
    let mut client = from.description.clone();
    if let Some(id) = &from.identity {
        let _ = write!(client, " ({id})");
    }
    if let Some(ip) = from.address {
        let _ = write!(client, ", {ip}");
    }
    if let Some(node) = &from.node {
        let _ = write!(client, " on {node}");
    }
    client.push_str(if from.in_mesh {
        ", in the mesh"
    } else {
        ", not in the mesh"
    });
    let _ = writeln!(out, "FROM     {client}");
    let mut to = e.to.description.clone();
    if e.to.kind == "service" {
        let _ = write!(to, " ({})", e.to.host);
        if let Some(vip) = e.to.vip {
            let _ = write!(to, " VIP {vip}");
        }
    }
    let _ = writeln!(out, "TO       {to}");
    if let Some(r) = &e.request {
        let line = match r.protocol {
            AppProtocol::Tcp => "TCP (not HTTP: waypoints apply the policies' L4 form)".into(),
            AppProtocol::Http => {
                let mut line = format!("{} {} host {}", r.method, r.path, r.host);
                for (k, v) in &r.headers {
                    let _ = write!(line, " {k}={v}");
                }
                if r.assumed {
                    line.push_str(" (assumed; give --method/--path)");
                }
                line
            }
        };
        let _ = writeln!(out, "REQUEST  {line}");
    }
    let verdict = match e.verdict {
        Verdict::Allowed => "ALLOWED",
        Verdict::Denied => "DENIED",
        Verdict::Mixed => "MIXED (depends on the endpoint picked)",
        Verdict::Unreachable => "UNREACHABLE (no endpoint)",
    };
    let _ = writeln!(out, "VERDICT  {verdict}");
    for p in &e.paths {
        let _ = writeln!(
            out,
            "\nto {} at {} on {}: {}",
            p.endpoint,
            p.address,
            if p.node.is_empty() { "?" } else { &p.node },
            if p.allowed { "allowed" } else { "denied" }
        );
        for (i, hop) in p.hops.iter().enumerate() {
            hop_line(&mut out, i + 1, hop, wide);
        }
    }
    if !e.warnings.is_empty() {
        let _ = writeln!(out, "\nWARNINGS");
        for w in &e.warnings {
            let _ = writeln!(out, "  - {w}");
        }
    }
    out
}

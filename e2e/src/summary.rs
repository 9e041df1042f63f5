//! What `weft-e2e status` prints about a run, and the "how to reach it"
//! text printed after `up` and at the end of the demo.

use std::fmt::Write;

use crate::addresses;
use crate::binaries::{self, Binaries};
use crate::cleanup::FoundRun;
use crate::netns::Netns;
use crate::state::RunState;

/// A run's status, several lines.
pub fn status(run: &FoundRun) -> String {
    let s = &run.state;
    let mut out = String::new();
    let owner = match &s.owner {
        Some(o) if o.alive() => format!("owned by harness pid {}", o.pid),
        Some(o) => format!(
            "harness pid {} is gone: `weft-e2e down` cleans it up",
            o.pid
        ),
        None if run.has_state_file => "kept (`weft-e2e down` removes it)".to_string(),
        None => "no state file: leftovers of a killed run (`weft-e2e down` removes them)".into(),
    };
    let _ = writeln!(out, "{}  {owner}", s.run_id);
    let _ = writeln!(out, "  dir:   {}", s.dir.display());
    if !s.nodes.is_empty() {
        let _ = writeln!(out, "  nodes:");
        for (i, name) in s.nodes.iter().enumerate() {
            let _ = writeln!(
                out,
                "    {name:<8} underlay {:<12} pods {:<15} netns {}",
                addresses::node_ip(i + 1).to_string(),
                addresses::pod_cidr(i + 1),
                s.run_id.netns(name)
            );
        }
    }
    if !s.processes.is_empty() {
        let _ = writeln!(out, "  processes:");
        for p in &s.processes {
            let state = if p.alive() { "running" } else { "exited" };
            let _ = writeln!(
                out,
                "    {:<24} pid {:<7} {state:<8} {}",
                p.name,
                p.pid,
                p.log.display()
            );
        }
    }
    if !s.pods.is_empty() {
        let _ = writeln!(out, "  pods:");
        for p in &s.pods {
            let _ = writeln!(
                out,
                "    {:<24} {:<8} {:<12} netns {}",
                format!("{}/{}", p.namespace, p.name),
                p.node,
                p.ip,
                p.netns
            );
        }
    }
    if !s.services.is_empty() {
        let _ = writeln!(out, "  services:");
        for svc in &s.services {
            let _ = writeln!(
                out,
                "    {:<24} {}",
                format!("{}/{}", svc.namespace, svc.name),
                svc.vip
            );
        }
    }
    if !s.waypoints.is_empty() {
        let _ = writeln!(out, "  waypoints:");
        for w in &s.waypoints {
            let _ = writeln!(
                out,
                "    {:<24} {:<8} {:<12} admin {}",
                format!("{}/{}", w.namespace, w.name),
                w.node,
                w.ip,
                w.admin_socket.display()
            );
        }
    }
    let netns: Vec<&String> = s.netns.iter().filter(|n| Netns::exists(n)).collect();
    let _ = writeln!(out, "  network namespaces: {}", netns.len());
    out
}

/// How to use a running cluster.
pub fn how_to_reach(state: &RunState, bins: &Binaries) -> String {
    let mut out = String::new();
    let app = bins.path(binaries::APP);
    let _ = writeln!(
        out,
        "Cluster {} is up. Its files: {}",
        state.run_id,
        state.dir.display()
    );
    if !state.pods.is_empty() {
        let _ = writeln!(out, "Pods:");
        for p in &state.pods {
            let _ = writeln!(
                out,
                "  {:<20} {:<7} {:<12} netns {}{}",
                format!("{}/{}", p.namespace, p.name),
                p.node,
                p.ip,
                p.netns,
                if p.echo_server {
                    "  (echo server: tcp 9000, http 8080)"
                } else {
                    ""
                }
            );
        }
        let from = &state.pods[0];
        let to = state.pods.iter().find(|p| p.echo_server).unwrap_or(from);
        let _ = writeln!(out, "Run something inside a pod:");
        let _ = writeln!(
            out,
            "  ip netns exec {} {} tcp {}:9000 --message hi",
            from.netns,
            app.display(),
            to.ip
        );
        let _ = writeln!(
            out,
            "  ip netns exec {} {} http http://{}:8080/",
            from.netns,
            app.display(),
            to.ip
        );
        let _ = writeln!(out, "  ip netns exec {} bash", from.netns);
    }
    let _ = writeln!(
        out,
        "The controller's model:\n  ip netns exec {} curl -s 127.0.0.1:15000/model",
        state.run_id.netns("ctl")
    );
    if bins.has(binaries::WEFTCTL) {
        let _ = writeln!(
            out,
            "weftctl:\n  {} --run-dir {} workloads",
            bins.path(binaries::WEFTCTL).display(),
            state.dir.display()
        );
    }
    for w in &state.waypoints {
        let _ = writeln!(
            out,
            "Waypoint {}/{} at {}:15008 ({}):
  curl -s --unix-socket {} localhost/config_dump",
            w.namespace,
            w.name,
            w.ip,
            w.identity,
            w.admin_socket.display()
        );
    }
    if let Some(manifests) = &state.manifests {
        let _ = writeln!(
            out,
            "Apply Kubernetes YAML (policies, Services, HTTPRoutes): copy it into {}",
            manifests.display()
        );
    }
    let _ = writeln!(out, "Logs: {}/**/*.log", state.dir.display());
    let _ = writeln!(out, "Status: weft-e2e status    Tear down: weft-e2e down");
    out
}

//! The narrated demo (`weft-e2e demo`, `make demo`): a two-node mesh built
//! from the real parts, and what it does, with real output at every step.
//! Each claim is checked as it is shown; a claim that does not hold is
//! marked ✗ and makes the demo exit non-zero.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::binaries;
use crate::cluster::{Cluster, ClusterConfig, ZtunnelMode};
use crate::cni;
use crate::error::{Error, Result};
use crate::exec;
use crate::manifests::{self, USE_WAYPOINT};
use crate::narrate::Narrator;
use crate::pod::{Pod, PodSpec};
use crate::service::ServiceSpec;
use crate::summary;
use crate::waypoint::WaypointSpec;

/// How long the mesh may take to converge after a change.
const CONVERGE: Duration = Duration::from_secs(20);

/// The demo's running tally of claims that did not hold.
pub(crate) struct Demo {
    n: Arc<Narrator>,
    failed: usize,
}

impl Demo {
    pub(crate) fn new(n: Arc<Narrator>) -> Demo {
        Demo { n, failed: 0 }
    }

    /// Err naming how many claims did not hold, if any.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.failed > 0 {
            return Err(Error::Invalid(format!(
                "{} claim(s) of the demo did not hold",
                self.failed
            )));
        }
        Ok(())
    }

    pub(crate) fn check(&mut self, ok: bool, claim: &str) {
        if ok {
            self.n.ok(claim);
        } else {
            self.failed += 1;
            self.n.fail(claim);
        }
    }
}

/// Runs the demo; with `keep`, leaves the cluster up and says how to reach it.
pub fn run(keep: bool) -> Result<()> {
    let n = Arc::new(Narrator::new());
    let mut demo = Demo::new(n.clone());
    n.section("A cluster made of network namespaces");
    n.say(
        "Two nodes, each a network namespace with its own pod bridge and pod CIDR, joined by an\n\
         underlay bridge; the controller on the underlay; per node the node agent and ztunnel.\n\
         Every process is the real binary; nothing touches this machine's own network.",
    );
    let mut c = Cluster::up(ClusterConfig {
        progress: n.progress(),
        ztunnel: ZtunnelMode::Auto,
        ..ClusterConfig::default()
    })?;
    for node in c.nodes() {
        let addrs = node.netns().ip(&["-br", "-4", "addr"])?;
        let routes = node.netns().ip(&["route"])?;
        n.command(
            &format!("ip -n {} -br -4 addr; ip -n {0} route", node.netns().name()),
            &format!("{addrs}{routes}"),
        );
    }

    n.section("Pods, attached by the real CNI chain");
    n.say(
        "Namespace `shop` is labelled weft.dev/dataplane-mode=ambient; `legacy` is not.\n\
         Each pod is a network namespace attached as a container runtime does it: CNI_* environment,\n\
         config on stdin, through the conflist the node agent rewrote to end with weft-cni.",
    );
    let (conf_path, conf) = cni::active_conflist(&c.node(1)?.layout().cni_conf_dir())?;
    n.show(&format!(
        "{}: plugins {}",
        conf_path.display(),
        cni::plugin_types(&conf).join(" → ")
    ));
    c.add_namespace("shop", true)?;
    c.add_namespace("legacy", false)?;
    let client = c.add_pod(
        PodSpec::new("shop", "client")
            .on_node(1)
            .service_account("client"),
    )?;
    let server = c.add_pod(
        PodSpec::new("shop", "server")
            .on_node(2)
            .service_account("server")
            .label("app", "server")
            .echo_server(),
    )?;
    let outsider = c.add_pod(PodSpec::new("legacy", "outsider").on_node(1))?;
    let db = c.add_pod(PodSpec::new("legacy", "db").on_node(2).echo_server())?;

    n.section("The node agent redirects the mesh's pods, and only them");
    let rules = client.redirect_rules()?;
    n.command(
        &format!(
            "ip netns exec {} nft list table inet weft",
            client.netns().name()
        ),
        &trim_lines(&rules.text, 40),
    );
    let outside = outsider.redirect_rules()?;
    demo.check(
        rules.present() && outside.absent(),
        "shop/client is redirected to ztunnel; legacy/outsider has no weft rules",
    );
    if c.has_ztunnel() {
        for pod in [&client, &server] {
            c.wait_in_mesh(pod, CONVERGE)?;
        }
        let ports = client.netns().listening_tcp_ports()?;
        n.show(&format!(
            "listening inside shop/client's namespace (ztunnel's in-pod sockets): {ports:?}"
        ));
    }
    c.wait_known(&outsider, CONVERGE)
        .or_else(|e| ignore_without_ztunnel(&c, e))?;

    n.section("What the controller made of it");
    show_workloads(&c, &n)?;

    if !c.has_ztunnel() {
        n.section("Without ztunnel");
        n.say(
            "ztunnel is not built, so the mesh's traffic has nowhere to go: the demo stops here.",
        );
        return finish(c, &n, &demo, keep);
    }

    n.section("Traffic across nodes, through the tunnel");
    let capture = c.capture("demo")?;
    let secret = "hello-from-the-demo";
    let reply = client.tcp_echo(server.echo_tcp(), secret)?;
    let capture = capture.finish()?;
    n.command(
        &format!(
            "ip netns exec {} weft-e2e-app tcp {} --message {secret}",
            client.netns().name(),
            server.echo_tcp()
        ),
        &serde_json::to_string_pretty(&reply).unwrap_or_default(),
    );
    demo.check(
        reply.peer.ip() == client.ip(),
        &format!(
            "the server saw the caller as {}: the client's own address",
            reply.peer.ip()
        ),
    );

    n.section("Only mTLS on 15008 crosses the underlay");
    only_hbone_between_pods(&mut demo, &n, &capture, secret);
    let capture = c.capture("demo-plain")?;
    outsider.tcp_echo(db.echo_tcp(), "legacy-says-hi")?;
    let plain = capture.finish()?;
    demo.check(
        plain.contains("legacy-says-hi"),
        "for contrast, legacy/outsider → legacy/db (outside the mesh) crosses in plaintext",
    );

    n.section("Live tunnels");
    let held = hold_connection(&client, &server)?;
    show_tunnels(&c, &n)?;
    drop(held);

    n.section("An L4 DENY policy");
    let policy = "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                  metadata: {name: deny-client, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: DENY\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/shop/sa/client\"]}\n";
    n.command(
        "kubectl apply -f deny-client.yaml   # written into the manifest directory",
        policy,
    );
    c.apply("deny-client", policy)?;
    c.wait_for_ztunnel_of(
        &server,
        "deny-client in force",
        "/policies",
        CONVERGE,
        |v| v.to_string().contains("deny-client"),
    )?;
    let denied = client.tcp_echo_result(server.echo_tcp(), "let me in")?;
    n.command(
        &format!(
            "ip netns exec {} weft-e2e-app tcp {}",
            client.netns().name(),
            server.echo_tcp()
        ),
        &match &denied {
            Ok(r) => serde_json::to_string(r).unwrap_or_default(),
            Err(e) => e.clone(),
        },
    );
    demo.check(denied.is_err(), "the client's connection is refused");
    if let Some(line) = last_line_with(&c.node(2)?.layout().ztunnel_log(0), "verdict=\"deny\"") {
        n.show(&format!("node-2 ztunnel access log: {line}"));
    }
    c.unapply("deny-client")?;
    c.wait_for_ztunnels("deny-client gone", "/policies", CONVERGE, |v| {
        !v.to_string().contains("deny-client")
    })?;
    demo.check(
        client.tcp_echo(server.echo_tcp(), "again").is_ok(),
        "policy removed: allowed again",
    );

    l7_step(&mut c, &mut demo, &client)?;

    n.section("STRICT mTLS");
    let plaintext = outsider.tcp_echo_result(server.echo_tcp(), "plaintext")?;
    demo.check(
        plaintext.is_ok(),
        "PERMISSIVE (the default): legacy/outsider's plaintext reaches shop/server",
    );
    let strict = "apiVersion: security.weft.dev/v1alpha1\nkind: PeerAuthentication\n\
                  metadata: {name: strict, namespace: shop}\nspec:\n  mtls: {mode: STRICT}\n";
    n.command("kubectl apply -f strict.yaml", strict);
    c.apply("strict", strict)?;
    let uid = server.uid().to_string();
    c.wait_for_ztunnels("STRICT in force", "/workloads", CONVERGE, |v| {
        v["workloads"].as_array().is_some_and(|ws| {
            ws.iter()
                .any(|w| w["uid"] == uid.as_str() && w["mtlsMode"] == "MTLS_MODE_STRICT")
        })
    })?;
    let refused = outsider.tcp_echo_result(server.echo_tcp(), "plaintext")?;
    demo.check(
        refused.is_err(),
        "STRICT: the same plaintext connection is refused",
    );
    demo.check(
        client.tcp_echo(server.echo_tcp(), "mtls").is_ok(),
        "the mesh's own (mTLS) traffic still flows",
    );
    c.unapply("strict")?;

    finish(c, &n, &demo, keep)
}

/// A waypoint for `shop/server`'s Service and an L7 AuthorizationPolicy
/// at it: GET allowed, POST refused with 403, as real HTTP from
/// `shop/client` on the other node.
fn l7_step(c: &mut Cluster, demo: &mut Demo, client: &Pod) -> Result<()> {
    let n = demo.n.clone();
    n.section("An L7 rule: GET allowed, POST refused");
    if !c.binaries().has(binaries::WAYPOINT) {
        n.say("The waypoint is not built, so there is no L7 proxy to show: skipping this step.");
        return Ok(());
    }
    n.say(
        "A waypoint is a Gateway of class weft-waypoint; Kubernetes would get a Deployment from the\n\
         controller, here the harness starts the real `waypoint` in a pod of its own. The Service\n\
         shop/server is bound to it by the label weft.dev/use-waypoint, so ztunnel sends the\n\
         Service's traffic there, and the waypoint sees each HTTP request.",
    );
    const WAYPOINT: &str = "shop-waypoint";
    let gateway =
        weft_api::yaml::to_string(&manifests::waypoint_gateway("shop", WAYPOINT, "service"))
            .unwrap_or_default();
    n.command("kubectl apply -f waypoint.yaml", &gateway);
    let wp = c.apply_waypoint(WaypointSpec::new("shop", WAYPOINT).on_node(2))?;
    n.show(&format!(
        "waypoint shop/{WAYPOINT}: pod {} at {}, identity {}",
        wp.pod().key(),
        wp.hbone(),
        wp.identity()
    ));
    let svc = c.add_service(
        ServiceSpec::new("shop", "server")
            .select("app", "server")
            .label(USE_WAYPOINT, WAYPOINT)
            .http_port("http", 80, 8080),
    )?;
    let written = c
        .manifests()
        .read(&manifests::service_stem("shop", "server"))?
        .and_then(|v| weft_api::yaml::to_string(&v).ok())
        .unwrap_or_default();
    n.command(
        "kubectl apply -f server-service.yaml   # the cluster IP as the API server allocated it",
        &written,
    );
    c.wait_service_bound(&svc, &wp, CONVERGE)?;
    let policy = "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                  metadata: {name: get-only, namespace: shop}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: server}]\n  action: ALLOW\n  rules:\n  - to:\n    - operation: {methods: [GET]}\n";
    n.command("kubectl apply -f get-only.yaml", policy);
    c.apply("get-only", policy)?;
    c.wait_for_waypoint(&wp, "get-only in force", "/policies", CONVERGE, |v| {
        v.to_string().contains("get-only")
    })?;
    let Some(addr) = svc.addr("http") else {
        return Err(Error::Invalid("shop/server has no port".into()));
    };
    let url = format!("http://{addr}/orders");
    let status_of = |method: &str| -> Result<u16> {
        let (status, body) = client.http(method, &url, &[])?;
        let body = serde_json::from_str::<serde_json::Value>(body.trim())
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(body);
        n.command(
            &format!(
                "ip netns exec {} weft-e2e-app http {url} --method {method}",
                client.netns().name()
            ),
            &format!("HTTP {status}\n{}", trim_lines(&body, 14)),
        );
        Ok(status)
    };
    let get = status_of("GET")?;
    let post = status_of("POST")?;
    demo.check(get == 200, "GET /orders is allowed: 200 from shop/server");
    demo.check(post == 403, "POST /orders is refused by the waypoint: 403");
    if let Some(line) = last_line_with(wp.log(), "status=403") {
        n.show(&format!("waypoint access log: {line}"));
    }
    Ok(())
}

fn ignore_without_ztunnel(c: &Cluster, e: Error) -> Result<()> {
    if c.has_ztunnel() { Err(e) } else { Ok(()) }
}

fn finish(c: Cluster, n: &Narrator, demo: &Demo, keep: bool) -> Result<()> {
    n.section("Done");
    if keep {
        let bins = c.binaries().clone();
        let state = c.keep()?;
        n.say(&summary::how_to_reach(&state, &bins));
    } else {
        n.say("Tearing the cluster down (run `weft-e2e demo --keep` to keep it).");
        let report = c.teardown();
        for e in report.errors {
            n.fail(&e);
        }
    }
    demo.finish()
}

/// The workloads, as `weftctl workloads` shows them (or from the
/// controller's model when weftctl is not built).
fn show_workloads(c: &Cluster, n: &Narrator) -> Result<()> {
    if let Some(out) = weftctl(c, &["workloads"]) {
        n.command(
            &format!("weftctl --run-dir {} workloads", c.dir().display()),
            &out,
        );
        return Ok(());
    }
    let model = c.controller().model()?;
    let mut table = String::from("NAMESPACE  NAME      NODE    ADDRESS       PROTOCOL\n");
    for w in model["workloads"].as_array().into_iter().flatten() {
        table.push_str(&format!(
            "{:<10} {:<9} {:<7} {:<13} {}\n",
            w["namespace"].as_str().unwrap_or(""),
            w["name"].as_str().unwrap_or(""),
            w["node"].as_str().unwrap_or(""),
            w["addresses"][0].as_str().unwrap_or(""),
            w["protocol"].as_str().unwrap_or("TUNNEL_PROTOCOL_NONE"),
        ));
    }
    n.command("GET /model on the controller's debug API", &table);
    Ok(())
}

/// The live tunnels, as `weftctl tunnels` shows them (or ztunnel's
/// `/connections` when weftctl is not built).
fn show_tunnels(c: &Cluster, n: &Narrator) -> Result<()> {
    if let Some(out) = weftctl(c, &["tunnels"]) {
        n.command(
            &format!("weftctl --run-dir {} tunnels", c.dir().display()),
            &out,
        );
        return Ok(());
    }
    let connections = c.ztunnel_admin(2, "/connections")?;
    n.command(
        "GET /connections on node-2's ztunnel admin API",
        &trim_lines(
            &serde_json::to_string_pretty(&connections).unwrap_or_default(),
            40,
        ),
    );
    Ok(())
}

/// Runs weftctl against the cluster, if it is built and succeeds.
fn weftctl(c: &Cluster, args: &[&str]) -> Option<String> {
    let bin = c.binaries();
    if !bin.has(binaries::WEFTCTL) {
        return None;
    }
    let out = exec::output(
        Command::new(bin.path(binaries::WEFTCTL))
            .arg("--run-dir")
            .arg(c.dir())
            .args(args),
    )
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A connection from `client` to `server`'s echo port, kept open.
pub(crate) fn hold_connection(client: &Pod, server: &Pod) -> Result<TcpStream> {
    let to = server.echo_tcp();
    let mut stream = client
        .netns()
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))?
        .map_err(|e| Error::Invalid(format!("connect {to}: {e}")))?;
    stream
        .write_all(b"held\n")
        .map_err(|e| Error::Invalid(format!("write: {e}")))?;
    let mut line = String::new();
    BufReader::new(
        stream
            .try_clone()
            .map_err(|e| Error::Invalid(e.to_string()))?,
    )
    .read_line(&mut line)
    .map_err(|e| Error::Invalid(format!("read: {e}")))?;
    Ok(stream)
}

/// Shows the captured packets between the two pods and checks that all are
/// to or from port 15008 and that `secret` appears nowhere on the wire.
pub(crate) fn only_hbone_between_pods(
    demo: &mut Demo,
    n: &Narrator,
    capture: &crate::capture::CaptureText,
    secret: &str,
) {
    let between_pods: Vec<&str> = capture
        .packets()
        .into_iter()
        .filter(|l| l.matches("10.244.").count() == 2)
        .collect();
    n.command(
        "tcpdump -n (underlay, between the two pods)",
        &between_pods
            .iter()
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
    );
    demo.check(
        !between_pods.is_empty()
            && between_pods.iter().all(|l| l.contains(".15008"))
            && !capture.contains(secret),
        &format!(
            "{} packets between the pods, all to or from port 15008; \"{secret}\" appears nowhere",
            between_pods.len()
        ),
    );
}

pub(crate) fn trim_lines(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max {
        return text.to_string();
    }
    format!(
        "{}\n… ({} more lines)",
        lines[..max].join("\n"),
        lines.len() - max
    )
}

fn last_line_with(path: &std::path::Path, needle: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| l.contains(needle))
        .map(|l| l.trim().to_string())
}

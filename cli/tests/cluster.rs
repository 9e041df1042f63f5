//! weftctl on a real local cluster of the e2e harness (network-namespace
//! nodes, the controller, node agents, ztunnels, pods attached by the real
//! CNI chain). One cluster, several checks in turn, each against what the
//! components really hold or really do:
//!
//! - `tunnels` lists a connection while a transfer runs, with growing byte
//!   counts; `certs` prints what each ztunnel serves;
//! - `tap` shows a connection opened during the test;
//! - `explain -o json` agrees with real traffic on a table of cases (allow,
//!   deny, audit; L4 policies and policies with L7 fields; plaintext and
//!   mTLS clients; pods and a Service VIP), each also run as a connection;
//! - `enroll`/`unenroll` change a pod's redirection (and what it may reach);
//! - `check` flags a pod whose redirect rules were removed by hand;
//! - `waypoint apply` makes a waypoint (the harness runs it, as the deployer
//!   would) that serves traffic; `explain` agrees with real HTTP requests
//!   through it on L7 cases (method, path, header, the client's identity,
//!   Gateway- and Service-targeted policies, the destination's own policy,
//!   AUDIT), and on a TCP connection through it; `tap` shows the requests
//!   with their status.
//!
//! Needs root, like the e2e suite.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_api::admin::{CertsResponse, ConnectionsResponse};
use weft_e2e::{Cluster, ClusterConfig, Pod, PodSpec, Service, ServiceSpec, Waypoint, ZtunnelMode};
use weft_testkit::eventually;

const CONVERGE: Duration = Duration::from_secs(20);

/// One cluster at a time: the machines have two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn weftctl_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weftctl"));
    cmd.arg("--run-dir")
        .arg(dir)
        .args(["--timeout", "10"])
        .args(args)
        .env_remove("WEFT_RUN_DIR")
        .env_remove("KUBECONFIG");
    cmd
}

fn weftctl(dir: &Path, args: &[&str]) -> Out {
    let out = weftctl_command(dir, args).output().expect("run weftctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn identity(pod: &Pod) -> String {
    format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        pod.namespace(),
        pod.service_account()
    )
}

/// The policies of the L4 part. Pods are selected by their `app` label,
/// which is their name.
const POLICIES: &str = r#"apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {ports: ["9000"]}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {selector: {matchLabels: {app: strict}}, mtls: {mode: STRICT}}
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: shop}
spec:
  selector: {matchLabels: {app: l7deny}}
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: l7allow}}
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec:
  selector: {matchLabels: {app: audited}}
  action: AUDIT
  rules:
  - {}
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: shop}
spec:
  selector: {matchLabels: {app: audited}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/other]}}]
"#;

/// The pods of the test.
struct Pods {
    client: Pod,
    other: Pod,
    outsider: Pod,
    server: Pod,
    strict: Pod,
    audited: Pod,
    l7deny: Pod,
    l7allow: Pod,
    web: Pod,
}

fn add_pod(c: &mut Cluster, ns: &str, name: &str, node: usize, echo: bool) -> Pod {
    let mut spec = PodSpec::new(ns, name)
        .on_node(node)
        .service_account(name)
        .label("app", name);
    if echo {
        spec = spec.echo_server();
    }
    let p = c.add_pod(spec).expect("pod");
    if ns == "shop" {
        // One at a time: each pod fully in the mesh before the next.
        c.wait_in_mesh(&p, CONVERGE).expect("in mesh");
    } else {
        c.wait_known(&p, CONVERGE).expect("known");
    }
    p
}

#[test]
fn weftctl_on_a_real_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::up(ClusterConfig {
        ztunnel: ZtunnelMode::On,
        ..ClusterConfig::default()
    })
    .expect("cluster up");
    let dir = c.dir().to_path_buf();
    c.add_namespace("shop", true).expect("shop");
    c.add_namespace("plain", false).expect("plain");
    let pods = Pods {
        client: add_pod(&mut c, "shop", "client", 1, false),
        other: add_pod(&mut c, "shop", "other", 1, false),
        outsider: add_pod(&mut c, "plain", "outsider", 1, false),
        server: add_pod(&mut c, "shop", "server", 2, true),
        strict: add_pod(&mut c, "shop", "strict", 2, true),
        audited: add_pod(&mut c, "shop", "audited", 2, true),
        l7deny: add_pod(&mut c, "shop", "l7deny", 2, true),
        l7allow: add_pod(&mut c, "shop", "l7allow", 2, true),
        web: add_pod(&mut c, "plain", "web", 2, true),
    };
    assert_eq!(pods.server.echo_tcp().port(), 9000, "POLICIES name 9000");
    let svc = c
        .add_service(
            ServiceSpec::new("shop", "server")
                .select("app", "server")
                .port("tcp", 7000, pods.server.echo_tcp().port()),
        )
        .expect("service");
    c.apply("weftctl-policies", POLICIES).expect("apply");
    // Every one selects a pod on node 2, so only its ztunnel is sent them.
    c.wait_for_ztunnel_of(&pods.server, "policies", "/policies", CONVERGE, |v| {
        let t = v.to_string();
        [
            "allow-client",
            "deny-delete",
            "allow-get",
            "audit-all",
            "deny-other",
        ]
        .iter()
        .all(|p| t.contains(p))
    })
    .expect("policies reach the ztunnels");

    tunnels_and_certs_match(&c, &dir, &pods.client, &pods.server);
    tap_shows_a_connection(&dir, &pods.client, &pods.audited);
    let mut table = ExplainTable::default();
    l4_cases(&mut table, &pods, svc.addr("tcp").expect("service port"));
    table.run(&dir);
    // The audited pod's ztunnel logged the AUDIT rule explain reported.
    audit_is_logged(
        &dir.join("nodes").join(pods.audited.node()),
        "ztunnel",
        "shop/audit-all",
    );
    table.assert_coverage();
    enroll_changes_redirection(&mut c, &dir, &pods.outsider, &pods.strict);
    check_flags_removed_rules(&c, &dir, &pods.server);

    let (api, svc, waypoint) = waypoint_apply_serves_traffic(&mut c, &dir, &pods.client);
    tap_shows_requests(&dir, &pods.client, &svc);
    let mut table = ExplainTable::default();
    waypoint_cases(&mut table, &pods, &api, &svc);
    table.run(&dir);
    table.assert_waypoint_coverage(&waypoint);
    // The waypoint logged the AUDIT rule explain reported there.
    audit_is_logged(&dir.join("waypoints"), "shop-waypoint", "shop/api-audit");

    let report = c.teardown();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

fn tunnels_and_certs_match(c: &Cluster, dir: &Path, client: &Pod, server: &Pod) {
    // A held connection with a transfer in progress.
    let mut held = client
        .netns()
        .run(|| TcpStream::connect_timeout(&server.echo_tcp(), Duration::from_secs(5)))
        .expect("enter client")
        .expect("connect");
    let mut reader = BufReader::new(held.try_clone().expect("clone"));
    let mut exchange = |n: usize| {
        let line = format!("{}\n", "x".repeat(n));
        held.write_all(line.as_bytes()).expect("write");
        let mut reply = String::new();
        reader.read_line(&mut reply).expect("reply");
    };
    exchange(10);
    // Bytes the server's ztunnel received from the client for this tunnel,
    // as `weftctl tunnels -o json` prints them.
    let sent_to = |out: &Out| -> Option<u64> {
        let nodes: Vec<ConnectionsResponse> = serde_json::from_str(&out.stdout).ok()?;
        nodes
            .iter()
            .filter(|n| n.node == server.node())
            .flat_map(|n| n.connections.iter())
            .filter(|c| {
                c.source.identity.as_deref() == Some(identity(client).as_str())
                    && c.destination.address == server.echo_tcp().to_string()
            })
            .map(|c| c.bytes_sent)
            .max()
    };
    let first = weftctl(dir, &["tunnels", "-o", "json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before =
        sent_to(&first).unwrap_or_else(|| panic!("held connection not listed: {}", first.stdout));
    // The same tunnel, as the node's ztunnel serves it.
    let served: ConnectionsResponse =
        serde_json::from_value(c.ztunnel_admin(2, "/connections").expect("connections"))
            .expect("connections");
    assert!(
        served
            .connections
            .iter()
            .any(
                |t| t.source.identity.as_deref() == Some(identity(client).as_str())
                    && t.destination.address == server.echo_tcp().to_string()
            ),
        "{served:?}"
    );
    exchange(100_000);
    let mut after = before;
    eventually("bytes to grow", CONVERGE, || {
        after = sent_to(&weftctl(dir, &["tunnels", "-o", "json"])).unwrap_or(0);
        after >= before + 100_000
    });
    // The table: the tunnel on both nodes (out on the client's, in on the
    // server's), with both identities.
    let table = weftctl(dir, &["tunnels", "-n", "shop"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let rows: Vec<&str> = table
        .stdout
        .lines()
        .filter(|l| l.contains("shop/client") && l.contains("shop/server"))
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.starts_with(client.node()) && r.contains(" out ")),
        "{}",
        table.stdout
    );
    assert!(
        rows.iter()
            .any(|r| r.starts_with(server.node()) && r.contains(" in ")),
        "{}",
        table.stdout
    );
    drop(held);

    // Certificates: what weftctl prints is what each ztunnel serves.
    let out = weftctl(dir, &["certs", "-o", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let printed: Vec<CertsResponse> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(printed.len(), c.nodes().len());
    for (i, node) in printed.iter().enumerate() {
        let served: CertsResponse =
            serde_json::from_value(c.ztunnel_admin(i + 1, "/certs").expect("certs"))
                .expect("certs");
        let ids = |r: &CertsResponse| {
            let mut v: Vec<(String, Option<String>)> = r
                .certificates
                .iter()
                .map(|c| (c.identity.clone(), c.serial.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(node), ids(&served));
    }
    let printed_ids = out.stdout;
    assert!(printed_ids.contains(&identity(client)), "{printed_ids}");
    assert!(printed_ids.contains(&identity(server)), "{printed_ids}");
}

/// Runs `weftctl tap ARGS -o json` and `traffic` until the events tap
/// printed satisfy `seen` (tap prints nothing until an event comes, so there
/// is no telling when its streams are open: the traffic is repeated until
/// they show it). Returns the events.
fn tap_until(
    dir: &Path,
    args: &[&str],
    mut traffic: impl FnMut(),
    seen: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut all = vec!["tap", "-o", "json", "--duration", "60"];
    all.extend_from_slice(args);
    let mut child = weftctl_command(dir, &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tap");
    let stdout = child.stdout.take().expect("stdout");
    let events = std::sync::Arc::new(Mutex::new(Vec::<Value>::new()));
    let reader = {
        let events = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                let event = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                events.lock().unwrap_or_else(|e| e.into_inner()).push(event);
            }
        })
    };
    let start = Instant::now();
    let done = loop {
        traffic();
        std::thread::sleep(Duration::from_millis(300));
        let now = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if seen(&now) || start.elapsed() > CONVERGE {
            break seen(&now);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err);
            panic!("tap ended ({status}) before showing the traffic: {err}");
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    reader.join().expect("tap reader");
    let events = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(done, "tap never showed the traffic: {events:#?}");
    events
}

fn tap_shows_a_connection(dir: &Path, client: &Pod, audited: &Pod) {
    let to_audited = |e: &Value| {
        e["connection"]["source"]["workload"] == "shop/client"
            && e["connection"]["destination"]["workload"] == "shop/audited"
    };
    let events = tap_until(
        dir,
        &["-n", "shop"],
        || {
            client.tcp_echo(audited.echo_tcp(), "tapped").expect("echo");
        },
        |events| events.iter().any(|e| to_audited(e) && e["kind"] == "open"),
    );
    // Each ztunnel reports its side: the client's out, the server's in.
    let reporters: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| to_audited(e))
        .filter_map(|e| e["reporter"].as_str())
        .collect();
    assert!(
        reporters.iter().all(|r| r.starts_with("ztunnel ")),
        "{reporters:?}"
    );
}

/// Real traffic from a pod: true when the connection (request) succeeds.
type Probe = Box<dyn Fn(&Pod) -> bool>;

fn tcp_probe(addr: SocketAddr) -> Probe {
    Box::new(move |from: &Pod| matches!(from.tcp_echo_result(addr, "probe"), Ok(Ok(_))))
}

/// An HTTP request: allowed when answered below 400 (a refusal is 403 from
/// a waypoint, or a reset connection).
fn http_probe(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, &'static str)>,
) -> Probe {
    Box::new(
        move |from: &Pod| matches!(from.http(method, &url, &headers), Ok((status, _)) if status < 400),
    )
}

/// One row: a client, `weftctl explain` arguments, the real traffic that
/// corresponds, and what the policies mean (so a mesh that refuses or lets
/// through everything cannot pass by agreeing with a broken explain).
struct Case<'p> {
    from: &'p Pod,
    to: String,
    flags: Vec<String>,
    expect: bool,
    traffic: Probe,
}

#[derive(Default)]
struct ExplainTable<'p> {
    cases: Vec<Case<'p>>,
    /// Each explanation (`-o json`) that was run.
    explained: Vec<Value>,
}

impl<'p> ExplainTable<'p> {
    fn add(&mut self, from: &'p Pod, to: String, flags: &[&str], expect: bool, traffic: Probe) {
        self.cases.push(Case {
            from,
            to,
            flags: flags.iter().map(|s| s.to_string()).collect(),
            expect,
            traffic,
        });
    }

    fn run(&mut self, dir: &Path) {
        let mut rows = Vec::new();
        for case in self.cases.drain(..) {
            let mut args = vec!["explain", "-o", "json", "--from"];
            let from = case.from.key();
            args.extend([from.as_str(), "--to", case.to.as_str()]);
            args.extend(case.flags.iter().map(String::as_str));
            let out = weftctl(dir, &args);
            let doc: Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("explain {args:?}: {e}: {}{}", out.stdout, out.stderr));
            let verdict = doc["verdict"].as_str().unwrap_or_default().to_string();
            assert!(
                verdict == "allowed" || verdict == "denied",
                "explain {args:?}: {verdict}"
            );
            let explained = verdict == "allowed";
            assert_eq!(
                out.code,
                if explained { 0 } else { 6 },
                "exit code of {args:?}"
            );
            let actual = (case.traffic)(case.from);
            let row = format!(
                "{:<16} -> {:<30} {:<40} explain: {:<7} traffic: {}",
                from,
                case.to,
                case.flags.join(" "),
                verdict,
                if actual { "allowed" } else { "denied" }
            );
            rows.push(row);
            assert_eq!(
                explained,
                actual,
                "explain and traffic disagree:\n{}\n{}",
                serde_json::to_string_pretty(&doc).unwrap_or_default(),
                rows.join("\n")
            );
            assert_eq!(
                actual,
                case.expect,
                "explain and traffic agree, but not with the policies:\n{}",
                rows.join("\n")
            );
            self.explained.push(doc);
        }
        eprintln!("explain vs traffic:\n{}", rows.join("\n"));
    }

    /// The waypoint part exercises what it claims: the waypoint on the
    /// path, deciding at L7 (allow and deny), twice (its own policies, then
    /// the destination's), at L4 for TCP, and an AUDIT rule recorded there.
    fn assert_waypoint_coverage(&self, waypoint: &Waypoint) {
        let enforcer = format!("waypoint {}", waypoint.key());
        let at_waypoint: Vec<&Value> = self
            .hops()
            .filter(|h| h["enforcer"] == enforcer.as_str())
            .collect();
        let l7 = |allowed: bool| {
            at_waypoint
                .iter()
                .any(|h| h["layer"] == "L7" && h["allowed"] == allowed)
        };
        assert!(l7(true) && l7(false), "L7 allow and deny at the waypoint");
        assert!(
            at_waypoint.iter().any(|h| h["layer"] == "L4"),
            "TCP through the waypoint"
        );
        assert!(
            at_waypoint
                .iter()
                .any(|h| h["decidedBy"]["policy"] == "shop/api-own"),
            "the destination's own policy decided at the waypoint"
        );
        assert!(
            at_waypoint
                .iter()
                .any(|h| h["audited"].as_array().is_some_and(|a| !a.is_empty())),
            "AUDIT at the waypoint"
        );
    }

    /// Every hop of every explanation so far.
    fn hops(&self) -> impl Iterator<Item = &Value> {
        self.explained
            .iter()
            .flat_map(|d| d["paths"].as_array().into_iter().flatten())
            .flat_map(|p| p["hops"].as_array().into_iter().flatten())
    }

    /// The table exercises what it claims: both outcomes, a DENY rule and
    /// an ALLOW rule deciding, an AUDIT rule recorded, policies with L7
    /// fields, plaintext clients.
    fn assert_coverage(&self) {
        assert!(self.explained.len() >= 20, "{} cases", self.explained.len());
        let verdicts: Vec<&str> = self
            .explained
            .iter()
            .filter_map(|d| d["verdict"].as_str())
            .collect();
        assert!(verdicts.contains(&"allowed") && verdicts.contains(&"denied"));
        let decided = |action: &str| self.hops().any(|h| h["decidedBy"]["action"] == action);
        assert!(
            decided("ALLOW") && decided("DENY"),
            "ALLOW and DENY rules decide"
        );
        assert!(
            self.hops()
                .any(|h| h["audited"].as_array().is_some_and(|a| !a.is_empty())),
            "an AUDIT rule is recorded"
        );
        let warned = |text: &str| {
            self.explained.iter().any(|d| {
                d["warnings"].as_array().is_some_and(|ws| {
                    ws.iter()
                        .any(|w| w.as_str().is_some_and(|w| w.contains(text)))
                })
            })
        };
        assert!(
            warned("applies to the whole connection"),
            "DENY with L7 fields at L4"
        );
        assert!(warned("matches nothing"), "ALLOW with L7 fields at L4");
        assert!(
            self.hops().any(|h| h["sees"]
                .as_str()
                .is_some_and(|s| s.starts_with("plaintext"))),
            "a plaintext client"
        );
    }
}

/// Three clients (two in the mesh, one outside) × the pods, the server's
/// HTTP port (the policy allows only its TCP port), and the Service VIP.
fn l4_cases<'p>(table: &mut ExplainTable<'p>, pods: &'p Pods, service: SocketAddr) {
    let targets: [(&Pod, [bool; 3]); 6] = [
        // expected for (client, other, outsider)
        (&pods.server, [true, false, false]),
        (&pods.strict, [true, true, false]),
        (&pods.audited, [true, false, true]),
        (&pods.l7deny, [false, false, false]),
        (&pods.l7allow, [false, false, false]),
        (&pods.web, [true, true, true]),
    ];
    let clients = [&pods.client, &pods.other, &pods.outsider];
    for (i, from) in clients.into_iter().enumerate() {
        for (to, expect) in &targets {
            let addr = to.echo_tcp();
            let dest = format!("pod/{}/{}:{}", to.namespace(), to.name(), addr.port());
            table.add(from, dest, &[], expect[i], tcp_probe(addr));
        }
        let http = pods.server.echo_http();
        table.add(
            from,
            format!("pod/shop/server:{}", http.port()),
            &[],
            false,
            http_probe("GET", format!("http://{http}/"), Vec::new()),
        );
        // A client outside the mesh has no route to a VIP (no kube-proxy in
        // the namespace cluster): only meshed clients use the Service.
        if from.namespace() == "shop" {
            table.add(
                from,
                format!("svc/shop/server:{}", service.port()),
                &[],
                i == 0,
                tcp_probe(service),
            );
        }
    }
}

/// The AUDIT rule explain reported was recorded by the real enforcer: a
/// log of `dir` whose name starts with `log` has an audit line for `policy`.
fn audit_is_logged(dir: &Path, log: &str, policy: &str) {
    eventually(
        &format!("an audit line for {policy} in {log}*.log"),
        CONVERGE,
        || {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .any(|f| {
                    let name = f.file_name().to_string_lossy().into_owned();
                    name.starts_with(log)
                        && name.ends_with(".log")
                        && std::fs::read_to_string(f.path()).is_ok_and(|t| {
                            t.lines().any(|l| l.contains("audit") && l.contains(policy))
                        })
                })
        },
    );
}

fn enroll_changes_redirection(c: &mut Cluster, dir: &Path, outsider: &Pod, strict: &Pod) {
    assert!(outsider.redirect_rules().expect("rules").absent());
    // STRICT refuses the outsider's plaintext.
    assert!(
        outsider
            .tcp_echo_result(strict.echo_tcp(), "x")
            .expect("run")
            .is_err()
    );
    let out = weftctl(dir, &["enroll", "plain"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_in_mesh(outsider, CONVERGE).expect("enrolled");
    // In the mesh now: mTLS, so STRICT lets it in, and the server sees it.
    let reply = outsider
        .tcp_echo(strict.echo_tcp(), "enrolled")
        .expect("mTLS to the STRICT pod");
    assert_eq!(reply.peer.ip(), outsider.ip());
    let workloads = weftctl(dir, &["workloads", "-n", "plain", "-o", "json"]);
    assert!(
        workloads.stdout.contains("TUNNEL_PROTOCOL_HBONE"),
        "{}",
        workloads.stdout
    );
    let out = weftctl(dir, &["unenroll", "plain"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_redirected(outsider, false, CONVERGE)
        .expect("unenrolled");
    eventually("STRICT to refuse the outsider again", CONVERGE, || {
        outsider
            .tcp_echo_result(strict.echo_tcp(), "x")
            .is_ok_and(|r| r.is_err())
    });
}

fn check_flags_removed_rules(c: &Cluster, dir: &Path, server: &Pod) {
    eventually("a healthy cluster to pass check", CONVERGE, || {
        let out = weftctl(dir, &["check"]);
        match out.code {
            0 => Ok(()),
            _ => Err(format!("\n{}{}", out.stdout, out.stderr)),
        }
    });
    // The agent re-applies rules at its next resync (2 s in the harness):
    // remove them and look at once, a few times if the agent is quicker.
    let mut flagged = None;
    for _ in 0..10 {
        let _ = server.exec("nft", &["delete", "table", "inet", "weft"]);
        let _ = server.exec(
            "ip",
            &["rule", "del", "fwmark", "0x111/0xfff", "lookup", "100"],
        );
        let out = weftctl(dir, &["check", "-o", "json"]);
        if out.code == 5 && out.stdout.contains("shop/server") {
            flagged = Some(out);
            break;
        }
    }
    let out = flagged.expect("check never flagged the pod whose rules were removed");
    let doc: Value = serde_json::from_str(&out.stdout).expect("check json");
    assert_eq!(doc["ok"], false);
    let finding = doc["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["status"] == "fail"
                && f["target"]
                    .as_str()
                    .is_some_and(|t| t.contains("shop/server"))
        })
        .unwrap_or_else(|| panic!("no failing finding for shop/server: {doc}"));
    assert_eq!(finding["check"], "coverage", "{finding}");
    assert!(
        finding["fix"].as_str().is_some_and(|f| !f.is_empty()),
        "{finding}"
    );
    // And the agent puts them back; check passes again.
    c.wait_redirected(server, true, CONVERGE)
        .expect("rules re-applied");
    eventually("check to pass again", CONVERGE, || {
        weftctl(dir, &["check"]).code == 0
    });
}

/// L7 policies at the waypoint: one targets the Service, one the waypoint's
/// Gateway, one AUDITs; the destination's own (selector) policy is enforced
/// by the waypoint with the real client, and by ztunnel in its L4 form.
/// TCP through the waypoint gets their L4 form: the DENY rules name port 80,
/// so they leave port 7001 alone, where one ALLOW rule has no L7 field.
const WAYPOINT_POLICIES: &str = r#"apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-allow, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {methods: [GET, POST], paths: ["/public/*"]}}]
  - from: [{source: {principals: [cluster.local/ns/shop/sa/other]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {ports: ["7001"]}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: waypoint-deny, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {ports: ["80"], paths: ["/public/admin"]}}]
  - to: [{operation: {ports: ["80"]}}]
    when: [{key: "request.headers[x-block]", values: ["*"]}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-audit, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: AUDIT
  rules:
  - to: [{operation: {methods: [POST]}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: api-own, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/other]}}]
    to: [{operation: {paths: ["/private/*"]}}]
"#;

/// `weftctl waypoint apply`, then the harness runs the Gateway it wrote;
/// a Service bound to it by label gets its traffic, and a request through
/// it reaches the server from the waypoint.
fn waypoint_apply_serves_traffic(
    c: &mut Cluster,
    dir: &Path,
    client: &Pod,
) -> (Pod, Service, Waypoint) {
    let api = add_pod(c, "shop", "api", 2, true);
    let svc = c
        .add_service(
            ServiceSpec::new("shop", "api")
                .select("app", "api")
                .label("weft.dev/use-waypoint", "waypoint")
                .http_port("http", 80, api.echo_http().port())
                .port("tcp", 7001, api.echo_tcp().port()),
        )
        .expect("service api");
    let out = weftctl(
        dir,
        &["waypoint", "apply", "-n", "shop", "--name", "waypoint"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let running = c.reconcile_waypoints().expect("reconcile waypoints");
    let waypoint = running
        .into_iter()
        .find(|w| w.namespace() == "shop" && w.name() == "waypoint")
        .expect("the harness runs the Gateway weftctl wrote");
    c.wait_service_bound(&svc, &waypoint, CONVERGE)
        .expect("api bound to the waypoint");
    c.apply("weftctl-waypoint-policies", WAYPOINT_POLICIES)
        .expect("apply");
    let names = ["api-allow", "waypoint-deny", "api-audit", "api-own"];
    c.wait_for_waypoint(&waypoint, "policies", "/policies", CONVERGE, |v| {
        let t = v.to_string();
        names.iter().all(|p| t.contains(p))
    })
    .expect("policies reach the waypoint");
    c.wait_for_ztunnel_of(&api, "policies", "/policies", CONVERGE, |v| {
        v.to_string().contains("api-own")
    })
    .expect("policies reach the ztunnels");

    // weftctl sees it ready, with the address the harness gave it, and
    // what binds to it.
    let out = weftctl(dir, &["waypoint", "list", "-n", "shop", "-o", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ip = waypoint.ip().to_string();
    let listed: Value = serde_json::from_str(&out.stdout).expect("waypoint list json");
    let entry = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["namespace"] == "shop" && w["name"] == "waypoint")
        .unwrap_or_else(|| panic!("shop/waypoint not listed: {listed}"));
    assert_eq!(entry["ready"], true, "{entry}");
    assert_eq!(entry["addresses"], serde_json::json!([ip]), "{entry}");
    assert!(
        entry["bound"]
            .as_array()
            .is_some_and(|b| b.iter().any(|x| x == "service/shop/api")),
        "{entry}"
    );
    // A real request through it: the server sees the waypoint connect.
    let url = format!(
        "http://{}/public/hello",
        svc.addr("http").expect("http port")
    );
    let (status, body) = client.http("GET", &url, &[]).expect("request");
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(body.trim()).expect("echo reply");
    let peer = reply["peer"].as_str().unwrap_or_default();
    assert!(
        peer.starts_with(&format!("{ip}:")),
        "the server is reached from the waypoint ({ip}): {reply}"
    );
    (api, svc, waypoint)
}

/// `tap --to SERVICE` shows the requests the waypoint handled, with their
/// status: one allowed, one refused.
fn tap_shows_requests(dir: &Path, client: &Pod, svc: &Service) {
    let base = format!("http://{}", svc.addr("http").expect("http port"));
    let request = |events: &[Value], line: &str, status: u64| {
        events.iter().any(|e| {
            e["kind"] == "request"
                && e["reporter"] == "waypoint shop/waypoint"
                && e["request"].as_str().is_some_and(|r| r.contains(line))
                && e["status"] == status
        })
    };
    tap_until(
        dir,
        &["-n", "shop", "--to", "shop/api"],
        || {
            let ok = client.http("GET", &format!("{base}/public/tapped"), &[]);
            assert!(matches!(ok, Ok((200, _))), "{ok:?}");
            let refused = client.http("DELETE", &format!("{base}/public/tapped"), &[]);
            assert!(matches!(refused, Ok((403, _))), "{refused:?}");
        },
        |events| {
            request(events, "GET /public/tapped", 200)
                && request(events, "DELETE /public/tapped", 403)
        },
    );
}

/// Requests through the waypoint (the Service's HTTP port), a TCP
/// connection through it, and the pod addressed directly (no waypoint: the
/// destination's own policy in its L4 form at ztunnel).
fn waypoint_cases<'p>(table: &mut ExplainTable<'p>, pods: &'p Pods, api: &Pod, svc: &Service) {
    let http = svc.addr("http").expect("http port");
    let to = format!("svc/shop/api:{}", http.port());
    let request = |table: &mut ExplainTable<'p>,
                   from: &'p Pod,
                   method: &'static str,
                   path: &str,
                   header: Option<(&'static str, &'static str)>,
                   expect: bool| {
        let mut flags = vec!["--method", method, "--path", path];
        let header_flag = header.map(|(k, v)| format!("{k}={v}"));
        if let Some(h) = &header_flag {
            flags.extend(["--header", h.as_str()]);
        }
        let url = format!("http://{http}{path}");
        table.add(
            from,
            to.clone(),
            &flags,
            expect,
            http_probe(method, url, header.into_iter().collect()),
        );
    };
    let (client, other) = (&pods.client, &pods.other);
    request(table, client, "GET", "/public/a", None, true);
    request(table, client, "POST", "/public/a", None, true); // audited
    request(table, client, "DELETE", "/public/a", None, false);
    request(table, client, "GET", "/private/a", None, false);
    request(table, client, "GET", "/public/admin", None, false);
    request(
        table,
        client,
        "GET",
        "/public/a",
        Some(("x-block", "1")),
        false,
    );
    request(table, other, "GET", "/public/a", None, true);
    request(table, other, "POST", "/public/a", None, false);
    request(table, other, "GET", "/private/a", None, false); // api-own
    // Not HTTP: the waypoint's TCP mode, the policies' L4 form.
    let tcp = svc.addr("tcp").expect("tcp port");
    for (from, expect) in [(client, true), (other, false)] {
        table.add(
            from,
            format!("svc/shop/api:{}", tcp.port()),
            &["--protocol", "tcp"],
            expect,
            tcp_probe(tcp),
        );
    }
    // The pod addressed directly: the Service's waypoint is not on the
    // path; ztunnel enforces api-own in its L4 form (DENY from other).
    let direct = api.echo_http();
    for (from, expect) in [(client, true), (other, false)] {
        table.add(
            from,
            format!("pod/shop/api:{}", direct.port()),
            &["--method", "GET", "--path", "/public/a"],
            expect,
            http_probe("GET", format!("http://{direct}/public/a"), Vec::new()),
        );
    }
}

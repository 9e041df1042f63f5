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
//! - `check` flags a pod whose redirect rules were removed by hand.
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
use weft_e2e::{Cluster, ClusterConfig, Pod, PodSpec, ServiceSpec, ZtunnelMode};

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

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
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
    c.wait_for_ztunnels("policies", "/policies", CONVERGE, |v| {
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
    audit_is_logged(&c, &pods.audited);
    table.assert_coverage();
    enroll_changes_redirection(&mut c, &dir, &pods.outsider, &pods.strict);
    check_flags_removed_rules(&c, &dir, &pods.server);

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
    wait_until("bytes to grow", CONVERGE, || {
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

/// Runs `weftctl tap ARGS -o json` while `traffic` runs; returns the events.
fn tap_during(dir: &Path, args: &[&str], traffic: impl FnOnce()) -> Vec<Value> {
    let mut all = vec!["tap", "-o", "json", "--duration", "30"];
    all.extend_from_slice(args);
    let child = weftctl_command(dir, &all)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tap");
    // Let the streams open before the traffic: tap prints nothing until an
    // event comes, so wait until each proxy shows a tap reader... which the
    // admin APIs do not say; give it a moment instead.
    std::thread::sleep(Duration::from_secs(1));
    traffic();
    let out = child.wait_with_output().expect("tap output");
    assert!(
        out.status.success(),
        "tap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn tap_shows_a_connection(dir: &Path, client: &Pod, audited: &Pod) {
    // Two events: the open on each side (or an open and a close).
    let events = tap_during(dir, &["-n", "shop", "--count", "2"], || {
        client.tcp_echo(audited.echo_tcp(), "tapped").expect("echo");
    });
    let to_audited = |e: &&Value| {
        e["connection"]["source"]["workload"] == "shop/client"
            && e["connection"]["destination"]["workload"] == "shop/audited"
    };
    let ours: Vec<&Value> = events.iter().filter(to_audited).collect();
    assert!(
        !ours.is_empty(),
        "tap shows the connection client -> audited: {events:?}"
    );
    assert!(
        ours.iter().all(|e| e["reporter"]
            .as_str()
            .is_some_and(|r| r.starts_with("ztunnel "))),
        "{ours:?}"
    );
    assert!(ours.iter().any(|e| e["kind"] == "open"), "{ours:?}");
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

/// The AUDIT rule explain reported was recorded by the real enforcer: the
/// audited pod's ztunnel logged it.
fn audit_is_logged(c: &Cluster, audited: &Pod) {
    let node = audited.node();
    let dir = c.dir().join("nodes").join(node);
    wait_until("the audit line in ztunnel's log", CONVERGE, || {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.starts_with("ztunnel")
                    && name.ends_with(".log")
                    && std::fs::read_to_string(f.path()).is_ok_and(|t| {
                        t.lines()
                            .any(|l| l.contains("audit") && l.contains("audit-all"))
                    })
            })
    });
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
    wait_until("STRICT refuses the outsider again", CONVERGE, || {
        outsider
            .tcp_echo_result(strict.echo_tcp(), "x")
            .is_ok_and(|r| r.is_err())
    });
}

fn check_flags_removed_rules(c: &Cluster, dir: &Path, server: &Pod) {
    let mut out = weftctl(dir, &["check"]);
    let start = Instant::now();
    while out.code != 0 && start.elapsed() < CONVERGE {
        std::thread::sleep(Duration::from_millis(500));
        out = weftctl(dir, &["check"]);
    }
    assert_eq!(
        out.code, 0,
        "a healthy cluster passes:\n{}{}",
        out.stdout, out.stderr
    );
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
    wait_until("check to pass again", CONVERGE, || {
        weftctl(dir, &["check"]).code == 0
    });
}

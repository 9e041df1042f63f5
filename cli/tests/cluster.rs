//! weftctl on a real local cluster of the e2e harness (network-namespace
//! nodes, the controller, node agents, ztunnels, pods attached by the real
//! CNI chain): its tables and JSON match what the components hold, `tap`
//! shows a connection, `enroll`/`unenroll` change redirection, `check` flags a
//! pod whose rules were removed by hand, and `explain` agrees with real
//! traffic on a table of cases. Needs root, like the e2e suite:
//! `cargo test -p weftctl --test cluster -- --ignored --nocapture`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

fn weftctl(dir: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("--run-dir")
        .arg(dir)
        .args(["--timeout", "10"])
        .args(args)
        .env_remove("WEFT_RUN_DIR")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run weftctl");
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

fn policies(server_port: u16) -> String {
    format!(
        r#"apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: server}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/client]}}}}]
    to: [{{operation: {{ports: ["{server_port}"]}}}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: PeerAuthentication
metadata: {{name: strict, namespace: shop}}
spec: {{selector: {{matchLabels: {{app: strict}}}}, mtls: {{mode: STRICT}}}}
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: deny-delete, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: l7deny}}}}
  action: DENY
  rules:
  - to: [{{operation: {{methods: [DELETE]}}}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-get, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: l7allow}}}}
  rules:
  - to: [{{operation: {{methods: [GET]}}}}]
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: audit-all, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: audited}}}}
  action: AUDIT
  rules:
  - {{}}
---
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: deny-other, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: audited}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/other]}}}}]
"#
    )
}

#[test]
#[ignore = "blocked on ztunnel: a pod handed over before its Workload arrives gets a certificate request for sa `default`, refused forever; run with --ignored once fixed"]
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
    let pod = |c: &mut Cluster, ns: &str, name: &str, node: usize, app: &str, echo: bool| {
        let mut spec = PodSpec::new(ns, name)
            .on_node(node)
            .service_account(name)
            .label("app", app);
        if echo {
            spec = spec.echo_server();
        }
        let p = c.add_pod(spec).expect("pod");
        if ns == "shop" {
            // One at a time: each pod fully in the mesh before the next.
            c.wait_in_mesh(&p, CONVERGE).expect("in mesh");
        }
        p
    };
    let client = pod(&mut c, "shop", "client", 1, "client", false);
    let other = pod(&mut c, "shop", "other", 1, "other", false);
    let server = pod(&mut c, "shop", "server", 2, "server", true);
    let strict = pod(&mut c, "shop", "strict", 2, "strict", true);
    let audited = pod(&mut c, "shop", "audited", 2, "audited", true);
    let l7deny = pod(&mut c, "shop", "l7deny", 2, "l7deny", true);
    let l7allow = pod(&mut c, "shop", "l7allow", 2, "l7allow", true);
    let outsider = pod(&mut c, "plain", "outsider", 1, "outsider", false);
    let web = pod(&mut c, "plain", "web", 2, "web", true);
    let svc = c
        .add_service(
            ServiceSpec::new("shop", "server")
                .select("app", "server")
                .port("tcp", 7000, server.echo_tcp().port()),
        )
        .expect("service");
    c.apply("weftctl-policies", &policies(server.echo_tcp().port()))
        .expect("apply");
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

    tunnels_and_certs_match(&c, &dir, &client, &server);
    tap_shows_a_connection(&dir, &client, &audited);
    explain_agrees_with_traffic(
        &dir,
        &[&client, &other, &outsider],
        &[&server, &strict, &audited, &l7deny, &l7allow, &web],
        svc.addr("tcp").expect("service port"),
    );
    enroll_changes_redirection(&mut c, &dir, &outsider);
    check_flags_removed_rules(&c, &dir, &server);

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
    let served = c
        .ztunnel_admin(2, "/connections")
        .expect("connections")
        .to_string();
    assert!(served.contains(&identity(client)), "{served}");
    exchange(100_000);
    let mut after = before;
    wait_until("bytes to grow", CONVERGE, || {
        after = sent_to(&weftctl(dir, &["tunnels", "-o", "json"])).unwrap_or(0);
        after >= before + 100_000
    });
    let table = weftctl(dir, &["tunnels", "-n", "shop"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains("shop/client"), "{}", table.stdout);
    drop(held);

    // Certificates: what weftctl prints is what each ztunnel serves.
    let out = weftctl(dir, &["certs", "-o", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let printed: Vec<CertsResponse> = serde_json::from_str(&out.stdout).expect("json");
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

fn tap_shows_a_connection(dir: &Path, client: &Pod, audited: &Pod) {
    let child = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("--run-dir")
        .arg(dir)
        .args([
            "tap",
            "-n",
            "shop",
            "-o",
            "json",
            "--count",
            "1",
            "--duration",
            "30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tap");
    // Let the stream open before the connection.
    std::thread::sleep(Duration::from_secs(1));
    client.tcp_echo(audited.echo_tcp(), "tapped").expect("echo");
    let out = child.wait_with_output().expect("tap output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        event.to_string().contains("shop/"),
        "the event names a shop workload: {event}"
    );
}

/// Real traffic from a pod: true when the connection (request) succeeds.
type Probe = Box<dyn Fn(&Pod) -> bool>;

fn explain_agrees_with_traffic(
    dir: &Path,
    clients: &[&Pod],
    servers: &[&Pod],
    service: SocketAddr,
) {
    let mut rows = Vec::new();
    let mut targets: Vec<(String, Probe)> = Vec::new();
    for s in servers {
        let addr = s.echo_tcp();
        targets.push((
            format!("pod/{}/{}:{}", s.namespace(), s.name(), addr.port()),
            Box::new(move |from: &Pod| matches!(from.tcp_echo_result(addr, "probe"), Ok(Ok(_)))),
        ));
    }
    // The server's HTTP port: only the TCP port is allowed.
    let http = servers[0].echo_http();
    targets.push((
        format!("pod/shop/server:{}", http.port()),
        Box::new(move |from: &Pod| {
            matches!(
                from.http("GET", &format!("http://{http}/"), &[]),
                Ok((200, _))
            )
        }),
    ));
    targets.push((
        format!("svc/shop/server:{}", service.port()),
        Box::new(move |from: &Pod| matches!(from.tcp_echo_result(service, "probe"), Ok(Ok(_)))),
    ));
    for from in clients {
        for (to, traffic) in &targets {
            // A client outside the mesh has no route to a VIP (no kube-proxy
            // in the namespace cluster): only meshed clients use the Service.
            if to.starts_with("svc/") && from.namespace() == "plain" {
                continue;
            }
            let out = weftctl(dir, &["explain", "--from", &from.key(), "--to", to]);
            assert!(
                out.code == 0 || out.code == 6,
                "explain {to}: {}",
                out.stderr
            );
            let explained = out.code == 0;
            let actual = traffic(from);
            rows.push(format!(
                "{:<16} -> {:<28} explain: {:<7} traffic: {}",
                from.key(),
                to,
                if explained { "allow" } else { "deny" },
                if actual { "allow" } else { "deny" }
            ));
            assert_eq!(
                explained,
                actual,
                "explain and traffic disagree for {} -> {to}:\n{}\n{}",
                from.key(),
                out.stdout,
                rows.join("\n")
            );
        }
    }
    eprintln!("explain vs traffic:\n{}", rows.join("\n"));
    assert!(rows.len() >= 20, "{} cases", rows.len());
    let allowed = rows
        .iter()
        .filter(|r| r.ends_with("traffic: allow"))
        .count();
    assert!(allowed > 0 && allowed < rows.len(), "both outcomes occur");
}

fn enroll_changes_redirection(c: &mut Cluster, dir: &Path, outsider: &Pod) {
    assert!(outsider.redirect_rules().expect("rules").absent());
    let out = weftctl(dir, &["enroll", "plain"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_redirected(outsider, true, CONVERGE)
        .expect("enrolled");
    let out = weftctl(dir, &["unenroll", "plain"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_redirected(outsider, false, CONVERGE)
        .expect("unenrolled");
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
        let out = weftctl(dir, &["check"]);
        if out.code == 5 && out.stdout.contains("shop/server") {
            flagged = Some(out);
            break;
        }
    }
    let out = flagged.expect("check never flagged the pod whose rules were removed");
    assert!(out.stdout.contains("WHAT TO DO"), "{}", out.stdout);
    // And the agent puts them back.
    c.wait_redirected(server, true, CONVERGE)
        .expect("rules re-applied");
}

//! weftctl, the binary, against a local run directory whose components are
//! stand-ins speaking the real wire types (see tests/support).

mod support;

use support::{Answer, run, weftctl};
use weft_api::admin::{
    CertInfo, CertState, CertsResponse, ConnectionInfo, ConnectionsResponse, Direction, Peer,
    TapEvent, TapKind, Transport,
};
use weft_cni::report::PodCoverage;

const CLUSTER: &str = include_str!("fixtures/explain-cluster.yaml");

fn connection(id: u64, src: &str, dst: &str, sent: u64) -> ConnectionInfo {
    ConnectionInfo {
        id,
        direction: Direction::Inbound,
        transport: Transport::Hbone,
        source: Peer {
            address: "10.244.1.10:40000".into(),
            workload: Some(src.into()),
            identity: Some("spiffe://cluster.local/ns/mesh/sa/client".into()),
        },
        destination: Peer {
            address: "10.244.2.10:8080".into(),
            workload: Some(dst.into()),
            identity: Some("spiffe://cluster.local/ns/mesh/sa/server".into()),
        },
        waypoint: None,
        bytes_sent: sent,
        bytes_received: 42,
        opened_at_ms: 1_700_000_000_000,
        age_ms: 1500,
    }
}

fn connections(node: &str, conns: Vec<ConnectionInfo>) -> ConnectionsResponse {
    ConnectionsResponse {
        node: node.into(),
        connections: conns,
        pool: Vec::new(),
    }
}

fn cert(identity: &str, hours_left: i64) -> CertInfo {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .expect("time")
    };
    CertInfo {
        identity: identity.into(),
        state: CertState::Valid,
        serial: Some("0a:1b".into()),
        not_before: Some(fmt(now - time::Duration::hours(1))),
        not_after: Some(fmt(now + time::Duration::hours(hours_left))),
        renew_at: Some(fmt(now + time::Duration::hours(hours_left / 2))),
        chain_pem: Vec::new(),
        last_error: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_match_what_the_ztunnels_serve() {
    let r = run(&["node-1", "node-2"], CLUSTER).await;
    let n1 = connections(
        "node-1",
        vec![connection(1, "mesh/client", "mesh/server", 1 << 20)],
    );
    let n2 = connections(
        "node-2",
        vec![
            connection(7, "mesh/client", "mesh/server", 5000),
            connection(8, "plain/outsider", "wp/api", 10),
        ],
    );
    r.set_json(0, "/connections", &n1);
    r.set_json(1, "/connections", &n2);

    let out = weftctl(&r, &["tunnels", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let got: Vec<ConnectionsResponse> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(got, vec![n1.clone(), n2.clone()]);

    let out = weftctl(&r, &["tunnels"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("NODE"), "{}", out.stdout);
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(out.stdout.contains("1.0MiB"), "{}", out.stdout);
    assert!(out.stdout.contains("mesh/client"), "{}", out.stdout);

    // Byte counts grow: the next read shows the new figure.
    r.set_json(
        0,
        "/connections",
        &connections(
            "node-1",
            vec![connection(1, "mesh/client", "mesh/server", 3 << 20)],
        ),
    );
    let out = weftctl(&r, &["tunnels", "--node", "node-1", "-o", "yaml"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("bytesSent: 3145728"), "{}", out.stdout);

    let out = weftctl(&r, &["tunnels", "-n", "wp", "-o", "json"]).await;
    let got: Vec<ConnectionsResponse> = serde_json::from_str(&out.stdout).expect("json");
    let ids: Vec<u64> = got
        .iter()
        .flat_map(|r| r.connections.iter().map(|c| c.id))
        .collect();
    assert_eq!(ids, [8]);

    let out = weftctl(&r, &["tunnels", "--node", "node-9"]).await;
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("node-1, node-2"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_nodes_are_named_and_partial_output_is_flagged() {
    let r = run(&["node-1", "node-2"], CLUSTER).await;
    r.set_json(0, "/connections", &connections("node-1", Vec::new()));
    std::fs::remove_file(r.path().join("nodes/node-2/ztunnel-admin.sock")).expect("rm");

    let out = weftctl(&r, &["tunnels", "-o", "json"]).await;
    assert_eq!(out.code, 7, "{out:?}");
    assert!(out.stderr.contains("ztunnel on node-2"), "{}", out.stderr);
    let got: Vec<ConnectionsResponse> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(got.len(), 1);

    let out = weftctl(&r, &["tunnels", "--node", "node-2"]).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("unreachable"), "{}", out.stderr);
    assert!(out.stderr.contains("hint:"), "{}", out.stderr);

    // A component answering garbage is an error of its own (1), not "unreachable".
    r.set(0, "/connections", Answer::Ok("{not json".into()));
    let out = weftctl(&r, &["tunnels", "--node", "node-1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("invalid /connections"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_match_what_the_ztunnels_serve() {
    let r = run(&["node-1"], CLUSTER).await;
    let certs = CertsResponse {
        node: "node-1".into(),
        certificates: vec![
            cert("spiffe://cluster.local/ns/mesh/sa/client", 24),
            cert("spiffe://cluster.local/ns/wp/sa/api", 24),
        ],
    };
    r.set_json(0, "/certs", &certs);
    let out = weftctl(&r, &["certs", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let got: Vec<CertsResponse> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(got, vec![certs.clone()]);

    let out = weftctl(&r, &["certs", "-n", "wp"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ns/wp/sa/api"), "{}", out.stdout);
    assert!(!out.stdout.contains("ns/mesh/sa/client"), "{}", out.stdout);
    assert!(out.stdout.contains("0a:1b"), "{}", out.stdout);
    // Rotation at half-life: about 12 hours from now.
    assert!(
        out.stdout.contains("in 11h") || out.stdout.contains("in 12h"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_reads_from_the_controller_and_the_ztunnels() {
    let r = run(&["node-1"], CLUSTER).await;
    let out = weftctl(&r, &["workloads", "-n", "mesh", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let got: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("json");
    let names: Vec<&str> = got.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "audited", "client", "far", "l7allow", "l7deny", "other", "server", "strict"
        ]
    );
    assert_eq!(got[1]["protocol"], "TUNNEL_PROTOCOL_HBONE");

    let out = weftctl(&r, &["workloads", "--node", "node-1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("waypoint-0"), "{}", out.stdout);
    assert!(out.stdout.contains("HBONE (waypoint)"), "{}", out.stdout);
    assert!(!out.stdout.contains("l7deny"), "{}", out.stdout);

    let out = weftctl(&r, &["services", "-n", "wp"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("80->8080"), "{}", out.stdout);
    assert!(out.stdout.contains("wp/waypoint"), "{}", out.stdout);

    let out = weftctl(&r, &["policies", "-o", "wide"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("deny-delete"), "{}", out.stdout);
    assert!(
        out.stdout.contains("waypoint: Gateway wp/waypoint"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("whole connection"), "{}", out.stdout);

    // What a ztunnel holds, with the node that reported it.
    r.set(
        0,
        "/workloads",
        Answer::Ok(
            r#"{"workloads":[{"uid":"u1","name":"client","namespace":"mesh","serviceAccount":"client","trustDomain":"cluster.local","node":"node-1","addresses":["10.244.1.10"],"protocol":"TUNNEL_PROTOCOL_HBONE"}]}"#.into(),
        ),
    );
    let out = weftctl(&r, &["workloads", "--from", "ztunnel", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let got: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["seenBy"], "node-1");
    assert_eq!(got[0]["uid"], "u1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_streams_events() {
    let r = run(&["node-1"], CLUSTER).await;
    let event = |kind, dst: &str| TapEvent {
        time_ms: 1_700_000_000_000,
        kind,
        connection: connection(3, "mesh/client", dst, 10),
        verdict: Some("allow".into()),
        request: None,
        status: None,
        dropped: 0,
    };
    let lines: Vec<String> = [
        event(TapKind::Open, "mesh/server"),
        event(TapKind::Open, "plain/web"),
        event(TapKind::Close, "mesh/server"),
    ]
    .iter()
    .map(|e| serde_json::to_string(e).expect("json"))
    .collect();
    r.set(0, "/tap", Answer::Ok(lines.join("\n") + "\n"));

    let out = weftctl(&r, &["tap", "-o", "json", "--count", "2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["reporter"], "ztunnel node-1");
    assert_eq!(events[0]["kind"], "open");

    // Only connections to the Service (its endpoints' workloads).
    let out = weftctl(&r, &["tap", "--to", "mesh/server"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let body: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(body.len(), 2, "{}", out.stdout);
    assert!(
        body.iter().all(|l| l.contains("mesh/server")),
        "{}",
        out.stdout
    );
    assert!(body[1].contains("close"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flags_a_pod_whose_rules_are_gone() {
    let r = run(&["node-1", "node-2"], CLUSTER).await;
    for i in 0..2 {
        r.set_json(
            i,
            "/certs",
            &CertsResponse {
                node: r.nodes[i].name.clone(),
                certificates: vec![cert("spiffe://cluster.local/ns/mesh/sa/client", 24)],
            },
        );
    }
    let out = weftctl(&r, &["check"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("all checks passed"), "{}", out.stdout);

    r.nodes[1]
        .coverage
        .lock()
        .expect("report")
        .pods
        .push(PodCoverage {
            namespace: "mesh".into(),
            name: "server".into(),
            uid: "u".into(),
            should_enroll: true,
            enrolled: true,
            problems: vec!["redirect rules incomplete".into()],
            ..PodCoverage::default()
        });
    let out = weftctl(&r, &["check"]).await;
    assert_eq!(out.code, 5, "{out:?}");
    assert!(
        out.stdout.contains("mesh/server on node-2"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("redirect rules incomplete"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("WHAT TO DO"), "{}", out.stdout);

    let out = weftctl(&r, &["check", "-o", "json"]).await;
    assert_eq!(out.code, 5, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(report["ok"], false);

    // A ztunnel that is not ready, a certificate near expiry, a CNI config
    // without the plugin.
    r.nodes[1].coverage.lock().expect("report").pods.clear();
    r.set(
        0,
        "/healthz/ready",
        Answer::Status(503, "no config yet".into()),
    );
    r.set_json(
        1,
        "/certs",
        &CertsResponse {
            node: "node-2".into(),
            certificates: vec![cert("spiffe://cluster.local/ns/mesh/sa/server", 1)],
        },
    );
    std::fs::write(
        r.path().join("nodes/node-2/cni/net.d/10-weft.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}"#,
    )
    .expect("conflist");
    let out = weftctl(&r, &["check", "-o", "json"]).await;
    assert_eq!(out.code, 5, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    let failed: Vec<(String, String)> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["status"] == "fail")
        .map(|f| {
            (
                f["check"].as_str().unwrap_or_default().to_string(),
                f["target"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        failed.contains(&("ztunnel".into(), "node-1".into())),
        "{failed:?}"
    );
    assert!(
        failed.contains(&("cni".into(), "node-2".into())),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|(c, t)| c == "certs" && t.contains("sa/server")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_and_unenroll_rewrite_the_namespace() {
    let r = run(&["node-1"], CLUSTER).await;
    let out = weftctl(&r, &["enroll", "plain"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let state = weft_cluster::registry::files::load_dir(&r.manifests(), &Default::default());
    let ns = |name: &str| {
        state
            .namespaces
            .get(&weft_cluster::registry::ObjectKey::new("", name))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        ns("plain")
            .get("weft.dev/dataplane-mode")
            .map(String::as_str),
        Some("ambient")
    );
    // The other documents of the file are untouched, comments included.
    let text = std::fs::read_to_string(r.manifests().join("cluster.yaml")).expect("read");
    assert!(text.contains("# A small cluster for `weftctl explain`"));

    let out = weftctl(&r, &["unenroll", "plain"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let state = weft_cluster::registry::files::load_dir(&r.manifests(), &Default::default());
    let labels = state
        .namespaces
        .get(&weft_cluster::registry::ObjectKey::new("", "plain"))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    assert!(!labels.contains_key("weft.dev/dataplane-mode"));

    let out = weftctl(&r, &["enroll", "nosuch"]).await;
    assert_eq!(out.code, 4, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_apply_list_delete() {
    let r = run(&["node-1"], CLUSTER).await;
    let out = weftctl(
        &r,
        &[
            "waypoint",
            "apply",
            "-n",
            "mesh",
            "--for",
            "all",
            "--enroll-namespace",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let state = weft_cluster::registry::files::load_dir(&r.manifests(), &Default::default());
    assert!(state.invalid.is_empty(), "{:?}", state.invalid);
    let gw = state
        .gateways
        .get(&weft_cluster::registry::ObjectKey::new("mesh", "waypoint"))
        .expect("gateway");
    assert_eq!(gw.spec.gateway_class_name, "weft-waypoint");
    let listener = &gw.spec.listeners[0];
    assert_eq!(
        (
            listener.name.as_str(),
            listener.port,
            listener.protocol.as_str()
        ),
        ("mesh", 15008, "HBONE")
    );
    assert_eq!(
        gw.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("weft.dev/waypoint-for"))
            .map(String::as_str),
        Some("all")
    );
    let ns = state
        .namespaces
        .get(&weft_cluster::registry::ObjectKey::new("", "mesh"))
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    assert_eq!(
        ns.get("weft.dev/use-waypoint").map(String::as_str),
        Some("waypoint")
    );

    let out = weftctl(&r, &["waypoint", "list", "-o", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("json");
    let names: Vec<String> = list
        .iter()
        .map(|w| {
            format!(
                "{}/{} ready={}",
                w["namespace"].as_str().unwrap_or_default(),
                w["name"].as_str().unwrap_or_default(),
                w["ready"]
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "mesh/waypoint ready=false",
            "wl/wl-waypoint ready=true",
            "wp/broken ready=false",
            "wp/waypoint ready=true"
        ]
    );

    let out = weftctl(&r, &["waypoint", "delete", "-n", "mesh"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = weftctl(&r, &["waypoint", "delete", "-n", "mesh"]).await;
    assert_eq!(out.code, 4, "{out:?}");
    let out = weftctl(&r, &["waypoint", "apply", "-n", "nosuch"]).await;
    assert_eq!(out.code, 4, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_exit_codes_and_completions() {
    let r = run(&["node-1"], CLUSTER).await;
    let out = weftctl(
        &r,
        &[
            "explain",
            "-n",
            "mesh",
            "--from",
            "client",
            "--to",
            "server:80",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("VERDICT  ALLOWED"), "{}", out.stdout);
    let out = weftctl(
        &r,
        &[
            "explain",
            "-n",
            "mesh",
            "--from",
            "other",
            "--to",
            "server:80",
        ],
    )
    .await;
    assert_eq!(out.code, 6, "{out:?}");

    let policy = r.path().join("allow-other.yaml");
    std::fs::write(
        &policy,
        "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: allow-other, namespace: mesh}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/mesh/sa/other]}}]\n",
    )
    .expect("write");
    let policy = policy.display().to_string();
    let out = weftctl(
        &r,
        &[
            "explain",
            "-n",
            "mesh",
            "--from",
            "other",
            "--to",
            "server:80",
            "--with-file",
            &policy,
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("mesh/allow-other"), "{}", out.stdout);

    for shell in ["bash", "zsh", "fish"] {
        let out = weftctl(&r, &["completion", shell]).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("explain"), "{shell}");
    }
}

#[tokio::test]
async fn kubernetes_without_a_kubeconfig_is_unreachable() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["--kubeconfig", "/nonexistent/kubeconfig", "tunnels"])
        .env_remove("WEFT_RUN_DIR")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Kubernetes API server"), "{stderr}");
}

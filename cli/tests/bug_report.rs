//! `weftctl bug-report`, the binary, against a local run directory (see
//! tests/support): what the archive holds per component, that a node
//! that is down is an error entry and not a failure, and that the run's
//! real secrets (the CA key the controller's own code writes where the
//! harness keeps it, a bootstrap token, a service account token), leaked
//! into every channel the report reads, are nowhere in it.

mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use support::{Answer, Run, run, serve_admin, weftctl};
use weft_api::admin::{
    CertInfo, CertState, CertsResponse, ConfigDump, ConnectionsResponse, LoggingResponse, PodInfo,
    ProxyStatusReport,
};

const CLUSTER: &str = include_str!("fixtures/explain-cluster.yaml");

/// The files of a `.tar.gz`, by path under its top directory.
fn unpack(archive: &Path) -> (String, BTreeMap<String, Vec<u8>>) {
    let file = std::fs::File::open(archive).expect("open archive");
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut top = String::new();
    let mut files = BTreeMap::new();
    for entry in tar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").display().to_string();
        let (dir, rest) = path.split_once('/').expect("under a top directory");
        top = dir.to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        files.insert(rest.to_string(), bytes);
    }
    (top, files)
}

fn json(files: &BTreeMap<String, Vec<u8>>, path: &str) -> serde_json::Value {
    let bytes = files.get(path).unwrap_or_else(|| panic!("{path} missing"));
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text(files: &BTreeMap<String, Vec<u8>>, path: &str) -> String {
    String::from_utf8_lossy(files.get(path).unwrap_or_else(|| panic!("{path} missing")))
        .into_owned()
}

/// The run's secrets, where the e2e harness keeps them
/// (e2e/src/components/controller.rs): the root CA the controller writes in
/// files mode, and a bootstrap token per node.
struct Secrets {
    key_pem: String,
    key_lines: Vec<String>,
    root_pem: String,
    token: String,
    jwt: String,
}

fn make_secrets(r: &Run) -> Secrets {
    let ca = weft_controller::ca::root::load_or_create_files(
        &r.path().join("controller/ca"),
        "cluster.local",
    )
    .expect("root CA");
    let key_pem = ca.key_pem().to_string();
    let key_lines: Vec<String> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    assert!(!key_lines.is_empty());
    // Random like the harness's tokens (32 hex digits), so no fixed
    // string in this file can make the test pass by accident.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_nanos();
    let token = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
    let tokens = r.path().join("controller/tokens/nodes");
    std::fs::create_dir_all(&tokens).expect("tokens dir");
    std::fs::write(tokens.join("node-1"), &token).expect("token");
    let jwt = format!(
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IncxIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6d2VmdCJ9.{}",
        &token[..24]
    );
    Secrets {
        key_pem,
        key_lines,
        root_pem: ca.root_pem().to_string(),
        token,
        jwt,
    }
}

/// A ztunnel stand-in serving every read-only endpoint, with the secrets
/// leaked into its config dump and certificates.
fn serve_ztunnel(r: &Run, node: usize, s: &Secrets) {
    let name = r.nodes[node].name.clone();
    let workload = serde_json::json!({
        "uid": format!("uid-client-{name}"), "name": "client", "namespace": "mesh",
        "serviceAccount": "client", "trustDomain": "cluster.local", "node": name,
        "addresses": ["10.244.1.10"], "protocol": "TUNNEL_PROTOCOL_HBONE",
    });
    let dump = ConfigDump {
        node: name.clone(),
        // A bare token in prose: only the run's known secrets catch it.
        source: format!(
            "controller https://127.0.0.1:15012 (joined with {})",
            s.token
        ),
        version: 7,
        pods: vec![PodInfo {
            uid: format!("uid-client-{name}"),
            namespace: "mesh".into(),
            name: "client".into(),
            addresses: vec!["10.244.1.10".into()],
            listening: true,
        }],
        workloads: serde_json::json!([workload]),
        services: serde_json::json!([]),
        policies: serde_json::json!([]),
    };
    let mut dump = serde_json::to_value(&dump).expect("dump");
    dump["bootstrapToken"] = s.token.clone().into();
    dump["privateKey"] = s.key_pem.clone().into();
    dump["headers"] =
        serde_json::json!([{"name": "Authorization", "value": format!("Bearer {}", s.jwt)}]);
    r.set_json(node, "/config_dump", &dump);
    r.set_json(
        node,
        "/workloads",
        &serde_json::json!({"workloads": [workload]}),
    );
    r.set_json(node, "/services", &serde_json::json!({"services": []}));
    r.set_json(node, "/policies", &serde_json::json!({"policies": []}));
    r.set_json(
        node,
        "/certs",
        &CertsResponse {
            node: name.clone(),
            certificates: vec![CertInfo {
                identity: "spiffe://cluster.local/ns/mesh/sa/client".into(),
                state: CertState::Pending,
                serial: None,
                not_before: None,
                not_after: None,
                renew_at: None,
                chain_pem: vec![s.root_pem.clone()],
                last_error: Some(format!("CSR refused; key was\n{}", s.key_pem)),
            }],
        },
    );
    r.set_json(
        node,
        "/connections",
        &ConnectionsResponse {
            node: name,
            connections: Vec::new(),
            pool: Vec::new(),
        },
    );
    r.set_json(
        node,
        "/logging",
        &LoggingResponse {
            filter: "info".into(),
        },
    );
}

fn rfc3339(ago: time::Duration) -> String {
    (time::OffsetDateTime::now_utc() - ago)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time")
}

/// Component logs where the harness writes them, leaking every secret.
fn write_logs(r: &Run, s: &Secrets) {
    let now = rfc3339(time::Duration::seconds(5));
    let old = rfc3339(time::Duration::hours(2));
    let ztunnel = format!(
        "{old}  INFO weft_ztunnel: an old line before --since\n\
         {now}  INFO weft_ztunnel: connecting to the controller token={token}\n\
         {now} DEBUG weft_ztunnel: request headers: authorization: Bearer {jwt}\n\
         {now} DEBUG weft_ztunnel: loaded key\n{key}\
         {now}  INFO weft_ztunnel: ready\n",
        token = s.token,
        jwt = s.jwt,
        key = s.key_pem,
    );
    std::fs::write(r.path().join("nodes/node-1/ztunnel.log"), ztunnel).expect("ztunnel log");
    let controller = format!(
        "{}\n{}\n",
        serde_json::json!({"timestamp": now, "level": "INFO", "fields": {"message": "issued", "keyPem": s.key_pem}}),
        serde_json::json!({"timestamp": now, "level": "WARN", "fields": {"message": format!("node-1 presented {}", s.token)}}),
    );
    std::fs::create_dir_all(r.path().join("controller")).expect("controller dir");
    std::fs::write(r.path().join("controller/controller.log"), controller).expect("log");
    // An application's log is not the mesh's: it stays out.
    std::fs::create_dir_all(r.path().join("pods")).expect("pods dir");
    std::fs::write(
        r.path().join("pods/mesh-client.log"),
        "application output\n",
    )
    .expect("log");
}

/// A waypoint stand-in, listed in state.json as the harness lists one.
fn serve_waypoint(r: &Run) {
    let routes: support::Routes = Default::default();
    {
        let mut map = routes.lock().expect("routes");
        map.insert("/healthz/ready".into(), Answer::Ok("ready\n".into()));
        for path in weftctl::commands::bug_report::WAYPOINT_PATHS {
            map.insert(
                path.to_string(),
                Answer::Ok(r#"{"waypoint": "wp/waypoint"}"#.into()),
            );
        }
    }
    let socket = r.path().join("waypoints/wp-waypoint-admin.sock");
    serve_admin(&socket, routes);
    let state_path = r.path().join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).expect("state")).expect("json");
    state["waypoints"] =
        serde_json::json!([{"namespace": "wp", "name": "waypoint", "adminSocket": socket}]);
    std::fs::write(&state_path, state.to_string()).expect("state");
}

/// Every secret, in every file: the key's base64 (each line of it), the
/// token, the JWT and its signed parts.
fn assert_no_secret(files: &BTreeMap<String, Vec<u8>>, raw: &[u8], s: &Secrets) {
    let mut needles: Vec<&str> = s.key_lines.iter().map(String::as_str).collect();
    needles.push(&s.token);
    needles.push(&s.jwt);
    needles.extend(s.jwt.split('.'));
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for needle in &needles {
            assert!(
                !text.contains(needle),
                "{path} holds a secret ({needle}):\n{text}"
            );
        }
        assert!(!text.contains("PRIVATE KEY-----"), "{path}:\n{text}");
    }
    // Nor in the archive's own bytes (names, headers), should it be stored.
    let raw = String::from_utf8_lossy(raw);
    assert!(!raw.contains(&s.token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bug_report_holds_every_component_and_no_secret() {
    let r = run(&["node-1", "node-2", "node-3"], CLUSTER).await;
    let secrets = make_secrets(&r);
    serve_ztunnel(&r, 0, &secrets);
    serve_ztunnel(&r, 2, &secrets);
    // node-3's ztunnel refuses one endpoint, naming the secrets in its
    // answer: an error entry, redacted like the files.
    let refusal = format!("caller presented {} ({})", secrets.token, secrets.jwt);
    r.set(2, "/logging", Answer::Status(500, refusal));
    write_logs(&r, &secrets);
    serve_waypoint(&r);
    // node-2's ztunnel is down.
    std::fs::remove_file(r.path().join("nodes/node-2/ztunnel-admin.sock")).expect("rm");

    let out_dir = tempfile::tempdir().expect("tempdir");
    let archive = out_dir.path().join("report.tar.gz");
    let archive_arg = archive.display().to_string();
    let started = std::time::Instant::now();
    let out = weftctl(
        &r,
        &[
            "bug-report",
            "-f",
            &archive_arg,
            "--since",
            "1h",
            "-o",
            "json",
        ],
    )
    .await;
    eprintln!("bug-report took {:?}\n{}", started.elapsed(), out.stderr);
    // Partial: one component could not be read, the rest was collected.
    assert_eq!(out.code, 7, "{out:?}");
    assert!(out.stderr.contains("ztunnel on node-1: "), "{}", out.stderr);
    assert!(
        out.stderr.contains("weftctl: warning: ztunnel on node-2"),
        "{}",
        out.stderr
    );
    let summary: serde_json::Value = serde_json::from_str(&out.stdout).expect("summary");
    assert_eq!(summary["path"], archive_arg.as_str());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&archive).expect("archive").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        summary["bytes"].as_u64(),
        Some(std::fs::metadata(&archive).expect("archive").len())
    );

    let (top, files) = unpack(&archive);
    assert!(top.starts_with("weft-bug-report-"), "{top}");
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let listed: Vec<&str> = summary["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert_eq!(
        listed
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        names.iter().copied().collect(),
    );
    let mut expected = vec![
        "manifest.json",
        "errors.json",
        "versions.json",
        "check.json",
        "run/state.json",
        "logs/nodes/node-1/ztunnel.log",
        "logs/controller/controller.log",
        "controller/local/ready.txt",
        "controller/local/model.json",
        "controller/local/proxy-status.json",
        "controller/local/subscribers.json",
        "controller/local/registry.json",
        "waypoint/wp/waypoint/ready.txt",
        "waypoint/wp/waypoint/routes.json",
        "waypoint/wp/waypoint/config_dump.json",
    ];
    let per_ztunnel = [
        "ready.txt",
        "config_dump.json",
        "workloads.json",
        "services.json",
        "policies.json",
        "certs.json",
        "connections.json",
        "logging.json",
    ];
    let ztunnel_files: Vec<String> = ["node-1", "node-3"]
        .iter()
        .flat_map(|n| per_ztunnel.iter().map(move |f| format!("ztunnel/{n}/{f}")))
        .filter(|f| f != "ztunnel/node-3/logging.json")
        .chain(
            ["node-1", "node-2", "node-3"]
                .iter()
                .map(|n| format!("node-agent/{n}/coverage.json")),
        )
        .collect();
    expected.extend(ztunnel_files.iter().map(String::as_str));
    for want in &expected {
        assert!(files.contains_key(*want), "{want} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("ztunnel/node-2")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.contains("mesh-client")),
        "{names:?}"
    );

    // The manifest lists every other file with its size.
    let manifest = json(&files, "manifest.json");
    let in_manifest: BTreeMap<String, u64> = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_string(),
                f["bytes"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    for (path, bytes) in &files {
        if path != "manifest.json" {
            assert_eq!(in_manifest.get(path), Some(&(bytes.len() as u64)), "{path}");
        }
    }
    assert_eq!(manifest["logSinceSeconds"], 3600);

    // The component that was down, named, and why; the endpoint that
    // failed, without the secrets its answer held.
    let errors = json(&files, "errors.json");
    let errors = errors.as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0]["component"]
            .as_str()
            .is_some_and(|c| c.contains("ztunnel on node-2")),
        "{errors:?}"
    );
    assert!(
        errors[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{errors:?}"
    );
    assert!(
        errors[1]["component"]
            .as_str()
            .is_some_and(|c| c.contains("ztunnel on node-3")),
        "{errors:?}"
    );
    assert_eq!(errors[1]["item"], "/logging");
    assert_eq!(
        errors[1]["error"],
        "answered 500 Internal Server Error: caller presented <redacted> (<redacted>)"
    );
    assert!(!names.contains(&"ztunnel/node-3/logging.json"), "{names:?}");
    assert_eq!(summary["errors"].as_array(), Some(errors));
    for printed in [&out.stdout, &out.stderr] {
        assert!(!printed.contains(&secrets.token), "{printed}");
        assert!(!printed.contains(&secrets.jwt), "{printed}");
    }

    // Real content: the ztunnel's workload, the controller's model of the
    // fixture, the check's findings, versions.
    let workloads = json(&files, "ztunnel/node-1/workloads.json");
    assert_eq!(workloads["workloads"][0]["uid"], "uid-client-node-1");
    let dump = json(&files, "ztunnel/node-3/config_dump.json");
    assert_eq!(dump["pods"][0]["name"], "client");
    assert_eq!(dump["workloads"][0]["name"], "client");
    assert!(text(&files, "controller/local/model.json").contains("l7deny"));
    let status: ProxyStatusReport =
        serde_json::from_slice(&files["controller/local/proxy-status.json"]).expect("status");
    assert_eq!(status.controller, "weft-controller-test");
    let check = json(&files, "check.json");
    assert_eq!(check["ok"], false);
    assert!(
        check["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .any(|f| f["check"] == "ztunnel" && f["target"] == "node-2" && f["status"] == "fail"),
        "{check}"
    );
    let versions = json(&files, "versions.json");
    assert_eq!(versions["weftctl"], env!("CARGO_PKG_VERSION"));
    assert_eq!(versions["configVersions"]["ztunnel/node-1"], 7);
    assert_eq!(versions["configVersions"]["controller/local"], 1);

    // Certificates are public and stay; what is secret around them goes.
    let certs = text(&files, "ztunnel/node-1/certs.json");
    let root_line = secrets
        .root_pem
        .lines()
        .nth(1)
        .expect("root certificate body");
    assert!(certs.contains(root_line), "{certs}");
    assert!(certs.contains("CSR refused; key was"), "{certs}");
    let dump = json(&files, "ztunnel/node-1/config_dump.json");
    assert_eq!(dump["privateKey"], "<redacted>");
    assert_eq!(dump["bootstrapToken"], "<redacted>");
    assert_eq!(dump["headers"][0]["value"], "<redacted>");
    assert_eq!(
        dump["source"],
        "controller https://127.0.0.1:15012 (joined with <redacted>)"
    );

    // Logs: since --since, redacted line by line.
    let log = text(&files, "logs/nodes/node-1/ztunnel.log");
    assert!(!log.contains("an old line"), "{log}");
    assert!(log.contains("token=<redacted>"), "{log}");
    assert!(log.contains("authorization: Bearer <redacted>"), "{log}");
    assert!(log.contains("ready"), "{log}");
    let log = text(&files, "logs/controller/controller.log");
    assert!(log.contains(r#""keyPem":"<redacted>""#), "{log}");
    assert!(log.contains("node-1 presented <redacted>"), "{log}");

    let raw = std::fs::read(&archive).expect("archive");
    assert_no_secret(&files, &raw, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_bug_report_exits_0_with_its_default_name() {
    let r = run(&["node-1"], CLUSTER).await;
    let secrets = make_secrets(&r);
    serve_ztunnel(&r, 0, &secrets);
    let cwd = tempfile::tempdir().expect("tempdir");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .arg("--run-dir")
        .arg(r.path())
        .arg("bug-report")
        .current_dir(cwd.path())
        .env_remove("WEFT_RUN_DIR")
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run weftctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let written: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("cwd")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written.len(), 1, "{written:?}");
    let name = &written[0];
    assert!(
        name.starts_with("weft-bug-report-") && name.ends_with("Z.tar.gz"),
        "{name}"
    );
    assert!(stdout.starts_with(&format!("wrote {name} (")), "{stdout}");
    let (top, files) = unpack(&cwd.path().join(name));
    assert_eq!(format!("{top}.tar.gz"), *name);
    assert_eq!(json(&files, "errors.json"), serde_json::json!([]));
    // No log file in this run: a note says so.
    assert!(text(&files, "logs/NOTE.txt").contains("no component log"));
    assert_no_secret(
        &files,
        &std::fs::read(cwd.path().join(name)).expect("read"),
        &secrets,
    );

    // A bad --since is the command line's fault.
    let out = weftctl(&r, &["bug-report", "--since", "soon"]).await;
    assert_eq!(out.code, 2, "{out:?}");
}

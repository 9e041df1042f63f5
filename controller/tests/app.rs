//! The whole controller process in files mode: manifests on disk → config
//! stream and CA over TLS, with bootstrap tokens.

mod support;

use std::time::Duration;

use clap::Parser;
use support::Subscriber;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;
use weft_api::config::resource;
use weft_controller::options::Options;
use weft_identity::SpiffeId;
use weft_identity::ca::generate_csr;
use weft_testkit::eventually_async;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn pod(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{nodeName: node-a, serviceAccountName: web, containers: [{{name: app}}]}}\n\
         status: {{podIP: {ip}}}\n"
    )
}

#[tokio::test]
async fn files_mode_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("manifests");
    let tokens = dir.path().join("tokens/nodes");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::create_dir_all(&tokens).expect("mkdir");
    std::fs::write(tokens.join("node-a"), "secret-a\n").expect("token");
    std::fs::write(
        manifests.join("cluster.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop, labels: {{weft.dev/dataplane-mode: ambient}}}}\n---\n{}",
            pod("web-1", "10.244.1.5")
        ),
    )
    .expect("manifest");
    let grpc = free_port();
    let args = [
        "weft-controller".to_string(),
        "--registry=files".into(),
        format!("--manifests={}", manifests.display()),
        format!("--ca-dir={}", dir.path().join("ca").display()),
        format!("--bootstrap-tokens={}", dir.path().join("tokens").display()),
        format!("--grpc-addr=127.0.0.1:{grpc}"),
        format!("--debug-addr=127.0.0.1:{}", free_port()),
        format!("--metrics-addr=127.0.0.1:{}", free_port()),
        "--debounce-ms=5".into(),
    ];
    let options = Options::try_parse_from(args).expect("flags");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(weft_controller::app::run(options, None, async {
        let _ = stopped.await;
    }));

    // The root appears on disk at start; proxies verify the server with it.
    let root_path = dir.path().join("ca/root-cert.pem");
    let channel = eventually_async(
        "the controller to serve",
        Duration::from_secs(20),
        async || {
            let root = std::fs::read_to_string(&root_path).ok()?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(root))
                .domain_name("localhost");
            let endpoint = Channel::from_shared(format!("https://127.0.0.1:{grpc}"))
                .expect("uri")
                .tls_config(tls)
                .expect("tls");
            endpoint.connect().await.ok()
        },
    )
    .await;

    let mut sub = Subscriber::connect(channel.clone(), Some("secret-a"), "node-a")
        .await
        .expect("subscribe");
    let snap = sub.next().await;
    let uids = |r: &weft_api::config::ConfigResponse| -> Vec<String> {
        r.resources
            .iter()
            .filter_map(|x| match &x.kind {
                Some(resource::Kind::Workload(w)) => Some(w.uid.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(uids(&snap), vec!["pod/shop/web-1"]);
    sub.ack(&snap).await;

    // A pod written to disk reaches the subscriber.
    std::fs::write(manifests.join("more.yaml"), pod("web-2", "10.244.1.6")).expect("write");
    let update = sub.next().await;
    assert_eq!(uids(&update), vec!["pod/shop/web-2"]);

    // The node's token gets the identity of a pod on its node.
    let id = SpiffeId::new("cluster.local", "shop", "web").expect("id");
    let (csr_pem, _) = generate_csr(&id).expect("csr");
    let mut request = tonic::Request::new(CreateCertificateRequest {
        csr_pem,
        node: "node-a".into(),
        ttl_seconds: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer secret-a".parse().expect("header"));
    let chain = CertificateAuthorityClient::new(channel)
        .create_certificate(request)
        .await
        .expect("signed")
        .into_inner()
        .cert_chain_pem;
    assert_eq!(chain.len(), 2);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), app)
        .await
        .expect("stops")
        .expect("task")
        .expect("clean exit");
}

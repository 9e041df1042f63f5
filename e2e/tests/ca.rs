//! The blast-radius guarantee of docs/design.md §5, against the real controller
//! over the underlay: a node's credential obtains certificates only for
//! identities of pods on that node. The test speaks the CA's gRPC API from
//! inside node 1's namespace with node 1's bootstrap token, as node 1's
//! ztunnel would. Needs root.

mod common;

use std::time::Duration;

use common::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_api::ca::CreateCertificateRequest;
use weft_api::ca::certificate_authority_client::CertificateAuthorityClient;
use weft_e2e::{Cluster, PodSpec};
use weft_hbone::SpiffeId;
use weft_hbone::ca::generate_csr;

/// Asks the controller, from node `from`'s namespace with node `token_of`'s
/// token, for `identity`, naming `node` in the request.
fn ask(
    c: &Cluster,
    from: usize,
    token_of: &str,
    node: &str,
    identity: &str,
) -> Result<Vec<String>, tonic::Status> {
    let root = std::fs::read_to_string(c.controller().root_cert()).expect("root");
    let token = std::fs::read_to_string(c.controller().token_file(token_of)).expect("token");
    let id: SpiffeId = identity.parse().expect("identity");
    let (csr_pem, _key) = generate_csr(&id).expect("csr");
    let url = c.controller().url();
    let netns = c.node(from).expect("node").netns();
    // Sockets are created on the thread that entered the node's namespace,
    // so the runtime lives on that thread.
    netns
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let channel = Channel::from_shared(url)
                    .expect("url")
                    .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root)))
                    .expect("tls")
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                    .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
                let mut request = tonic::Request::new(CreateCertificateRequest {
                    csr_pem,
                    node: node.to_string(),
                    ttl_seconds: 600,
                });
                request.metadata_mut().insert(
                    "authorization",
                    format!("Bearer {}", token.trim()).parse().expect("header"),
                );
                CertificateAuthorityClient::new(channel)
                    .create_certificate(request)
                    .await
                    .map(|r| r.into_inner().cert_chain_pem)
            })
        })
        .expect("enter node")
}

#[test]
fn the_ca_refuses_a_node_an_identity_that_runs_only_on_another_node() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    let web = c
        .add_pod(
            PodSpec::new("shop", "web")
                .on_node(1)
                .service_account("web"),
        )
        .expect("web");
    let db = c
        .add_pod(PodSpec::new("shop", "db").on_node(2).service_account("db"))
        .expect("db");
    c.wait_in_mesh(&web, CONVERGE).expect("web");
    c.wait_in_mesh(&db, CONVERGE).expect("db");
    let web_id = identity(&web);
    let db_id = identity(&db);

    // Node 1 obtains the identity of its own pod...
    let chain = ask(&c, 1, "node-1", "node-1", &web_id).expect("node 1 may have web");
    assert!(!chain.is_empty());
    // ...but not one that runs only on node 2: not as itself,
    let refused = ask(&c, 1, "node-1", "node-1", &db_id).expect_err("db is on node 2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    // nor by claiming to be node 2 with its own token.
    let refused = ask(&c, 1, "node-1", "node-2", &db_id).expect_err("node 1 posing as node 2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    // Node 2's credential does obtain it: the refusals were about the node.
    ask(&c, 2, "node-2", "node-2", &db_id).expect("node 2 may have db");
}

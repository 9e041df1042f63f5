//! The blast-radius guarantee of docs/design.md §5, against the real controller
//! over the underlay: a node's credential obtains certificates only for
//! identities of pods on that node. The test speaks the CA's gRPC API from
//! inside node 1's namespace with node 1's bootstrap token, as node 1's
//! ztunnel would. Needs root.

mod common;

use common::*;
use weft_e2e::{Cluster, PodSpec};

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
    let url = c.controller().url();
    let netns = c.node(from).expect("node").netns();
    let (node, identity) = (node.to_string(), identity.to_string());
    netns
        .run(move || ask_ca(&url, &root, &token, &node, &identity))
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

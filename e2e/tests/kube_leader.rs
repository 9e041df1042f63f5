//! Kube mode (docs/e2e.md): two controller replicas on a real Lease, and a
//! policy the CRD schema accepts but the controller cannot compile. Against
//! the real control plane; needs root.

mod common;

use common::kube::*;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use weft_e2e::kube::{ControllerProcess, KubeRun};
use weft_e2e::process::wait_until;

/// The Lease duration the controller ships with (`--lease-duration-seconds`).
const LEASE_DURATION: Duration = Duration::from_secs(15);

fn gateway(name: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]\n"
    )
}

/// Whether the leader has written the Gateway's status (its `Accepted`
/// condition, observed at the Gateway's generation).
fn gateway_status_written(run: &KubeRun, name: &str) -> bool {
    get(run, &["gateway", "-n", "shop", name])
        .and_then(|gw| condition(&gw, "Accepted"))
        .is_some_and(|c| c["status"] == "True")
}

#[test]
fn when_the_leader_dies_the_other_replica_takes_the_lease_and_writes_status() {
    let _one = common::serial();
    let mut run = installed();
    let mut replicas = vec![
        ControllerProcess::start(&mut run, "weft-controller-a", &[]).expect("replica a"),
        ControllerProcess::start(&mut run, "weft-controller-b", &[]).expect("replica b"),
    ];
    run.plane()
        .kubectl()
        .run(&["create", "namespace", "shop"])
        .expect("namespace");
    wait_until("a leader", SETTLE, || holder(&run).is_some()).expect("one replica leads");
    let leader = holder(&run).expect("leader");
    run.plane()
        .kubectl()
        .apply(&gateway("first"))
        .expect("gateway");
    wait_until("status of the first Gateway", SETTLE, || {
        gateway_status_written(&run, "first")
    })
    .expect("the leader writes Gateway status");

    // The leader dies without handing over (SIGKILL: no graceful release).
    let index = replicas
        .iter()
        .position(|r| r.replica() == leader)
        .expect("the leader is one of ours");
    let mut dead = replicas.remove(index);
    dead.process_mut().signal(Signal::SIGKILL);
    let killed = Instant::now();
    let survivor = &replicas[0];

    // The survivor takes the Lease once it expires, and acts as leader: a
    // Gateway applied now gets its status and its Deployment.
    run.plane()
        .kubectl()
        .apply(&gateway("second"))
        .expect("gateway");
    let within = LEASE_DURATION * 2 + SETTLE;
    wait_until("the survivor leads", within, || {
        holder(&run).as_deref() == Some(survivor.replica())
    })
    .expect("the other replica takes the Lease");
    let took_over = killed.elapsed();
    wait_until("status of the second Gateway", SETTLE, || {
        gateway_status_written(&run, "second")
    })
    .expect("the new leader writes status");
    wait_until("the second waypoint's Deployment", SETTLE, || {
        get(&run, &["deployment", "-n", "shop", "second"]).is_some()
    })
    .expect("the new leader deploys waypoints");
    eprintln!(
        "lease taken over {:.1} s after the leader was killed (lease duration {} s)",
        took_over.as_secs_f64(),
        LEASE_DURATION.as_secs()
    );
    assert!(
        took_over <= LEASE_DURATION * 2,
        "took over within two lease durations, not {took_over:?}"
    );
    // The survivor kept serving throughout (the config stream and CA do not
    // depend on the Lease).
    assert!(std::net::TcpStream::connect(survivor.grpc()).is_ok());
}

#[test]
fn a_policy_the_schema_accepts_but_the_controller_cannot_compile_is_marked_and_fails_closed() {
    let _one = common::serial();
    let mut run = installed();
    let _controller =
        ControllerProcess::start(&mut run, "weft-controller-0", &[]).expect("controller");
    let k = run.plane().kubectl().clone();
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    // Valid to the schema (a list of strings), not to the controller.
    k.apply(
        "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: odd-block, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.0/99\"]}\n",
    )
    .expect("the schema accepts it");
    wait_until("the policy's Accepted condition", SETTLE, || {
        get(&run, &["authorizationpolicy", "-n", "shop", "odd-block"])
            .and_then(|p| condition(&p, "Accepted"))
            .is_some()
    })
    .expect("the controller writes the policy's status");
    let policy = get(&run, &["authorizationpolicy", "-n", "shop", "odd-block"]).expect("policy");
    let accepted = condition(&policy, "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "False", "{accepted}");
    assert_eq!(accepted["reason"], "Invalid", "{accepted}");
    let message = accepted["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("10.0.0.0/99"),
        "names the bad value: {message}"
    );
    assert!(
        message.contains("fail-closed"),
        "says it fails closed: {message}"
    );
    assert_eq!(
        accepted["observedGeneration"], policy["metadata"]["generation"],
        "for the generation applied"
    );
}

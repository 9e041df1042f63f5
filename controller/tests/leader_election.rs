//! Leader election against the fake API server: two replicas, each with its
//! own runtime and client (told apart by user agent), run the writers with
//! `--leader-elect`. Exactly one holds the Lease and only its writes arrive;
//! when it stops, the other takes the Lease and writes.

mod support;

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;
use support::{CONTROLLER_COLLECTIONS, ambient_namespace, waypoint_class, waypoint_gateway};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::{Registry, RegistryConfig};
use weft_controller::options::Options;
use weft_controller::pipeline::{self, Debounce};
use weft_controller::writers;
use weft_testkit::eventually_async;

const LEASES: &str = "apis/coordination.k8s.io/v1/leases";
const DEPLOYMENTS: &str = "apis/apps/v1/deployments";

/// How a replica stops.
enum Stop {
    /// Its writers' task is aborted while the process lives on: the
    /// election's task sees nobody listening and releases the Lease.
    Writers,
    /// Its runtime is dropped, as in a crash: nothing is released, so the
    /// other replica waits for the Lease to expire.
    Crash,
    /// A graceful exit (SIGTERM): the writers are told to stop and awaited,
    /// as `app::run` does, then the runtime is dropped.
    Shutdown,
}

/// One controller replica on its own thread and runtime, as if in its own
/// process: registry, model pipeline and writers with the election, talking
/// to the API server as user agent `name`.
struct Replica {
    name: &'static str,
    stop: Option<mpsc::UnboundedSender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(api: &FakeApiServer, name: &'static str) -> Replica {
        let config = api.config_as(name);
        // Short leases keep the test quick; the defaults are 15 s and 5 s.
        let options = Options::parse_from([
            "weft-controller",
            "--replica",
            name,
            "--lease-duration-seconds",
            "3",
            "--lease-grace-seconds",
            "1",
            "--waypoint-image",
            "waypoint:test",
        ]);
        let (stop, mut stops) = mpsc::unbounded_channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = kube::Client::try_from(config).expect("client");
                let registry = Registry::kubernetes(client.clone(), RegistryConfig::default());
                let states = registry.subscribe();
                let debounce = Debounce {
                    quiet: Duration::from_millis(5),
                    max_delay: Duration::from_millis(20),
                };
                let (models, _pipeline) =
                    pipeline::spawn(states.clone(), ModelConfig::default(), debounce);
                let stop_writers = CancellationToken::new();
                let mut writers = tokio::spawn(writers::run(
                    client,
                    options,
                    models,
                    states,
                    "ROOT".into(),
                    stop_writers.clone(),
                ));
                loop {
                    match stops.recv().await {
                        Some(Stop::Writers) => writers.abort(),
                        Some(Stop::Shutdown) => {
                            stop_writers.cancel();
                            let _ = (&mut writers).await;
                            break;
                        }
                        Some(Stop::Crash) | None => break,
                    }
                }
                drop(registry);
            });
            // Dropping the runtime drops every task without running it again.
        });
        Replica {
            name,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self, how: Stop) {
        if let Some(stop) = &self.stop {
            let _ = stop.send(how);
        }
    }

    /// Waits until the replica's thread (its "process") has ended.
    async fn exited(&mut self) {
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join task")
                .expect("replica thread");
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long any step may take (generous, no timing assumption beyond it).
const WAIT: Duration = Duration::from_secs(40);

fn lease(api: &FakeApiServer) -> Option<Value> {
    api.get(LEASES, "weft-system", "weft-controller")
}

fn holder(api: &FakeApiServer) -> Option<String> {
    lease(api)?["spec"]["holderIdentity"]
        .as_str()
        .map(String::from)
}

/// What `agent` wrote, apart from the Lease.
fn writes_from(api: &FakeApiServer, agent: &str) -> Vec<String> {
    api.requests_from(agent)
        .into_iter()
        .filter(|r| !r.starts_with("GET ") && !r.contains("/leases"))
        .collect()
}

fn wrote_deployment(api: &FakeApiServer, agent: &str, name: &str) -> bool {
    let path = format!("PATCH /apis/apps/v1/namespaces/shop/deployments/{name}?");
    writes_from(api, agent).iter().any(|r| r.starts_with(&path))
}

/// Starts two replicas with a waypoint Gateway present; returns (leader,
/// follower) once the leader has deployed the waypoint, the follower has
/// read the cluster, and the leader has renewed the Lease since: time
/// enough for a follower that wrongly believed it leads to have written.
async fn elect(api: &FakeApiServer) -> (Replica, Replica) {
    api.apply(ambient_namespace());
    api.apply(waypoint_class());
    api.apply(waypoint_gateway("wp"));
    let a = Replica::start(api, "replica-a");
    let b = Replica::start(api, "replica-b");
    let first = eventually_async("a replica holds the Lease", WAIT, async || holder(api)).await;
    let (leader, follower) = if first == a.name { (a, b) } else { (b, a) };
    eventually_async("the leader deploys the waypoint", WAIT, async || {
        api.get(DEPLOYMENTS, "shop", "wp")
    })
    .await;
    eventually_async("the follower watches Gateways", WAIT, async || {
        api.requests_from(follower.name)
            .iter()
            .any(|r| r.contains("/gateways?") && r.contains("watch=true"))
            .then_some(())
    })
    .await;
    let renewed = lease(api).map(|l| l["spec"]["renewTime"].clone());
    eventually_async("the leader renews the Lease", WAIT, async || {
        (lease(api).map(|l| l["spec"]["renewTime"].clone()) != renewed).then_some(())
    })
    .await;

    assert_eq!(holder(api).as_deref(), Some(leader.name));
    assert!(wrote_deployment(api, leader.name, "wp"));
    assert_eq!(writes_from(api, follower.name), Vec::<String>::new());
    (leader, follower)
}

/// The leader stops `how`; the follower takes the Lease, then deploys a
/// Gateway created after the leader stopped.
async fn take_over(how: Stop) {
    let api = FakeApiServer::start(CONTROLLER_COLLECTIONS).await;
    let (mut leader, follower) = elect(&api).await;

    leader.stop(how);
    follower_takes_over(&api, &follower).await;
    assert!(!wrote_deployment(&api, leader.name, "wp2"));
}

/// The follower takes the Lease, and then deploys a Gateway created after that.
async fn follower_takes_over(api: &FakeApiServer, follower: &Replica) {
    eventually_async("the follower takes the Lease", WAIT, async || {
        (holder(api).as_deref() == Some(follower.name)).then_some(())
    })
    .await;
    api.apply(waypoint_gateway("wp2"));
    eventually_async(
        "the new leader deploys the new waypoint",
        WAIT,
        async || api.get(DEPLOYMENTS, "shop", "wp2"),
    )
    .await;
    assert!(wrote_deployment(api, follower.name, "wp2"));
    assert_eq!(lease(api).expect("lease")["spec"]["leaseTransitions"], 2);
}

#[tokio::test]
async fn after_a_crash_the_follower_takes_over_once_the_lease_expires() {
    take_over(Stop::Crash).await;
}

#[tokio::test]
async fn a_leader_that_stops_writing_releases_the_lease_to_the_follower() {
    take_over(Stop::Writers).await;
}

#[tokio::test]
async fn a_leader_shutting_down_releases_the_lease_before_it_exits() {
    let api = FakeApiServer::start(CONTROLLER_COLLECTIONS).await;
    let (mut leader, follower) = elect(&api).await;

    leader.stop(Stop::Shutdown);
    leader.exited().await;
    // The release is part of exiting: no waiting for the Lease to expire.
    assert_ne!(holder(&api).as_deref(), Some(leader.name));
    follower_takes_over(&api, &follower).await;
    assert!(!wrote_deployment(&api, leader.name, "wp2"));
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing_before_another_takes_over() {
    let api = FakeApiServer::start(CONTROLLER_COLLECTIONS).await;
    let (leader, follower) = elect(&api).await;

    // The leader's renewals now fail with a server error (not a conflict):
    // its election keeps saying "leader" while retrying.
    api.fail_writes_from(leader.name, LEASES);
    follower_takes_over(&api, &follower).await;
    // The old leader watches the same Gateways and, unfenced, writes wp2 as
    // soon as the new leader does; a second of grace makes the absence of
    // its write meaningful.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!wrote_deployment(&api, leader.name, "wp2"));
    assert!(
        api.requests_from(leader.name)
            .iter()
            .any(|r| r.starts_with("GET") && r.contains("/leases/")),
        "the old leader checks the Lease before writing"
    );
}

/// `result` is an API error with this code and reason.
fn assert_refused<T: std::fmt::Debug>(result: kube::Result<T>, code: u16, reason: &str) {
    match result {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (code, reason)),
        other => panic!("expected {code} {reason}, got {other:?}"),
    }
}

/// A server-side apply of `holderIdentity: manager` by `manager`.
async fn apply_holder(
    leases: &kube::Api<Lease>,
    manager: &str,
    force: bool,
) -> kube::Result<Lease> {
    let params = PatchParams::apply(manager);
    let params = if force { params.force() } else { params };
    let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "spec": {"holderIdentity": manager}});
    leases.patch("l", &params, &Patch::Apply(body)).await
}

/// Removes `holderIdentity` with a strategic merge patch, as
/// kube-lease-manager releases, then applies it as `manager`.
async fn release_and_apply(leases: &kube::Api<Lease>, manager: &str) {
    let release = json!({"spec": {"holderIdentity": null}});
    leases
        .patch("l", &PatchParams::default(), &Patch::Strategic(&release))
        .await
        .expect("release");
    apply_holder(leases, manager, false)
        .await
        .expect("a released field has no owner: anyone may apply it");
}

/// The fake's write semantics the election relies on, through kube-rs.
#[tokio::test]
async fn fake_api_server_refuses_stale_and_conflicting_lease_writes() {
    let api = FakeApiServer::start(CONTROLLER_COLLECTIONS).await;
    let leases = kube::Api::<Lease>::namespaced(api.client(), "weft-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "l"}})).expect("lease");
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("create");
    let again = leases.create(&PostParams::default(), &lease).await;
    assert_refused(again, 409, "AlreadyExists");

    // Replace and merge patch: with the current resource version only.
    let mut holder_x = created.clone();
    holder_x.spec = Some(serde_json::from_value(json!({"holderIdentity": "x"})).expect("spec"));
    let replaced = leases
        .replace("l", &PostParams::default(), &holder_x)
        .await
        .expect("replace at the current version");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    let stale = leases.replace("l", &PostParams::default(), &holder_x).await;
    assert_refused(stale, 409, "Conflict");
    let stale_patch = json!({"metadata": {"resourceVersion": created.metadata.resource_version},
                             "spec": {"holderIdentity": "y"}});
    let stale = leases
        .patch("l", &PatchParams::default(), &Patch::Merge(&stale_patch))
        .await;
    assert_refused(stale, 409, "Conflict");

    // Server-side apply: another manager's field (here the replacer's)
    // needs force.
    assert_refused(apply_holder(&leases, "m1", false).await, 409, "Conflict");
    release_and_apply(&leases, "m1").await;
    assert_refused(apply_holder(&leases, "m2", false).await, 409, "Conflict");
    let forced = apply_holder(&leases, "m2", true)
        .await
        .expect("forced apply");
    assert_eq!(
        forced.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("m2")
    );
    release_and_apply(&leases, "m1").await;
}

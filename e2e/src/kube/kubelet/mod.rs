//! The harness' kubelet: one per netns node, so that the real control plane
//! schedules real pods onto the cluster's nodes (docs/e2e.md).
//!
//! It registers the node's Node and keeps its Lease ([`node`]), watches the
//! pods bound to the node and runs each ([`pod`]): a sandbox through the
//! node's real CNI chain, volumes ([`volumes`]), the environment
//! ([`env`]), each container as an OCI bundle under runc ([`spec`],
//! [`runtime`]) from its own copy of its image's root filesystem, run as
//! the image config says ([`images`]), probes from
//! the node's network namespace ([`probes`]), `pods/status`, and deletion
//! within the grace period. It authenticates as `system:node:<name>`, so the
//! API server's Node authorizer limits it as it limits a real kubelet.
//!
//! It runs on a thread of its own inside the node's network namespace: its
//! API connections and probes leave from the node's address, as a real
//! kubelet's do.

pub mod env;
pub mod images;
pub mod node;
pub mod pod;
pub mod probes;
pub mod runtime;
pub mod spec;
pub mod volumes;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

pub use images::Images;
pub use node::NodeIdentity;
pub use runtime::Runc;
pub use volumes::NodeFs;

use crate::error::{Error, Result};
use crate::names::RunId;

/// Where progress lines go.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// What a kubelet needs.
#[derive(Clone)]
pub struct KubeletConfig {
    /// The node.
    pub node: NodeIdentity,
    /// The node's network namespace.
    pub netns: String,
    /// Its kubeconfig (`system:node:<name>`).
    pub kubeconfig: PathBuf,
    /// Its directory (pods' volumes, bundles, logs).
    pub dir: PathBuf,
    /// The run (pods' network namespaces carry its id).
    pub run_id: RunId,
    /// runc's state directory, shared by the run's kubelets.
    pub runc_root: PathBuf,
    /// The images it can run.
    pub images: Images,
    /// The node's filesystem (hostPath volumes).
    pub fs: NodeFs,
    /// The node's CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are looked up.
    pub cni_path: Vec<PathBuf>,
    /// The cluster DNS Service's address, if the cluster runs one.
    pub cluster_dns: Option<std::net::Ipv4Addr>,
    /// Progress lines.
    pub progress: Progress,
}

/// Where a kubelet in `dir` records its running pods for its streaming
/// endpoints (port-forward, exec, logs), which a process of their own
/// serves (`weft-kube kubelet-streams`; docs/e2e.md).
pub fn streams_dir(dir: &std::path::Path) -> PathBuf {
    dir.join("streams")
}

/// The record of `pod` in [`streams_dir`]: `<namespace>_<name>.json` (names
/// and namespaces are DNS labels, so `_` cannot be part of either).
pub fn streams_record(dir: &std::path::Path, pod: &Pod) -> PathBuf {
    streams_dir(dir).join(format!(
        "{}_{}.json",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    ))
}

/// What the pod workers share.
pub struct Context {
    client: kube::Client,
    node: NodeIdentity,
    netns: String,
    dir: PathBuf,
    run_id: RunId,
    runc: Runc,
    images: Images,
    fs: NodeFs,
    cni_conf_dir: PathBuf,
    cni_path: Vec<PathBuf>,
    cluster_dns: Option<std::net::Ipv4Addr>,
    progress: Progress,
}

/// A running kubelet; stopped when dropped (its pods keep running, as when
/// a kubelet restarts; teardown removes them).
pub struct Kubelet {
    name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long registration may take.
const REGISTER_WITHIN: Duration = Duration::from_secs(60);

impl Kubelet {
    /// Starts the kubelet of `config.node`; returns once its Node is
    /// registered and Ready.
    pub fn start(config: KubeletConfig) -> Result<Kubelet> {
        std::fs::create_dir_all(&config.dir).map_err(Error::io(&config.dir))?;
        std::fs::create_dir_all(&config.runc_root).map_err(Error::io(&config.runc_root))?;
        let name = config.node.name.clone();
        let netns =
            weft_netns::NetNs::open(crate::netns::Netns::path_of(&config.netns)).map_err(|e| {
                Error::Netns {
                    name: config.netns.clone(),
                    message: e.to_string(),
                }
            })?;
        let (registered_tx, registered_rx) =
            std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_name = format!("kubelet-{name}");
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let outcome = netns.run(move || {
                    // Built inside the namespace: its worker threads, and so
                    // every socket the kubelet opens, are the node's.
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(rt) => rt.block_on(serve(config, registered_tx, stop_rx)),
                        Err(e) => {
                            let _ = registered_tx.send(Err(format!("the kubelet's runtime: {e}")));
                        }
                    }
                });
                if let Err(e) = outcome {
                    eprintln!("kubelet: entering the node's namespace: {e}");
                }
            })
            .map_err(|e| Error::Invalid(format!("starting the kubelet thread: {e}")))?;
        let mut kubelet = Kubelet {
            name: name.clone(),
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match registered_rx.recv_timeout(REGISTER_WITHIN) {
            Ok(Ok(())) => Ok(kubelet),
            Ok(Err(e)) => {
                kubelet.stop();
                Err(Error::Invalid(format!("kubelet of {name}: {e}")))
            }
            Err(_) => {
                kubelet.stop();
                Err(Error::Invalid(format!(
                    "kubelet of {name}: not registered within {REGISTER_WITHIN:?}"
                )))
            }
        }
    }

    /// Its node's name.
    pub fn node(&self) -> &str {
        &self.name
    }

    /// Stops watching and heartbeating (the node goes NotReady after its
    /// Lease runs out); its pods keep running.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn client(config: &KubeletConfig) -> std::result::Result<kube::Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(&config.kubeconfig)
        .map_err(|e| format!("reading {}: {e}", config.kubeconfig.display()))?;
    let options = kube::config::KubeConfigOptions::default();
    let client_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| format!("{}: {e}", config.kubeconfig.display()))?;
    kube::Client::try_from(client_config).map_err(|e| format!("the API client: {e}"))
}

async fn serve(
    config: KubeletConfig,
    registered: std::sync::mpsc::Sender<std::result::Result<(), String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let client = match client(&config).await {
        Ok(c) => c,
        Err(e) => {
            let _ = registered.send(Err(e));
            return;
        }
    };
    let node = config.node.clone();
    let registration = async {
        node::register(&client, &node).await?;
        node::renew_lease(&client, &node).await
    };
    if let Err(e) = registration.await {
        let _ = registered.send(Err(e));
        return;
    }
    let _ = registered.send(Ok(()));
    (config.progress)(&format!(
        "{}: kubelet registered the Node, Ready",
        node.name
    ));

    let ctx = Arc::new(Context {
        client: client.clone(),
        node: node.clone(),
        netns: config.netns.clone(),
        dir: config.dir.clone(),
        run_id: config.run_id.clone(),
        runc: Runc::new(&config.runc_root),
        images: config.images.clone(),
        fs: config.fs.clone(),
        cni_conf_dir: config.cni_conf_dir.clone(),
        cni_path: config.cni_path.clone(),
        cluster_dns: config.cluster_dns,
        progress: config.progress.clone(),
    });
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        node.clone(),
        config.progress.clone(),
    ));
    let pods: Api<Pod> = Api::all(client);
    let selector = watcher::Config::default().fields(&format!("spec.nodeName={}", node.name));
    let mut events = watcher(pods, selector).boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                dispatch(&ctx, &mut workers, pod);
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(tx) = pod
                    .metadata
                    .uid
                    .as_ref()
                    .and_then(|uid| workers.remove(uid))
                {
                    let _ = tx.send(None);
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => {
                (config.progress)(&format!("{}: kubelet watch: {e}", node.name));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    heartbeat.abort();
}

/// Hands `pod` to its worker, starting one for a pod not seen before.
fn dispatch(
    ctx: &Arc<Context>,
    workers: &mut HashMap<String, watch::Sender<Option<Pod>>>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(tx) = workers.get(&uid)
        && !tx.is_closed()
    {
        let _ = tx.send(Some(pod));
        return;
    }
    if workers.contains_key(&uid) {
        // Its worker has finished: a done pod's updates need nothing more,
        // but its deletion must still be released.
        if pod.metadata.deletion_timestamp.is_none() {
            return;
        }
    }
    let (tx, rx) = watch::channel(Some(pod));
    tokio::spawn(pod::run(ctx.clone(), rx));
    workers.insert(uid, tx);
}

async fn heartbeat(client: kube::Client, node: NodeIdentity, progress: Progress) {
    let mut ticks = 0u32;
    loop {
        tokio::time::sleep(node::LEASE_RENEW).await;
        ticks += 1;
        if let Err(e) = node::renew_lease(&client, &node).await {
            progress(&format!("{}: kubelet: {e}", node.name));
        }
        // The status itself every minute, as a real kubelet reports it.
        if ticks.is_multiple_of(6)
            && let Err(e) = node::report_status(&client, &node).await
        {
            progress(&format!("{}: kubelet: {e}", node.name));
        }
    }
}

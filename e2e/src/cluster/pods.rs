//! Pods: created, labelled and deleted as Kubernetes would, and processes
//! started inside them.

use std::sync::Arc;
use std::time::Duration;

use super::{AGENT_SYNC, Cluster, create_netns, enrollment_cache, record};
use crate::binaries;
use crate::cni::{self, CniCommand, CniPod};
use crate::error::{Error, Result};
use crate::manifests::{self, DATAPLANE_MODE, PodObject};
use crate::netns::Netns;
use crate::pod::{ECHO_HTTP_PORT, ECHO_TCP_PORT, Pod, PodInner, PodSpec};
use crate::process::{self, ManagedProcess};
use crate::state::PodRecord;

impl Cluster {
    /// Creates a pod as Kubernetes would: the scheduler's Pod object (with
    /// `spec.nodeName`), then the sandbox — a network namespace attached by
    /// the node's real CNI chain (bridge, host-local, weft-cni) — then the
    /// kubelet's status update (`status.podIP`, Running, and the netns
    /// annotation), then its container (the echo server, if asked for).
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<Pod> {
        if !self.namespaces.contains_key(&spec.namespace) {
            return Err(Error::Invalid(format!(
                "pod {}/{}: no namespace {} (add it first)",
                spec.namespace, spec.name, spec.namespace
            )));
        }
        if self.pod(&spec.namespace, &spec.name).is_some() {
            return Err(Error::Invalid(format!(
                "pod {}/{} exists",
                spec.namespace, spec.name
            )));
        }
        let index = spec
            .node
            .checked_sub(1)
            .filter(|i| *i < self.nodes.len())
            .ok_or_else(|| Error::Invalid(format!("no node {}", spec.node)))?;
        // A field borrow, so the state can be updated meanwhile.
        let node = &self.nodes[index];
        let node_name = node.name().to_string();
        let layout = node.layout().clone();
        let host_ip = node.ip().to_string();
        let key = format!("{}/{}", spec.namespace, spec.name);
        (self.config.progress)(&format!("pod {key}: scheduled to {node_name}"));

        let uid = new_uid();
        let stem = manifests::pod_stem(&spec.namespace, &spec.name);
        let netns_role = format!("pod-{}-{}", spec.namespace, spec.name);
        let netns_path = Netns::path_of(&self.state.run_id.netns(&netns_role));
        let object = |ip: Option<&str>| {
            let mut pod = manifests::pod(&PodObject {
                namespace: &spec.namespace,
                name: &spec.name,
                uid: &uid,
                labels: &spec.labels,
                service_account: &spec.service_account,
                node: &node_name,
                host_ip: &host_ip,
                ip: ip.unwrap_or_default(),
                netns_path: &netns_path,
                ports: if spec.echo_server {
                    &[ECHO_TCP_PORT, ECHO_HTTP_PORT]
                } else {
                    &[]
                },
            });
            if ip.is_none() {
                // Scheduled, sandbox not created yet.
                pod["status"] = serde_json::json!({"phase": "Pending", "hostIP": host_ip});
                if let Some(annotations) = pod["metadata"].as_object_mut() {
                    annotations.remove("annotations");
                }
            }
            pod
        };
        self.manifests.write(&stem, &[object(None)])?;
        if let Some(mode) = spec.labels.get(DATAPLANE_MODE) {
            // As for namespaces: the pod object exists before its sandbox,
            // so the agent knows the pod's own label at its CNI ADD.
            let cache = layout.enrollment_cache();
            process::wait_until(
                &format!("{node_name}'s agent seeing pod {key}"),
                AGENT_SYNC,
                || {
                    enrollment_cache(&cache)
                        .is_some_and(|c| c["podModes"][key.as_str()] == mode.as_str())
                },
            )?;
        }

        let netns = create_netns(&mut self.state, &netns_role)?;
        let cni_pod = CniPod {
            namespace: &spec.namespace,
            name: &spec.name,
            uid: &uid,
            netns_path: &netns.path(),
        };
        let attached = cni::active_conflist(&layout.cni_conf_dir()).and_then(|(_, conflist)| {
            cni::run_chain(
                node.netns(),
                &[],
                &conflist,
                &layout.cni_path(),
                CniCommand::Add,
                &cni_pod,
                None,
            )
        });
        let chain = match attached {
            Ok(chain) => chain,
            Err(e) => {
                // The runtime gives up on the sandbox: no netns, no pod.
                drop(netns);
                let name = self.state.run_id.netns(&netns_role);
                let _ = Netns::delete(&name);
                self.state.netns.retain(|n| *n != name);
                self.state.save()?;
                self.manifests.remove(&stem)?;
                return Err(e);
            }
        };
        let ip = cni::result_ipv4(&chain.result)?;
        (self.config.progress)(&format!(
            "pod {key}: CNI ADD through {} gave {ip}",
            chain.plugins.join(" → ")
        ));
        self.manifests
            .write(&stem, &[object(Some(&ip.to_string()))])?;

        let pod = Pod {
            inner: Arc::new(PodInner {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                uid,
                node: node_name.clone(),
                service_account: spec.service_account.clone(),
                labels: spec.labels.clone(),
                ip,
                netns,
                app: self.bins.path(binaries::APP),
                cni_result: chain.result,
                echo_server: spec.echo_server,
            }),
        };
        self.state.pods.push(PodRecord {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            node: node_name,
            ip: ip.to_string(),
            netns: pod.netns().name().to_string(),
            echo_server: spec.echo_server,
        });
        self.state.save()?;
        self.pods.push(pod.clone());
        self.pod_labels.insert(key.clone(), spec.labels.clone());

        if spec.echo_server {
            let log = self
                .dir()
                .join("pods")
                .join(format!("{}-{}.log", spec.namespace, spec.name));
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
            }
            let mut cmd = pod.app_command();
            cmd.args(["serve", "--name", &key]);
            let mut p = ManagedProcess::spawn(&key, cmd, &log)?;
            record(&mut self.state, &p)?;
            let ns = pod.netns();
            p.wait_ready("echo server listening", Duration::from_secs(10), || {
                ns.listening_tcp_ports().is_ok_and(|ports| {
                    ports.contains(&ECHO_TCP_PORT) && ports.contains(&ECHO_HTTP_PORT)
                })
            })?;
            self.apps.push((key, p));
        }
        Ok(pod)
    }

    /// Sets (`Some`) or removes (`None`) a label of a running pod.
    pub fn label_pod(&mut self, pod: &Pod, key: &str, value: Option<&str>) -> Result<()> {
        let labels = self
            .pod_labels
            .get_mut(&pod.key())
            .ok_or_else(|| Error::Invalid(format!("no pod {}", pod.key())))?;
        match value {
            Some(v) => labels.insert(key.to_string(), v.to_string()),
            None => labels.remove(key),
        };
        let labels = labels.clone();
        let node = self
            .nodes
            .iter()
            .find(|n| n.name() == pod.node())
            .ok_or_else(|| Error::Invalid(format!("no node {}", pod.node())))?;
        let object = manifests::pod(&PodObject {
            namespace: pod.namespace(),
            name: pod.name(),
            uid: pod.uid(),
            labels: &labels,
            service_account: pod.service_account(),
            node: pod.node(),
            host_ip: &node.ip().to_string(),
            ip: &pod.ip().to_string(),
            netns_path: &pod.netns().path(),
            ports: if pod.inner.echo_server {
                &[ECHO_TCP_PORT, ECHO_HTTP_PORT]
            } else {
                &[]
            },
        });
        self.manifests
            .write(&manifests::pod_stem(pod.namespace(), pod.name()), &[object])?;
        Ok(())
    }

    /// Deletes a pod as Kubernetes would: its container stops, the runtime
    /// runs CNI DEL and removes the sandbox, the object goes away.
    pub fn delete_pod(&mut self, pod: &Pod) -> Result<()> {
        let key = pod.key();
        self.say(&format!("pod {key}: deleting"));
        if let Some(i) = self.apps.iter().position(|(k, _)| *k == key) {
            let (_, mut p) = self.apps.remove(i);
            p.stop(Duration::from_secs(3));
        }
        let node = self
            .nodes
            .iter()
            .find(|n| n.name() == pod.node())
            .ok_or_else(|| Error::Invalid(format!("no node {}", pod.node())))?;
        let layout = node.layout();
        let (_, conflist) = cni::active_conflist(&layout.cni_conf_dir())?;
        let path = pod.netns().path();
        cni::run_chain(
            node.netns(),
            &[],
            &conflist,
            &layout.cni_path(),
            CniCommand::Del,
            &CniPod {
                namespace: pod.namespace(),
                name: pod.name(),
                uid: pod.uid(),
                netns_path: &path,
            },
            Some(pod.cni_result()),
        )?;
        Netns::delete(pod.netns().name())?;
        self.manifests
            .remove(&manifests::pod_stem(pod.namespace(), pod.name()))?;
        let netns_name = pod.netns().name().to_string();
        self.state.netns.retain(|n| *n != netns_name);
        self.state
            .pods
            .retain(|p| !(p.namespace == pod.namespace() && p.name == pod.name()));
        self.state.save()?;
        self.pods.retain(|p| p.key() != key);
        self.pod_labels.remove(&key);
        Ok(())
    }

    /// Starts `args` of the sample workload inside `pod` as a long-running
    /// process (e.g. `load`), logging to `<run>/pods/<ns>-<pod>-<name>.log`.
    /// The caller owns it; teardown stops it too if it is still running.
    pub fn spawn_app(&mut self, pod: &Pod, name: &str, args: &[&str]) -> Result<ManagedProcess> {
        let log =
            self.dir()
                .join("pods")
                .join(format!("{}-{}-{name}.log", pod.namespace(), pod.name()));
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        let mut cmd = pod.app_command();
        cmd.args(args);
        let p = ManagedProcess::spawn(&format!("{}/{name}", pod.key()), cmd, &log)?;
        record(&mut self.state, &p)?;
        Ok(p)
    }
}

/// A random pod uid in the usual 8-4-4-4-12 form.
fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

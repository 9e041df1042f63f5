//! weft-e2e: a real multi-node weft cluster made of network namespaces —
//! the project's demo, its end-to-end test bed and its benchmark bed
//! (docs/design.md §8).
//!
//! A *node* is a namespace on an underlay bridge, with its own pod bridge and
//! pod CIDR; a *pod* is a namespace attached by the node's real CNI chain;
//! the controller, the node agents and ztunnels are the real binaries.
//!
//! - [`cluster`]: [`Cluster::up`], pods, Services, policies, disruptions,
//!   teardown — the API tests and the bench use.
//! - [`pod`], [`service`] and [`waypoint`]: what is asked for and the
//!   handles returned.
//! - [`node`] and [`components`]: how each process is started and awaited.
//! - [`topology`], [`addresses`], [`netns`]: namespaces, links, routes.
//! - [`capture`]: tcpdump on the underlay, read back as text.
//! - [`cni`]: the CNI chain, invoked as a container runtime does.
//! - [`manifests`]: the files registry's directory (the "API server").
//! - [`state`], [`cleanup`], [`signals`], [`names`]: run ids, the state file,
//!   teardown after a drop, a panic, Ctrl-C or a killed run.
//! - [`kube`]: kube mode, the real Kubernetes control plane (etcd,
//!   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl).
//! - [`app`]: the sample workload (`weft-e2e-app`) run inside pods.
//! - [`demo`] and [`narrate`]: the narrated demo (`weft-e2e demo`).
//! - [`summary`]: what `weft-e2e status` and `up` print.
//! - [`binaries`], [`process`], [`procs`], [`exec`], [`http`]: plumbing.

pub mod addresses;
pub mod app;
pub mod binaries;
pub mod capture;
pub mod cleanup;
pub mod cluster;
pub mod cni;
pub mod components;
pub mod demo;
pub mod error;
pub mod exec;
pub mod http;
pub mod kube;
pub mod manifests;
pub mod names;
pub mod narrate;
pub mod netns;
pub mod node;
pub mod pod;
pub mod process;
pub mod procs;
pub mod service;
pub mod signals;
pub mod state;
pub mod summary;
pub mod topology;
pub mod waypoint;

pub use cluster::{Cluster, ClusterConfig, ZtunnelMode};
pub use error::{Error, Result};
pub use pod::{Pod, PodSpec};
pub use service::{Service, ServiceSpec};
pub use waypoint::{Waypoint, WaypointFor, WaypointSpec};

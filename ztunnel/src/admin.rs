//! The admin API (docs/design.md §9; JSON shapes in `weft_api::admin`), served on
//! 127.0.0.1:15000 and on a unix socket — so a CLI outside the node's network
//! namespace can reach it — plus Prometheus metrics (15020) and readiness
//! (15021).

use std::sync::Arc;

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use weft_api::admin::{CertsResponse, ConfigDump, ConnectionsResponse, PodInfo};

use crate::inpod::Pods;
use crate::proxy::Proxy;
use weft_runtime::admin::http::{self, Body, full, json, query_param, to_json};
use weft_runtime::admin::{
    LogControl, PrometheusHandle, certificates, metrics_response, pooled_connections,
};

/// Everything the admin endpoints read.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub pods: Pods,
    pub source: String,
    pub log: LogControl,
    pub ready: Readiness,
    /// The process's metrics, also served on the admin API.
    pub metrics: PrometheusHandle,
}

/// Why the proxy is not ready, if it is not.
#[derive(Clone)]
pub struct Readiness {
    pub proxy: Arc<Proxy>,
    pub pods: Option<Pods>,
    pub draining: CancellationToken,
}

impl Readiness {
    pub fn check(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("draining".into());
        }
        if self.proxy.store.version() == 0 {
            return Err("no config received yet".into());
        }
        if let Some(pods) = &self.pods {
            if !pods.snapshot_received() {
                return Err("no pod snapshot from the node agent yet".into());
            }
            // Inbound to such a pod is refused until its config arrives.
            let waiting: Vec<String> = pods
                .list()
                .iter()
                .filter(|p| self.proxy.store.workload(&p.uid).is_none())
                .map(|p| p.workload_name())
                .collect();
            if !waiting.is_empty() {
                return Err(format!("no config yet for pods {}", waiting.join(", ")));
            }
        }
        Ok(())
    }
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/connections") => json(&self.connections()),
            (&Method::GET, "/certs") => json(&self.certs()),
            (&Method::GET, "/workloads") => json(&serde_json::json!({
                "workloads": self.proxy.store.workloads().iter().map(|w| w.as_ref()).collect::<Vec<_>>()
            })),
            (&Method::GET, "/services") => json(&serde_json::json!({
                "services": self.proxy.store.services().iter().map(|s| s.as_ref()).collect::<Vec<_>>()
            })),
            (&Method::GET, "/policies") => json(&serde_json::json!({
                "policies": self.proxy.store.policies().iter().map(|p| p.as_ref()).collect::<Vec<_>>()
            })),
            (&Method::GET, "/config_dump") => json(&self.config_dump()),
            (&Method::GET, "/metrics") => metrics_response(&self.metrics),
            (&Method::GET, "/tap") => http::tap(&req, self.proxy.connections.subscribe_tap()),
            (&Method::GET, "/logging") => http::logging(&self.log, None),
            (&Method::POST, "/logging") => {
                http::logging(&self.log, query_param(&req, "level").as_deref())
            }
            (&Method::GET, "/healthz/ready") => http::readiness(self.ready.check()),
            (_, "/") => full(
                StatusCode::OK,
                "text/plain",
                "endpoints: /connections /certs /workloads /services /policies /config_dump /metrics /tap /logging /healthz/ready\n",
            ),
            _ => full(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no endpoint {path}\n"),
            ),
        }
    }

    fn connections(&self) -> ConnectionsResponse {
        ConnectionsResponse {
            node: self.proxy.node.clone(),
            connections: self.proxy.connections.snapshot(),
            pool: pooled_connections(&self.proxy.pool),
        }
    }

    fn certs(&self) -> CertsResponse {
        CertsResponse {
            node: self.proxy.node.clone(),
            certificates: certificates(&self.proxy.certs),
        }
    }

    fn config_dump(&self) -> ConfigDump {
        let store = &self.proxy.store;
        ConfigDump {
            node: self.proxy.node.clone(),
            source: self.source.clone(),
            version: store.version(),
            pods: self
                .pods
                .list()
                .iter()
                .map(|p| PodInfo {
                    uid: p.uid.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
                    listening: true,
                })
                .collect(),
            workloads: to_json(&store.workloads()),
            services: to_json(&store.services()),
            policies: to_json(&store.policies()),
        }
    }
}

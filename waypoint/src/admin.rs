//! The admin API (docs/design.md §9; JSON shapes in `weft_api::admin`, as ztunnel
//! serves them) on 127.0.0.1:15000 and optionally a unix socket, and
//! readiness on 15021. Metrics (15020) are the runtime's exporter endpoint.
//!
//! | path | body |
//! | --- | --- |
//! | `GET /config_dump` | `ConfigDump` plus `routes`, `waypoint`, `identity`, `warnings` |
//! | `GET /workloads`, `/services`, `/policies`, `/routes` | the config, proto3 JSON |
//! | `GET /certs` | `CertsResponse` (the waypoint's own certificate) |
//! | `GET /connections` | `ConnectionsResponse`: live inbound tunnels and the upstream HBONE pool |
//! | `GET /tap?namespace=NS&workload=NAME` | newline-delimited `TapEvent`s (`request` per HTTP request) |
//! | `GET /logging`, `POST /logging?level=...` | `LoggingResponse` |
//! | `GET /healthz/ready` | 200 `ready` or 503 with the reason |

use std::sync::Arc;

use ::http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Serialize;
use weft_api::admin::{CertsResponse, ConfigDump, ConnectionsResponse};
use weft_runtime::admin::http::{self, Body, full, json, query_param, to_json};
use weft_runtime::admin::{
    LogControl, PrometheusHandle, certificates, metrics_response, pooled_connections,
};

use crate::app::Waypoint;

/// Everything the admin endpoints read.
pub struct Admin {
    pub waypoint: Arc<Waypoint>,
    /// `controller <address>` or `file <path>`.
    pub source: String,
    pub log: LogControl,
    /// The process's metrics, also served on the admin API.
    pub metrics: PrometheusHandle,
}

/// `/config_dump`: ztunnel's shape, plus what only a waypoint has.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WaypointConfigDump {
    #[serde(flatten)]
    dump: ConfigDump,
    waypoint: String,
    identity: String,
    routes: serde_json::Value,
    /// Route parts that could not be compiled (they match nothing).
    warnings: Vec<String>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let store = &self.waypoint.proxy.config.store;
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/config_dump") => json(&self.config_dump()),
            (&Method::GET, "/workloads") => {
                json(&serde_json::json!({ "workloads": to_json(&store.workloads()) }))
            }
            (&Method::GET, "/services") => {
                json(&serde_json::json!({ "services": to_json(&store.services()) }))
            }
            (&Method::GET, "/policies") => {
                json(&serde_json::json!({ "policies": to_json(&store.policies()) }))
            }
            (&Method::GET, "/routes") => {
                json(&serde_json::json!({ "routes": to_json(&store.routes()) }))
            }
            (&Method::GET, "/certs") => json(&self.certs()),
            (&Method::GET, "/connections") => json(&self.connections()),
            (&Method::GET, "/metrics") => metrics_response(&self.metrics),
            (&Method::GET, "/tap") => http::tap(&req, self.waypoint.proxy.observer.subscribe_tap()),
            (&Method::GET, "/logging") => http::logging(&self.log, None),
            (&Method::POST, "/logging") => {
                http::logging(&self.log, query_param(&req, "level").as_deref())
            }
            (&Method::GET, "/healthz/ready") => http::readiness(self.waypoint.readiness()),
            (_, "/") => full(
                StatusCode::OK,
                "text/plain",
                "endpoints: /config_dump /workloads /services /policies /routes /certs /connections /metrics /tap /logging /healthz/ready\n",
            ),
            _ => full(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no endpoint {path}\n"),
            ),
        }
    }

    fn config_dump(&self) -> WaypointConfigDump {
        let proxy = &self.waypoint.proxy;
        let store = &proxy.config.store;
        let snapshot = proxy.config.snapshot();
        WaypointConfigDump {
            dump: ConfigDump {
                node: proxy.me.key(),
                source: self.source.clone(),
                version: store.version(),
                pods: Vec::new(),
                workloads: to_json(&store.workloads()),
                services: to_json(&store.services()),
                policies: to_json(&store.policies()),
            },
            waypoint: proxy.me.key(),
            identity: self.waypoint.identity.to_string(),
            routes: to_json(&store.routes()),
            warnings: snapshot.warnings.clone(),
        }
    }

    fn certs(&self) -> CertsResponse {
        CertsResponse {
            node: self.waypoint.proxy.me.key(),
            certificates: certificates(&self.waypoint.certs),
        }
    }

    fn connections(&self) -> ConnectionsResponse {
        ConnectionsResponse {
            node: self.waypoint.proxy.me.key(),
            connections: self.waypoint.proxy.observer.tunnels(),
            pool: pooled_connections(&self.waypoint.tunnels),
        }
    }
}

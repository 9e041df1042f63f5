//! The waypoint deployer: for every Gateway of class `weft-waypoint`, a
//! ServiceAccount, a Deployment, a Service and a PodDisruptionBudget, owned
//! by the Gateway (so they go when it goes) and written with server-side
//! apply.
//!
//! The pods pass the `restricted` Pod Security Standard, so a waypoint can
//! be deployed into any namespace a platform team locks down; they carry
//! the Prometheus scrape annotations every other component has.

use std::collections::BTreeMap;

use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use weft_cluster::model::labels::{
    DATAPLANE_MODE, DATAPLANE_NONE, GATEWAY_CLASS_NAME, GATEWAY_NAME, HBONE_PORT, WAYPOINT_CLASS,
};
use weft_cluster::model::waypoints::waypoint_service_account;

/// What the deployer needs besides the Gateway.
#[derive(Clone, Debug)]
pub struct DeployerConfig {
    /// The waypoint image.
    pub image: String,
    /// How the waypoint reaches the controller.
    pub controller_address: String,
    /// Where the controller runs (and the root ConfigMap lives).
    pub root_namespace: String,
    /// The CA root, published in the `weft-ca-root` ConfigMap.
    pub root_pem: String,
    /// The audience of the token a waypoint shows the controller (the
    /// controller's first `--token-audiences`); `None`: the automounted
    /// token, for the API server's default audience.
    pub token_audience: Option<String>,
    /// The waypoints' OTLP/gRPC collector (`WEFT_OTLP_ENDPOINT`); `None`:
    /// no tracing.
    pub otlp_endpoint: Option<String>,
    /// The waypoints' `WEFT_TRACE_SAMPLING`; `None`: their default.
    pub trace_sampling: Option<f64>,
}

/// Where a waypoint finds its projected token for the controller.
pub const TOKEN_DIR: &str = "/var/run/secrets/weft";

/// How long a projected token lives; the kubelet renews it well before, and
/// the waypoint reads the file again on every call.
const TOKEN_SECONDS: i64 = 3600;

/// Where a waypoint finds the root that signs the controller's certificate.
pub const ROOT_CERT_PATH: &str = "/var/run/weft/ca/root-cert.pem";

/// The user id the waypoint runs as (distroless' `nonroot`, the image's
/// user); stated in the pod too, so `runAsNonRoot` can be checked.
const WAYPOINT_UID: i64 = 65532;

/// The waypoint's metrics and health ports (design.md §3).
const METRICS_PORT: i32 = 15020;
const HEALTH_PORT: i32 = 15021;

/// The objects of one waypoint.
pub struct WaypointObjects {
    /// Its identity.
    pub service_account: ServiceAccount,
    /// Its pods.
    pub deployment: Deployment,
    /// Its VIP, on the HBONE port.
    pub service: Service,
    /// At most one of its pods evicted at a time.
    pub disruption_budget: PodDisruptionBudget,
}

/// What each waypoint container asks for: enough to start and proxy a
/// modest load; the memory limit bounds a leak or a flood to the waypoint
/// itself. No CPU limit: throttling a proxy adds latency to every request
/// it carries, and the request already buys its share under contention.
fn resources() -> ResourceRequirements {
    let q = |v: &str| Quantity(v.to_string());
    ResourceRequirements {
        requests: Some(
            [
                ("cpu".to_string(), q("100m")),
                ("memory".to_string(), q("128Mi")),
            ]
            .into(),
        ),
        limits: Some([("memory".to_string(), q("1Gi"))].into()),
        ..ResourceRequirements::default()
    }
}

/// The `restricted` Pod Security Standard, pod and container halves.
fn restricted() -> (PodSecurityContext, SecurityContext) {
    let seccomp = SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..SeccompProfile::default()
    };
    (
        PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(WAYPOINT_UID),
            run_as_group: Some(WAYPOINT_UID),
            seccomp_profile: Some(seccomp.clone()),
            ..PodSecurityContext::default()
        },
        SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            seccomp_profile: Some(seccomp),
            ..SecurityContext::default()
        },
    )
}

fn owner(gw: &Gateway) -> Option<OwnerReference> {
    gw.controller_owner_ref(&())
}

fn meta(gw: &Gateway, name: String, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: gw.namespace(),
        labels: Some(labels.clone()),
        owner_references: owner(gw).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The objects for `gw`. Pure, so tests can check them.
pub fn waypoint_objects(gw: &Gateway, config: &DeployerConfig) -> WaypointObjects {
    let name = gw.name_any();
    let sa = waypoint_service_account(gw);
    let selector: BTreeMap<String, String> = [(GATEWAY_NAME.to_string(), name.clone())].into();
    let mut pod_labels = selector.clone();
    // A waypoint speaks HBONE itself; its traffic is never captured.
    pod_labels.insert(DATAPLANE_MODE.to_string(), DATAPLANE_NONE.to_string());
    pod_labels.insert(GATEWAY_CLASS_NAME.to_string(), WAYPOINT_CLASS.to_string());
    let scrape: BTreeMap<String, String> = [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (pod_security, container_security) = restricted();
    let env = |name: &str, value: &str| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    };
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    };
    let hbone = i32::try_from(HBONE_PORT).unwrap_or(15008);
    let mut env_vars = vec![
        env("WEFT_CONTROLLER", &config.controller_address),
        env(
            "WEFT_WAYPOINT_NAMESPACE",
            &gw.namespace().unwrap_or_default(),
        ),
        env("WEFT_WAYPOINT_NAME", &name),
        env("WEFT_CONTROLLER_CA", ROOT_CERT_PATH),
        field_env("POD_NAME", "metadata.name"),
        field_env("NODE_NAME", "spec.nodeName"),
        // The identity it asks the CA for is the one its pod runs as.
        field_env("WEFT_WAYPOINT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    // Only what was asked for: an absent variable keeps the waypoint's own
    // default, and a Deployment without tracing stays as it was (no
    // rollout of every waypoint when the controller is upgraded).
    if let Some(endpoint) = &config.otlp_endpoint {
        env_vars.push(env("WEFT_OTLP_ENDPOINT", endpoint));
    }
    if let Some(ratio) = config.trace_sampling {
        env_vars.push(env("WEFT_TRACE_SAMPLING", &ratio.to_string()));
    }
    let mut mounts = vec![VolumeMount {
        name: "ca-root".to_string(),
        mount_path: "/var/run/weft/ca".to_string(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "ca-root".to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: super::ROOT_CONFIG_MAP.to_string(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    // The controller accepts only tokens for its own audience, not the
    // automounted one every pod has.
    if let Some(audience) = &config.token_audience {
        env_vars.push(env("WEFT_TOKEN_FILE", &format!("{TOKEN_DIR}/token")));
        mounts.push(VolumeMount {
            name: "weft-token".to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "weft-token".to_string(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(audience.clone()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".to_string(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let deployment = Deployment {
        metadata: meta(gw, name.clone(), &selector),
        spec: Some(DeploymentSpec {
            // Never in the applied body: the API server defaults it to 1 on
            // create, and since the deployer's field manager never owns
            // it, a forced apply neither takes back what `kubectl scale` or
            // a HorizontalPodAutoscaler set nor (were it owned and then
            // dropped) removes it back to the default. A deployer of an
            // older version owned it as 1: its first apply from this one
            // drops the field at the value 1 (the default, so no change),
            // or finds it already moved to whoever scaled since.
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(scrape),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(sa.clone()),
                    security_context: Some(pod_security),
                    containers: vec![Container {
                        name: "waypoint".to_string(),
                        image: Some(config.image.clone()),
                        env: Some(env_vars),
                        ports: Some(vec![
                            port("hbone", hbone),
                            port("metrics", METRICS_PORT),
                            port("health", HEALTH_PORT),
                        ]),
                        volume_mounts: Some(mounts),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/healthz/ready".to_string()),
                                port: IntOrString::Int(HEALTH_PORT),
                                ..HTTPGetAction::default()
                            }),
                            ..Probe::default()
                        }),
                        // Alive while its admin server accepts; readiness
                        // (config and certificate) may come and go without
                        // a restart helping.
                        liveness_probe: Some(Probe {
                            tcp_socket: Some(TCPSocketAction {
                                port: IntOrString::Int(HEALTH_PORT),
                                ..TCPSocketAction::default()
                            }),
                            period_seconds: Some(10),
                            failure_threshold: Some(3),
                            ..Probe::default()
                        }),
                        resources: Some(resources()),
                        security_context: Some(container_security),
                        ..Container::default()
                    }],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta(gw, name.clone(), &selector),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("mesh".to_string()),
                port: hbone,
                target_port: Some(IntOrString::Int(hbone)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    // `maxUnavailable: 1` rather than `minAvailable`: with several replicas
    // a drain takes them one at a time, and a single replica never blocks a
    // node drain forever. Unhealthy pods may always go.
    let disruption_budget = PodDisruptionBudget {
        metadata: meta(gw, name, &selector),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_string()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    WaypointObjects {
        service_account: ServiceAccount {
            metadata: meta(gw, sa, &selector),
            ..ServiceAccount::default()
        },
        deployment,
        service,
        disruption_budget,
    }
}

/// Sets `apiVersion`/`kind`, which server-side apply requires in the body.
pub(crate) fn with_type_meta<K: Resource<DynamicType = ()> + serde::Serialize>(
    obj: &K,
) -> serde_json::Value {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into_owned().into());
        map.insert("kind".into(), K::kind(&()).into_owned().into());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_api::gateways::{GatewayListeners, GatewaySpec};

    fn gateway() -> Gateway {
        let mut gw = Gateway::new(
            "waypoint",
            GatewaySpec {
                gateway_class_name: weft_cluster::model::labels::WAYPOINT_CLASS.to_string(),
                listeners: vec![GatewayListeners {
                    name: "mesh".to_string(),
                    port: 15008,
                    protocol: "HBONE".to_string(),
                    ..GatewayListeners::default()
                }],
                ..GatewaySpec::default()
            },
        );
        gw.metadata.namespace = Some("shop".to_string());
        gw.metadata.uid = Some("0b7c6a8e-0000-4000-8000-000000000001".to_string());
        gw
    }

    fn config() -> DeployerConfig {
        DeployerConfig {
            image: "waypoint:test".to_string(),
            controller_address: "https://weft-controller.weft-system.svc:15012".to_string(),
            root_namespace: "weft-system".to_string(),
            root_pem: "PEM".to_string(),
            token_audience: Some("weft.dev/controller".to_string()),
            otlp_endpoint: None,
            trace_sampling: None,
        }
    }

    /// The waypoint container's `name` variable, if it has one.
    fn env_value(objects: &WaypointObjects, name: &str) -> Option<String> {
        let pod = objects.deployment.spec.as_ref()?.template.spec.as_ref()?;
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .map(|v| v.value.clone().unwrap_or_default())
    }

    #[test]
    fn tracing_reaches_the_waypoint_env_only_when_set() {
        let off = waypoint_objects(&gateway(), &config());
        assert_eq!(env_value(&off, "WEFT_OTLP_ENDPOINT"), None);
        assert_eq!(env_value(&off, "WEFT_TRACE_SAMPLING"), None);
        let on = waypoint_objects(
            &gateway(),
            &DeployerConfig {
                otlp_endpoint: Some("http://collector.observability:4317".to_string()),
                trace_sampling: Some(0.25),
                ..config()
            },
        );
        assert_eq!(
            env_value(&on, "WEFT_OTLP_ENDPOINT").as_deref(),
            Some("http://collector.observability:4317")
        );
        assert_eq!(
            env_value(&on, "WEFT_TRACE_SAMPLING").as_deref(),
            Some("0.25")
        );
        // What the waypoint parses back is the ratio asked for.
        let ratio: f64 = env_value(&on, "WEFT_TRACE_SAMPLING")
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert_eq!(ratio, 0.25);
    }

    #[test]
    fn the_applied_deployment_never_carries_replicas() {
        let objects = waypoint_objects(&gateway(), &config());
        let spec = objects.deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, None);
        // What goes to the API server: no `spec.replicas` for the field
        // manager to own, so server-side apply leaves the scale alone.
        let body = with_type_meta(&objects.deployment);
        assert_eq!(body["kind"], "Deployment");
        assert_eq!(body["apiVersion"], "apps/v1");
        let applied = body["spec"].as_object().expect("spec object");
        assert!(
            !applied.contains_key("replicas"),
            "spec.replicas applied: {body}"
        );
        assert!(applied.contains_key("selector") && applied.contains_key("template"));
    }

    #[test]
    fn the_waypoint_objects_are_named_after_and_owned_by_the_gateway() {
        let gw = gateway();
        let objects = waypoint_objects(&gw, &config());
        for (meta, name) in [
            (&objects.service_account.metadata, "waypoint-weft-waypoint"),
            (&objects.deployment.metadata, "waypoint"),
            (&objects.service.metadata, "waypoint"),
            (&objects.disruption_budget.metadata, "waypoint"),
        ] {
            assert_eq!(meta.name.as_deref(), Some(name));
            assert_eq!(meta.namespace.as_deref(), Some("shop"));
            let owners = meta.owner_references.as_ref().expect("owner");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "Gateway");
            assert_eq!(owners[0].name, "waypoint");
            assert_eq!(owners[0].controller, Some(true));
        }
        let spec = objects.deployment.spec.as_ref().expect("spec");
        let pod = spec.template.spec.as_ref().expect("pod spec");
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("waypoint-weft-waypoint")
        );
        // What the CA and the config stream check is what the deployer makes.
        assert!(weft_cluster::model::waypoints::made_by_deployer(
            &gw,
            &objects.service_account
        ));
        assert_eq!(
            spec.selector.match_labels.as_ref(),
            objects
                .service
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
        );
    }

    /// What the `restricted` Pod Security Standard checks
    /// (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
    /// on the pod the deployer makes; the kube e2e test deploys one into a
    /// namespace that enforces it.
    #[test]
    fn the_waypoint_pod_meets_the_restricted_standard_and_is_scraped() {
        let objects = waypoint_objects(&gateway(), &config());
        let template = &objects.deployment.spec.as_ref().expect("spec").template;
        let pod = template.spec.as_ref().expect("pod spec");
        let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        assert!(pod_sc.run_as_user.is_some_and(|u| u != 0));
        assert!(pod.host_network.is_none() && pod.host_pid.is_none());
        for c in &pod.containers {
            let sc = c.security_context.as_ref().expect("securityContext");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            let caps = sc.capabilities.as_ref().expect("capabilities");
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
            assert!(caps.add.is_none());
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault")
            );
            assert!(sc.privileged != Some(true));
            let resources = c.resources.as_ref().expect("resources");
            assert!(
                resources
                    .requests
                    .as_ref()
                    .is_some_and(|r| r.contains_key("memory"))
            );
            assert!(
                resources
                    .limits
                    .as_ref()
                    .is_some_and(|l| l.contains_key("memory"))
            );
            assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
        }
        // Only volume kinds `restricted` allows.
        for v in pod.volumes.iter().flatten() {
            assert!(
                v.config_map.is_some() || v.projected.is_some(),
                "volume {} is of a kind restricted may refuse",
                v.name
            );
        }
        let annotations = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "15020");
        // deploy/'s waypoint PodMonitor selects by class.
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert_eq!(labels[GATEWAY_CLASS_NAME], WAYPOINT_CLASS);
    }

    #[test]
    fn the_disruption_budget_lets_one_pod_go_and_never_blocks_a_drain() {
        let objects = waypoint_objects(&gateway(), &config());
        let spec = objects.disruption_budget.spec.as_ref().expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert!(spec.min_available.is_none());
        assert_eq!(
            spec.selector.as_ref().and_then(|s| s.match_labels.as_ref()),
            objects
                .deployment
                .spec
                .as_ref()
                .and_then(|d| d.selector.match_labels.as_ref())
        );
        let body = with_type_meta(&objects.disruption_budget);
        assert_eq!(body["apiVersion"], "policy/v1");
        assert_eq!(body["kind"], "PodDisruptionBudget");
    }
}

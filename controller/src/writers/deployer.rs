//! The waypoint deployer: for every Gateway of class `weft-waypoint`, a
//! ServiceAccount, a Deployment and a Service, owned by the Gateway (so they
//! go when it goes) and written with server-side apply.

use std::collections::BTreeMap;

use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, Service,
    ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use weft_cluster::model::labels::{DATAPLANE_MODE, DATAPLANE_NONE, GATEWAY_NAME, HBONE_PORT};
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
}

/// Where a waypoint finds its projected token for the controller.
pub const TOKEN_DIR: &str = "/var/run/secrets/weft";

/// How long a projected token lives; the kubelet renews it well before, and
/// the waypoint reads the file again on every call.
const TOKEN_SECONDS: i64 = 3600;

/// Where a waypoint finds the root that signs the controller's certificate.
pub const ROOT_CERT_PATH: &str = "/var/run/weft/ca/root-cert.pem";

/// The three objects of one waypoint.
pub struct WaypointObjects {
    /// Its identity.
    pub service_account: ServiceAccount,
    /// Its pods.
    pub deployment: Deployment,
    /// Its VIP, on the HBONE port.
    pub service: Service,
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
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(sa.clone()),
                    containers: vec![Container {
                        name: "waypoint".to_string(),
                        image: Some(config.image.clone()),
                        env: Some(env_vars),
                        ports: Some(vec![
                            port("hbone", hbone),
                            port("metrics", 15020),
                            port("health", 15021),
                        ]),
                        volume_mounts: Some(mounts),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/healthz/ready".to_string()),
                                port: IntOrString::Int(15021),
                                ..HTTPGetAction::default()
                            }),
                            ..Probe::default()
                        }),
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
    WaypointObjects {
        service_account: ServiceAccount {
            metadata: meta(gw, sa, &selector),
            ..ServiceAccount::default()
        },
        deployment,
        service,
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
        }
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
}

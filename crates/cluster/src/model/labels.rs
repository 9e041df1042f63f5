//! The labels and names users write (docs/design.md §2).

/// Enrolls a namespace or pod: `ambient`; `none` on a pod opts it out.
pub const DATAPLANE_MODE: &str = "weft.dev/dataplane-mode";
/// The value of [`DATAPLANE_MODE`] that enrolls.
pub const DATAPLANE_AMBIENT: &str = "ambient";
/// The value of [`DATAPLANE_MODE`] that opts a pod out.
pub const DATAPLANE_NONE: &str = "none";
/// Binds a namespace, Service or pod to a waypoint (a Gateway name); `none`
/// on a Service or pod opts it out of its namespace's waypoint.
pub const USE_WAYPOINT: &str = "weft.dev/use-waypoint";
/// The namespace of the waypoint named by [`USE_WAYPOINT`], when it is not the
/// object's own.
pub const USE_WAYPOINT_NAMESPACE: &str = "weft.dev/use-waypoint-namespace";
/// On a waypoint Gateway: `service` (default), `workload`, `all` or `none`.
pub const WAYPOINT_FOR: &str = "weft.dev/waypoint-for";
/// The GatewayClass of waypoints.
pub const WAYPOINT_CLASS: &str = "weft-waypoint";
/// The controller name in that GatewayClass.
pub const WAYPOINT_CONTROLLER: &str = "weft.dev/waypoint-controller";
/// Set on a waypoint's pods by the deployer (the Gateway API convention).
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Set on a waypoint's pods by the deployer: their class, so a PodMonitor
/// (deploy/) selects weft's waypoints and no other Gateway's pods.
pub const GATEWAY_CLASS_NAME: &str = "gateway.networking.k8s.io/gateway-class-name";
/// The port waypoints and ztunnels accept HBONE on.
pub const HBONE_PORT: u32 = 15008;
/// In files mode, the harness records a pod's netns path here.
pub const NETNS_ANNOTATION: &str = "weft.dev/netns";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

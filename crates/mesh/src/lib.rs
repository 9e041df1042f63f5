//! weft-mesh: the decisions of the mesh, as pure functions of the config.
//!
//! ztunnel, the waypoint and `weftctl explain` call these same functions,
//! so what explain says and what the proxies do cannot drift apart.
//!
//! - [`admission`]: which connections an enforcer admits before policy —
//!   destinations no proxy connects to (its own listeners, loopback),
//!   plaintext to a pod (STRICT mTLS, waypoint binding), tunnels around a
//!   waypoint, and whose address a tunnel is from.
//! - [`routing`]: where a client's connection goes next — a waypoint, the
//!   destination's ztunnel, or plain TCP.
//! - [`denial`]: why a connection was refused, as a type, with a stable
//!   label for metrics.

pub mod admission;
pub mod denial;
pub mod routing;

pub use admission::{
    OWN_PORTS, Path, admit_hbone, admit_plaintext, check_destination, client_address,
    waypoint_available,
};
pub use denial::Denial;
pub use routing::{NextHop, endpoint_hop, service_waypoint};

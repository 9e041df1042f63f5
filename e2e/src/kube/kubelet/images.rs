//! What the harness' kubelet runs for an image: no registry and no layers
//! yet, but the binary built for that image, at the path and as the user
//! the image would give it. The image's repository (the last path segment,
//! without tag or digest) picks the binary; an image the table does not know
//! fails the container the way a pull failure does.

use std::path::PathBuf;

use crate::binaries::{self, Binaries};

/// The user images run as unless they need root: distroless' `nonroot`.
pub const NONROOT: u32 = 65532;

/// An image, as the kubelet runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The binary on this machine.
    pub binary: PathBuf,
    /// Where the image has it: its entrypoint.
    pub entrypoint: String,
    /// The image's user and group.
    pub user: (u32, u32),
}

/// The images the harness can run: the repository name, the binary, and
/// whether the image runs as root (the node components must).
const TABLE: &[(&str, &str, bool)] = &[
    ("controller", binaries::CONTROLLER, false),
    ("waypoint", binaries::WAYPOINT, false),
    ("ztunnel", binaries::ZTUNNEL, true),
    ("node-agent", binaries::NODE_AGENT, true),
    ("weftctl", binaries::WEFTCTL, false),
    ("e2e-app", binaries::APP, false),
];

/// The repository name of an image reference: `ghcr.io/weft-mesh/controller:v1`
/// and `controller@sha256:…` are both `controller`.
pub fn repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The images of one machine's build.
#[derive(Clone, Debug)]
pub struct Images {
    bins: Binaries,
}

impl Images {
    /// The images whose binaries are in `bins`.
    pub fn new(bins: Binaries) -> Images {
        Images { bins }
    }

    /// The image `reference` names, or why it cannot be run.
    pub fn resolve(&self, reference: &str) -> Result<Image, String> {
        let name = repository(reference);
        let (_, binary, root) = TABLE
            .iter()
            .find(|(repo, _, _)| *repo == name)
            .ok_or_else(|| {
                format!(
                    "image {reference:?}: the harness has no build of repository {name:?} (it runs {})",
                    TABLE.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
                )
            })?;
        let path = self.bins.path(binary);
        if !path.is_file() {
            return Err(format!(
                "image {reference:?}: {} is not built",
                path.display()
            ));
        }
        let id = if *root { 0 } else { NONROOT };
        Ok(Image {
            binary: path,
            entrypoint: format!("/usr/local/bin/{binary}"),
            user: (id, id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_is_the_last_segment_without_tag_or_digest() {
        assert_eq!(
            repository("ghcr.io/weft-mesh/controller:latest"),
            "controller"
        );
        assert_eq!(repository("localhost:5000/waypoint"), "waypoint");
        assert_eq!(repository("ztunnel@sha256:abcd"), "ztunnel");
        assert_eq!(repository("e2e-app"), "e2e-app");
    }

    #[test]
    fn an_unknown_image_is_refused_by_name() {
        let images = Images::new(Binaries::in_dir("/nonexistent"));
        let err = images.resolve("docker.io/library/nginx:1").unwrap_err();
        assert!(err.contains("\"nginx\""), "{err}");
        let err = images
            .resolve("ghcr.io/weft-mesh/controller:1")
            .unwrap_err();
        assert!(err.contains("is not built"), "{err}");
    }
}

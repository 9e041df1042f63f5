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
    /// Other binaries the image carries: (on this machine, in the image).
    pub extra: Vec<(PathBuf, String)>,
}

/// The images the harness can run: the repository name, the binary, other
/// binaries it carries, and whether it runs as root (the node components
/// must).
const TABLE: &[(&str, &str, &[&str], bool)] = &[
    ("controller", binaries::CONTROLLER, &[], false),
    ("waypoint", binaries::WAYPOINT, &[], false),
    ("ztunnel", binaries::ZTUNNEL, &[], true),
    // The node agent installs the plugin onto the node from its image.
    (
        "node-agent",
        binaries::NODE_AGENT,
        &[binaries::CNI_PLUGIN],
        true,
    ),
    ("weftctl", binaries::WEFTCTL, &[], false),
    ("e2e-app", binaries::APP, &[], false),
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
    /// Images of programs built elsewhere (the cluster add-ons): the
    /// repository and the binary; they run as `nonroot`.
    others: Vec<(String, PathBuf)>,
}

impl Images {
    /// The images whose binaries are in `bins`.
    pub fn new(bins: Binaries) -> Images {
        Images {
            bins,
            others: Vec::new(),
        }
    }

    /// Adds repository `name`, run from `binary`.
    pub fn with(mut self, name: &str, binary: PathBuf) -> Images {
        self.others.push((name.to_string(), binary));
        self
    }

    /// The image `reference` names, or why it cannot be run.
    pub fn resolve(&self, reference: &str) -> Result<Image, String> {
        let name = repository(reference);
        if let Some((repo, binary)) = self.others.iter().find(|(repo, _)| repo == name) {
            return Ok(Image {
                binary: binary.clone(),
                entrypoint: format!("/usr/local/bin/{repo}"),
                user: (NONROOT, NONROOT),
                extra: Vec::new(),
            });
        }
        let (_, binary, extra, root) = TABLE
            .iter()
            .find(|(repo, _, _, _)| *repo == name)
            .ok_or_else(|| {
                format!(
                    "image {reference:?}: the harness has no build of repository {name:?} (it runs {})",
                    TABLE
                        .iter()
                        .map(|t| t.0)
                        .chain(self.others.iter().map(|o| o.0.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let built = |binary: &str| {
            let path = self.bins.path(binary);
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "image {reference:?}: {} is not built",
                    path.display()
                ))
            }
        };
        let id = if *root { 0 } else { NONROOT };
        Ok(Image {
            binary: built(binary)?,
            entrypoint: format!("/usr/local/bin/{binary}"),
            user: (id, id),
            extra: extra
                .iter()
                .map(|b| Ok((built(b)?, format!("/usr/local/bin/{b}"))))
                .collect::<Result<_, String>>()?,
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

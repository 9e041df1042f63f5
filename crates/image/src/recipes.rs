//! What each component's image holds and how it runs: the same choices as
//! `images/<component>.Containerfile` (which the Containerfiles' comments
//! point back to), for `make images` and the e2e harness.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::Result;
use crate::archive::{FileSpec, ImageSpec};
use crate::base::{Base, NONROOT};
use crate::names::ImageNames;

/// `PATH` of every image.
pub const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A component's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// Its key in the chart's image table.
    pub key: &'static str,
    /// The binaries it carries in `/usr/local/bin`; the first is its
    /// entrypoint.
    pub binaries: &'static [&'static str],
    /// Its user: `nonroot` where the component allows it, else root.
    pub user: u32,
    /// Its base.
    pub base: Base,
    /// What it is (the `org.opencontainers.image.description` label).
    pub description: &'static str,
}

/// weft's images.
pub const COMPONENTS: [Recipe; 5] = [
    Recipe {
        key: "controller",
        binaries: &["weft-controller"],
        user: NONROOT,
        base: Base::Cc,
        description: "weft's controller: registry, model, config stream, CA, waypoint deployer",
    },
    Recipe {
        key: "ztunnel",
        binaries: &["ztunnel"],
        // It enters pods' network namespaces (setns needs CAP_SYS_ADMIN
        // over them, which the DaemonSet grants to root only).
        user: 0,
        base: Base::Cc,
        description: "weft's node proxy (ztunnel), in-pod mode",
    },
    Recipe {
        key: "waypoint",
        binaries: &["waypoint"],
        user: NONROOT,
        base: Base::Cc,
        description: "weft's L7 waypoint proxy",
    },
    Recipe {
        key: "nodeAgent",
        // weft-cni is built static: it runs from the node's CNI bin dir.
        binaries: &["weft-node-agent", "weft-cni"],
        // It writes the node's CNI config and programs pods' netfilter.
        user: 0,
        base: Base::Netfilter,
        description: "weft's node agent, with weft-cni (the chained CNI plugin it installs)",
    },
    Recipe {
        key: "weftctl",
        binaries: &["weftctl"],
        user: NONROOT,
        base: Base::Cc,
        description: "weftctl, weft's command line",
    },
];

impl Recipe {
    /// The image of this component in `names`' registry and tag, with the
    /// binaries `locate` finds.
    pub fn spec(
        &self,
        names: &ImageNames,
        version: &str,
        locate: impl Fn(&str) -> PathBuf,
    ) -> Result<ImageSpec> {
        let name = names.name(self.key)?.to_string();
        let reference = names.reference(self.key)?;
        let labels: BTreeMap<String, String> = [
            ("org.opencontainers.image.title", name.as_str()),
            ("org.opencontainers.image.description", self.description),
            (
                "org.opencontainers.image.source",
                "https://github.com/weft-mesh/weft",
            ),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
            ("org.opencontainers.image.version", version),
            ("dev.weft.base", self.base.name()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Ok(ImageSpec {
            name,
            reference,
            files: self
                .binaries
                .iter()
                .map(|b| FileSpec {
                    source: locate(b),
                    path: format!("/usr/local/bin/{b}"),
                    mode: 0o755,
                })
                .collect(),
            entrypoint: vec![format!("/usr/local/bin/{}", self.binaries[0])],
            cmd: Vec::new(),
            user: format!("{0}:{0}", self.user),
            env: vec![PATH.to_string()],
            working_dir: "/".into(),
            labels,
        })
    }
}

//! Image names and tags: the `image:` block of the chart's `values.yaml`,
//! the one place they are written. The chart's templates render it into
//! deploy/, the controller's deployer gets the waypoint's reference from
//! the chart (`WEFT_WAYPOINT_IMAGE`, whose default a controller test checks
//! against [`ImageNames::chart`]), `make images` names its archives from it
//! and the e2e kubelet resolves pods' images with it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Error, Result};

/// The chart's values, compiled in.
pub const CHART_VALUES: &str = include_str!("../../../deploy/charts/weft/values.yaml");

/// The image table of the chart.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ImageNames {
    /// Registry and path of every image (`ghcr.io/weft-mesh`).
    pub registry: String,
    /// The tag of every image.
    pub tag: String,
    /// Each component's repository name, by its key in the chart
    /// (`controller`, `ztunnel`, `nodeAgent`, `waypoint`, `weftctl`).
    pub names: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Values {
    image: ImageNames,
}

impl ImageNames {
    /// The table of a `values.yaml`.
    pub fn parse(values: &str) -> Result<ImageNames> {
        let values: Values = serde_saphyr::from_str(values)
            .map_err(|e| Error::Invalid(format!("the chart's values.yaml: {e}")))?;
        Ok(values.image)
    }

    /// The table of the chart this crate was built with.
    pub fn chart() -> ImageNames {
        // A test parses CHART_VALUES: a chart that does not parse fails it.
        ImageNames::parse(CHART_VALUES).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The repository name of component `key`.
    pub fn name(&self, key: &str) -> Result<&str> {
        self.names.get(key).map(String::as_str).ok_or_else(|| {
            Error::Invalid(format!(
                "the chart's image.names has no {key:?} (it has {})",
                self.names.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The full reference of component `key`: `<registry>/<name>:<tag>`.
    pub fn reference(&self, key: &str) -> Result<String> {
        Ok(format!(
            "{}/{}:{}",
            self.registry,
            self.name(key)?,
            self.tag
        ))
    }
}

/// The repository name of an image reference: `ghcr.io/weft-mesh/controller:v1`
/// and `controller@sha256:…` are both `controller`.
pub fn repository(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// The digest a reference pins (`…@sha256:<hex>`), if any.
pub fn pinned_digest(reference: &str) -> Option<&str> {
    reference.split_once('@').map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_table_names_every_component() {
        let names = ImageNames::chart();
        for recipe in crate::recipes::COMPONENTS {
            let reference = names.reference(recipe.key).expect("named");
            assert!(reference.starts_with(&names.registry), "{reference}");
        }
    }

    #[test]
    fn the_repository_is_the_last_segment_without_tag_or_digest() {
        assert_eq!(
            repository("ghcr.io/weft-mesh/controller:latest"),
            "controller"
        );
        assert_eq!(repository("localhost:5000/waypoint"), "waypoint");
        assert_eq!(repository("ztunnel@sha256:abcd"), "ztunnel");
        assert_eq!(repository("e2e-app"), "e2e-app");
        assert_eq!(pinned_digest("ztunnel@sha256:abcd"), Some("sha256:abcd"));
        assert_eq!(pinned_digest("ztunnel:1"), None);
    }
}

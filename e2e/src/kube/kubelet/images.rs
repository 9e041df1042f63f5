//! The images the harness' kubelet runs: OCI image archives, assembled by
//! `weft-image` (crates/image, the code behind `make images`) from this
//! build's binaries, as a registry would serve them. A pod's `image:` is
//! looked up by its repository name (`ghcr.io/weft-mesh/controller:latest`
//! → `controller`; the registry and tag are not checked, a digest is);
//! the archive is unpacked once per run into `<run>/images/<name>/`, its
//! blobs' digests checked; each container then runs from its own copy of
//! that root ([`weft_image::unpack::copy_root`]) as the image config says.
//! An unknown, unbuilt or corrupt image fails the container's pull
//! (`ErrImagePull`) with the reason.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use weft_image::archive::{FileSpec, ImageSpec};
use weft_image::base::{self, Base, NONROOT};
use weft_image::names::{pinned_digest, repository};
use weft_image::recipes::{self, PATH};
use weft_image::{ImageNames, Unpacked};

use crate::binaries::{self, Binaries};
use crate::error::{Error, Result};

/// Where archives and base layers are cached between runs.
pub const CACHE: &str = "/var/cache/weft/images";

/// The e2e workload's image (`e2e-app`): the app on a shell base, since
/// tests run shell commands in it.
fn app(bins: &Binaries) -> ImageSpec {
    let entry = format!("/usr/local/bin/{}", binaries::APP);
    ImageSpec {
        name: "e2e-app".into(),
        reference: "e2e-app:latest".into(),
        files: vec![FileSpec {
            source: bins.path(binaries::APP),
            path: entry.clone(),
            mode: 0o755,
        }],
        entrypoint: vec![entry],
        cmd: Vec::new(),
        user: format!("{NONROOT}:{NONROOT}"),
        env: vec![PATH.into()],
        working_dir: "/".into(),
        labels: BTreeMap::new(),
    }
}

/// Images that must not run, for the tests that prove a broken image
/// fails: `broken-entrypoint` names a file it does not carry, `root-only`
/// carries its entrypoint with mode 0700 but runs as `nonroot`.
fn broken(bins: &Binaries) -> [ImageSpec; 2] {
    let mut missing = app(bins);
    missing.name = "broken-entrypoint".into();
    missing.reference = "broken-entrypoint:latest".into();
    missing.entrypoint = vec!["/usr/local/bin/not-in-this-image".into()];
    let mut root_only = app(bins);
    root_only.name = "root-only".into();
    root_only.reference = "root-only:latest".into();
    root_only.files[0].mode = 0o700;
    [missing, root_only]
}

/// CoreDNS as its upstream image lays it out: `/coredns`, user 65532.
fn coredns(reference: &str, binary: PathBuf) -> ImageSpec {
    ImageSpec {
        name: repository(reference).into(),
        reference: reference.into(),
        files: vec![FileSpec {
            source: binary,
            path: "/coredns".into(),
            mode: 0o755,
        }],
        entrypoint: vec!["/coredns".into()],
        cmd: Vec::new(),
        user: format!("{NONROOT}:{NONROOT}"),
        env: vec![PATH.into()],
        working_dir: "/".into(),
        labels: BTreeMap::new(),
    }
}

/// An image the kubelet can run: its archive, unpacked on first use.
#[derive(Debug)]
struct Entry {
    archive: Result<PathBuf, String>,
    unpacked: Option<Result<Arc<Unpacked>, String>>,
}

/// The images of one run.
#[derive(Clone, Debug)]
pub struct Images {
    /// Where they are unpacked (`<run>/images`).
    dir: PathBuf,
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Images {
    /// Assembles the images of the components in `bins` (those built), the
    /// e2e app, the broken test images, CoreDNS (`dns` is its image
    /// reference and binary) and `extra`, into the cache; `dir` is where
    /// this run unpacks them.
    pub fn assemble(
        bins: &Binaries,
        dns: (&str, PathBuf),
        extra: &[(Base, ImageSpec)],
        dir: &Path,
    ) -> Result<Images> {
        let cache = Path::new(CACHE);
        // One directory per binaries' directory: test processes running
        // other builds (debug, release) at the same time never replace
        // each other's archives.
        let key = weft_image::digest_of(bins.dir().as_os_str().as_bytes());
        let out = cache.join("e2e").join(&key[7..19]);
        let names = ImageNames::chart();
        let invalid = |e: weft_image::Error| Error::Invalid(format!("images: {e}"));
        let mut specs: Vec<(Base, ImageSpec)> = Vec::new();
        let mut entries = BTreeMap::new();
        for recipe in recipes::COMPONENTS {
            let spec = recipe
                .spec(&names, env!("CARGO_PKG_VERSION"), |b| bins.path(b))
                .map_err(invalid)?;
            match recipe.binaries.iter().find(|b| !bins.has(b)) {
                None => specs.push((recipe.base, spec)),
                Some(missing) => {
                    let why = format!(
                        "image {:?}: {} is not built",
                        spec.reference,
                        bins.path(missing).display()
                    );
                    entries.insert(
                        spec.name,
                        Entry {
                            archive: Err(why),
                            unpacked: None,
                        },
                    );
                }
            }
        }
        specs.push((Base::Shell, app(bins)));
        specs.extend(broken(bins).map(|s| (Base::Shell, s)));
        specs.push((Base::Cc, coredns(dns.0, dns.1)));
        specs.extend(extra.iter().cloned());
        for (base, spec) in specs {
            let layer = base::prepare(base, cache).map_err(invalid)?;
            let built = weft_image::archive::build(&spec, &layer, &out).map_err(invalid)?;
            entries.insert(
                spec.name,
                Entry {
                    archive: Ok(built.archive),
                    unpacked: None,
                },
            );
        }
        Ok(Images {
            dir: dir.to_path_buf(),
            entries: Arc::new(Mutex::new(entries)),
        })
    }

    /// A container status' `imageID`: the reference by the digest of the
    /// image pulled for it (`ghcr.io/weft-mesh/ztunnel@sha256:…`), empty
    /// while none is (as a kubelet reports before the pull).
    pub fn image_id(&self, reference: &str) -> String {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let pulled = entries
            .get(repository(reference))
            .and_then(|e| e.unpacked.as_ref()?.as_ref().ok().cloned());
        let Some(image) = pulled else {
            return String::new();
        };
        let unpinned = reference.split('@').next().unwrap_or(reference);
        // Without its tag: a `:` after the last `/` (not a registry port).
        let name = match unpinned.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => unpinned,
        };
        format!("{name}@{}", image.digest)
    }

    /// The image `reference` names, unpacked, or why it cannot be pulled.
    pub fn resolve(&self, reference: &str) -> Result<Arc<Unpacked>, String> {
        let name = repository(reference);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let known = entries.keys().cloned().collect::<Vec<_>>().join(", ");
        let entry = entries.get_mut(name).ok_or_else(|| {
            format!("image {reference:?}: the harness has no image of repository {name:?} (it has {known})")
        })?;
        let archive = entry.archive.clone()?;
        let dir = self.dir.join(name);
        let unpacked = entry
            .unpacked
            .get_or_insert_with(|| {
                let _ = std::fs::remove_dir_all(&dir);
                weft_image::unpack::unpack(&archive, &dir)
                    .map(Arc::new)
                    .map_err(|e| format!("pulling {reference:?}: {e}"))
            })
            .clone()?;
        if let Some(pinned) = pinned_digest(reference)
            && pinned != unpacked.digest
        {
            return Err(format!(
                "image {reference:?}: the harness' {name} is {}, not the pinned digest",
                unpacked.digest
            ));
        }
        Ok(unpacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_or_unbuilt_image_is_refused_by_name() {
        let images = Images {
            dir: PathBuf::from("/nonexistent"),
            entries: Arc::new(Mutex::new(BTreeMap::from([(
                "controller".to_string(),
                Entry {
                    archive: Err("image \"ghcr.io/weft-mesh/controller:latest\": /x/weft-controller is not built".into()),
                    unpacked: None,
                },
            )]))),
        };
        let err = images.resolve("docker.io/library/nginx:1").unwrap_err();
        assert!(err.contains("\"nginx\""), "{err}");
        let err = images
            .resolve("ghcr.io/weft-mesh/controller:1")
            .unwrap_err();
        assert!(err.contains("is not built"), "{err}");
    }

    #[test]
    fn the_image_id_is_the_reference_by_the_pulled_digest() {
        let pulled = Unpacked {
            rootfs: PathBuf::from("/nonexistent"),
            config: weft_image::RunConfig::default(),
            digest: "sha256:ab".into(),
        };
        let images = Images {
            dir: PathBuf::from("/nonexistent"),
            entries: Arc::new(Mutex::new(BTreeMap::from([(
                "ztunnel".to_string(),
                Entry {
                    archive: Ok(PathBuf::from("/nonexistent/ztunnel.oci.tar")),
                    unpacked: Some(Ok(Arc::new(pulled))),
                },
            )]))),
        };
        assert_eq!(
            images.image_id("ghcr.io/weft-mesh/ztunnel:latest"),
            "ghcr.io/weft-mesh/ztunnel@sha256:ab"
        );
        assert_eq!(
            images.image_id("localhost:5000/ztunnel"),
            "localhost:5000/ztunnel@sha256:ab"
        );
        assert_eq!(images.image_id("controller:1"), "", "not pulled");
    }
}

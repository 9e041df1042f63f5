//! weft's container images, built without a container engine.
//!
//! `make images` (the `weft-image` binary) and the e2e harness' kubelet
//! share this crate: the first writes one OCI image-layout archive per
//! component, the second reads them back into root filesystems and runs
//! their entrypoints. See docs/images.md.
//!
//! - [`names`]: every image's name and tag, read from the chart's
//!   `values.yaml`, the one place deploy/, the chart and the deployer share;
//! - [`base`]: the runtime base layer, made of Debian packages (the
//!   distroless `cc` base's role);
//! - [`layer`]: reproducible tar layers (sorted, root-owned, mtime 0);
//! - [`recipes`]: what each component's image holds and how it runs;
//! - [`archive`]: the image config, manifest, index and the archive;
//! - [`unpack`]: an archive back into a root filesystem, digests checked.

pub mod archive;
pub mod base;
pub mod layer;
pub mod names;
pub mod recipes;
pub mod unpack;

use std::path::{Path, PathBuf};

pub use archive::{Built, FileSpec, ImageSpec};
pub use base::{Base, BaseLayer};
pub use names::ImageNames;
pub use unpack::{RunConfig, Unpacked};

/// Why an image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A command (apt-get, dpkg-deb) failed.
    #[error("{command}: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output.
        message: String,
    },
    /// An image, a blob or an input is not what it must be.
    #[error("{0}")]
    Invalid(String),
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An [`Error::Io`] about `path`, for `map_err`.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

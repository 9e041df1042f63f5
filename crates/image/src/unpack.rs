//! An image archive back into a root filesystem, as a container runtime
//! pulls and unpacks one: every blob's digest and size checked against its
//! descriptor, layers applied in order (with OCI whiteouts), owners and
//! modes kept. Containers then get their own copy of the root
//! ([`copy_root`]) and the image config says how they run ([`RunConfig`]).

use std::path::{Component, Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::layer::blob_of;
use crate::{Error, Result, io};

/// How the image runs its containers: its config's execution parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `User` (`uid`, `uid:gid`, or names in the image's `/etc/passwd`).
    pub user: String,
    /// `Env`.
    pub env: Vec<String>,
    /// `WorkingDir` (`/` when unset).
    pub working_dir: String,
}

/// An image unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    /// Its root filesystem (shared: containers run from copies).
    pub rootfs: PathBuf,
    /// How it runs.
    pub config: RunConfig,
    /// Its manifest's digest.
    pub digest: String,
}

/// The user an image names, resolved in its own `/etc/passwd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageUser {
    /// The uid.
    pub uid: u32,
    /// The gid.
    pub gid: u32,
    /// Whether the image gave the uid as a number (a kubelet verifies
    /// `runAsNonRoot` only against a numeric user).
    pub numeric: bool,
}

fn invalid(archive: &Path, what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("image {}: {what}", archive.display()))
}

/// The file of `descriptor` in `layout`, its digest and size checked.
fn blob(archive: &Path, layout: &Path, descriptor: &Descriptor) -> Result<PathBuf> {
    let digest = descriptor.digest().to_string();
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(archive, format!("unsupported digest {digest}")))?;
    let path = layout.join("blobs/sha256").join(hex);
    if !path.is_file() {
        return Err(invalid(archive, format!("blob {digest} is missing")));
    }
    let found = blob_of(&path)?;
    if found.digest != digest || found.size != descriptor.size() {
        return Err(invalid(
            archive,
            format!(
                "blob {digest} ({} bytes) has digest {} ({} bytes): corrupt",
                descriptor.size(),
                found.digest,
                found.size
            ),
        ));
    }
    Ok(path)
}

/// Unpacks `archive` into `dir` (`dir/rootfs`); `dir` must not exist.
pub fn unpack(archive: &Path, dir: &Path) -> Result<Unpacked> {
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).map_err(io(&layout))?;
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    tar::Archive::new(std::io::BufReader::new(file))
        .unpack(&layout)
        .map_err(|e| invalid(archive, format!("not a tar archive: {e}")))?;
    let marker = std::fs::read_to_string(layout.join("oci-layout"))
        .map_err(|_| invalid(archive, "no oci-layout: not an OCI image layout"))?;
    if !marker.contains("\"1.0.0\"") {
        return Err(invalid(archive, format!("unknown layout version {marker}")));
    }
    let index = ImageIndex::from_file(layout.join("index.json"))
        .map_err(|e| invalid(archive, format!("index.json: {e}")))?;
    let [entry] = index.manifests().as_slice() else {
        return Err(invalid(
            archive,
            format!(
                "{} manifests in index.json, not one",
                index.manifests().len()
            ),
        ));
    };
    let manifest = ImageManifest::from_file(blob(archive, &layout, entry)?)
        .map_err(|e| invalid(archive, format!("manifest: {e}")))?;
    let config = ImageConfiguration::from_file(blob(archive, &layout, manifest.config())?)
        .map_err(|e| invalid(archive, format!("config: {e}")))?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
    for layer in manifest.layers() {
        if *layer.media_type() != MediaType::ImageLayer {
            return Err(invalid(
                archive,
                format!(
                    "layer {} is {}: only uncompressed tar layers are read",
                    layer.digest(),
                    layer.media_type()
                ),
            ));
        }
        apply(archive, &blob(archive, &layout, layer)?, &rootfs)?;
    }
    let _ = std::fs::remove_dir_all(&layout);
    let run = config.config().clone().unwrap_or_default();
    Ok(Unpacked {
        rootfs,
        config: RunConfig {
            entrypoint: run.entrypoint().clone().unwrap_or_default(),
            cmd: run.cmd().clone().unwrap_or_default(),
            user: run.user().clone().unwrap_or_default(),
            env: run.env().clone().unwrap_or_default(),
            working_dir: run
                .working_dir()
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
        },
        digest: entry.digest().to_string(),
    })
}

/// Applies one layer to `rootfs`.
fn apply(archive: &Path, layer: &Path, rootfs: &Path) -> Result<()> {
    let file = std::fs::File::open(layer).map_err(io(layer))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(true);
    tar.set_unpack_xattrs(false);
    let bad = |e: std::io::Error| invalid(archive, format!("layer {}: {e}", layer.display()));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(invalid(
                archive,
                format!("{} leaves the root", path.display()),
            ));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let parent = rootfs.join(path.parent().unwrap_or(Path::new("")));
        match name.as_deref() {
            Some(".wh..wh..opq") => {
                for child in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                    remove(&child.path())?;
                }
            }
            Some(n) if n.starts_with(".wh.") => remove(&parent.join(&n[4..]))?,
            _ => {
                entry.unpack_in(rootfs).map_err(bad)?;
            }
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io(path)),
        Err(_) => Ok(()),
    }
}

/// Makes `to` a copy of root filesystem `from` for one container:
/// directories and symlinks of its own, files hard-linked (no data is
/// copied; a container replacing a file replaces its own link, and weft's
/// images do not rewrite their files in place).
pub fn copy_root(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
    let meta = std::fs::symlink_metadata(from).map_err(io(from))?;
    std::fs::create_dir_all(to).map_err(io(to))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode())).map_err(io(to))?;
    lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().map_err(io(&source))?;
        if kind.is_dir() {
            copy_root(&source, &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io(&source))?;
            symlink(&link, &target).map_err(io(&target))?;
            let meta = std::fs::symlink_metadata(&source).map_err(io(&source))?;
            lchown(&target, Some(meta.uid()), Some(meta.gid())).map_err(io(&target))?;
        } else {
            std::fs::hard_link(&source, &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

/// Resolves `path` inside `rootfs`, following symlinks as the container
/// would see them (absolute targets are relative to `rootfs`).
pub fn resolve_in(rootfs: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut at: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let host = rootfs.join(at.join("/")).join(&part);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                at.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .rev()
                    .map(str::to_string),
            );
        } else {
            at.push(part);
        }
    }
    Some(rootfs.join(at.join("/")))
}

/// Checks that `program` (argv\[0\]: a path, or a name looked up in
/// `path_var`) is a file in `rootfs` that `uid`/`gid` may execute; the
/// error says which file and why, as a runtime's exec error would.
pub fn check_executable(
    rootfs: &Path,
    program: &str,
    path_var: &str,
    uid: u32,
    gid: u32,
) -> std::result::Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.to_string()]
    } else {
        path_var
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
            .collect()
    };
    let mut denied = None;
    for candidate in &candidates {
        let Some(host) = resolve_in(rootfs, candidate) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(&host) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mode = meta.mode();
        let allowed = if uid == 0 {
            mode & 0o111 != 0
        } else if meta.uid() == uid {
            mode & 0o100 != 0
        } else if meta.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if allowed {
            return Ok(candidate.clone());
        }
        denied = Some(format!(
            "exec {candidate:?}: permission denied: mode {:o} owned by {}:{}, and the container runs as {uid}:{gid}",
            mode & 0o7777,
            meta.uid(),
            meta.gid()
        ));
    }
    Err(denied.unwrap_or_else(|| {
        if program.contains('/') {
            format!("exec {program:?}: no such file in the image")
        } else {
            format!("exec {program:?}: executable file not found in $PATH ({path_var})")
        }
    }))
}

impl RunConfig {
    /// The image's user, resolved in `rootfs`' `/etc/passwd` and
    /// `/etc/group` when named (root when unset).
    pub fn image_user(&self, rootfs: &Path) -> std::result::Result<ImageUser, String> {
        let (user, group) = match self.user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (self.user.as_str(), None),
        };
        if user.is_empty() {
            return Ok(ImageUser {
                uid: 0,
                gid: 0,
                numeric: true,
            });
        }
        let table = |file: &str| std::fs::read_to_string(rootfs.join("etc").join(file));
        let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
            table(file).ok()?.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.first() == Some(&name))
                    .then(|| fields.get(field)?.parse().ok())
                    .flatten()
            })
        };
        let (uid, numeric, passwd_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, true, None),
            Err(_) => {
                let uid = lookup("passwd", user, 2).ok_or_else(|| {
                    format!("the image's user {user:?} is not in its /etc/passwd")
                })?;
                (uid, false, lookup("passwd", user, 3))
            }
        };
        let gid = match group {
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => lookup("group", g, 2)
                    .ok_or_else(|| format!("the image's group {g:?} is not in its /etc/group"))?,
            },
            None => passwd_gid.unwrap_or(uid),
        };
        Ok(ImageUser { uid, gid, numeric })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use crate::archive::{FileSpec, ImageSpec, build};
    use crate::base::{Base, BaseLayer};
    use crate::layer::LayerWriter;

    /// A base layer made by hand (the real ones need apt).
    fn base(dir: &Path) -> BaseLayer {
        let mut w = LayerWriter::create(&dir.join("base.tar")).expect("base");
        w.bytes(
            "etc/passwd",
            b"root:x:0:0::/root:/bin/sh\nnonroot:x:65532:65532::/home:/bin/sh\n",
            0o644,
        )
        .expect("passwd");
        w.symlink("bin", "usr/bin").expect("bin");
        w.bytes("usr/bin/gone", b"old", 0o644).expect("file");
        let blob = w.finish().expect("finish");
        BaseLayer {
            base: Base::Cc,
            path: blob.path,
            digest: blob.digest,
            size: blob.size,
            packages: vec![],
        }
    }

    fn spec(dir: &Path, mode: u32) -> ImageSpec {
        let tool = dir.join("tool");
        std::fs::write(&tool, b"#!/bin/true\n").expect("tool");
        ImageSpec {
            name: "tool".into(),
            reference: "example.org/weft/tool:1".into(),
            files: vec![FileSpec {
                source: tool,
                path: "/usr/local/bin/tool".into(),
                mode,
            }],
            entrypoint: vec!["/usr/local/bin/tool".into()],
            cmd: vec!["--serve".into()],
            user: "nonroot".into(),
            env: vec!["PATH=/usr/local/bin:/bin".into()],
            working_dir: "/tmp".into(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn an_archive_unpacks_to_its_files_and_config_and_copies_per_container() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = base(tmp.path());
        let built = build(&spec(tmp.path(), 0o750), &base, &tmp.path().join("out")).expect("build");
        let again = build(&spec(tmp.path(), 0o750), &base, &tmp.path().join("out")).expect("again");
        assert_eq!(built, again, "the cache gives the same archive");
        let image = unpack(&built.archive, &tmp.path().join("unpacked")).expect("unpack");
        assert_eq!(image.digest, built.digest);
        assert_eq!(image.config.entrypoint, ["/usr/local/bin/tool"]);
        assert_eq!(image.config.cmd, ["--serve"]);
        assert_eq!(image.config.working_dir, "/tmp");
        let user = image.config.image_user(&image.rootfs).expect("user");
        assert_eq!((user.uid, user.gid, user.numeric), (65532, 65532, false));

        let root = tmp.path().join("container");
        copy_root(&image.rootfs, &root).expect("copy");
        // Found by PATH, through the image's own symlink.
        assert_eq!(
            check_executable(&root, "tool", "/bin:/usr/local/bin", 0, 0),
            Ok("/usr/local/bin/tool".to_string())
        );
        let missing = check_executable(&root, "/usr/local/bin/absent", "/bin", 0, 0).unwrap_err();
        assert!(
            missing.contains("\"/usr/local/bin/absent\": no such file"),
            "{missing}"
        );
        let not_exec = check_executable(&root, "/bin/gone", "/bin", 0, 0).unwrap_err();
        assert!(not_exec.contains("permission denied"), "{not_exec}");
        // 0750 root:root: its user may not run it.
        let denied =
            check_executable(&root, "/usr/local/bin/tool", "/bin", 65532, 65532).unwrap_err();
        assert!(denied.contains("runs as 65532:65532"), "{denied}");
    }

    #[test]
    fn a_corrupt_blob_is_refused_by_digest() {
        let tmp = tempfile::tempdir().expect("tmp");
        let base = base(tmp.path());
        let built = build(&spec(tmp.path(), 0o755), &base, &tmp.path().join("out")).expect("build");
        // Rewrite the archive with one byte of the image's layer changed.
        let layout = tmp.path().join("layout");
        tar::Archive::new(std::fs::File::open(&built.archive).expect("open"))
            .unpack(&layout)
            .expect("unpack");
        let blobs = layout.join("blobs/sha256");
        let layer = std::fs::read_dir(&blobs)
            .expect("blobs")
            .map(|e| e.expect("entry").path())
            .find(|p| std::fs::read(p).is_ok_and(|b| b.windows(10).any(|w| w == b"#!/bin/tru")))
            .expect("the layer holding the tool");
        let mut bytes = std::fs::read(&layer).expect("read");
        let at = bytes
            .windows(10)
            .position(|w| w == b"#!/bin/tru")
            .expect("content");
        bytes[at] = b'X';
        std::fs::write(&layer, bytes).expect("write");
        std::fs::set_permissions(&layer, std::fs::Permissions::from_mode(0o644)).expect("mode");
        let broken = tmp.path().join("broken.oci.tar");
        let mut tar = tar::Builder::new(std::fs::File::create(&broken).expect("create"));
        tar.append_dir_all(".", &layout).expect("append");
        tar.finish().expect("finish");
        let err = unpack(&broken, &tmp.path().join("unpacked")).unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

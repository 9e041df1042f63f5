//! The runtime base layer: files of Debian packages, standing in for the
//! Containerfiles' distroless base without a registry to pull it from.
//!
//! Each [`Base`] is a fixed list of packages (what the binaries of its
//! images load, by `ldd`; see docs/images.md). They are fetched with
//! `apt-get download` (the machine's apt sources, with their signatures
//! checked by apt), unpacked with `dpkg-deb -x` (no maintainer scripts run),
//! stripped of documentation, given distroless' users (`root`, `nonroot`
//! 65532) and written as one reproducible layer, cached under
//! `<cache>/base-<name>-<key>/` by the list: later builds reuse it, and
//! removing the directory fetches the packages' current versions.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::layer::{Blob, LayerWriter};
use crate::{Error, Result, io};

/// The user images run as unless they must be root: distroless' `nonroot`.
pub const NONROOT: u32 = 65532;

/// A runtime base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Base {
    /// glibc and libgcc: what every Rust binary of weft loads (distroless
    /// `cc`'s role).
    Cc,
    /// `cc` and the tools the node agent runs in pods' namespaces: `nft`,
    /// `iptables`/`iptables-restore` (nft backend) and `ip` (the policy
    /// routing TPROXY needs).
    Netfilter,
    /// `cc` and a shell with coreutils and `getent`: the e2e workload's
    /// image, whose tests run shell commands in it.
    Shell,
}

/// glibc and the unwinder.
const CC: &[&str] = &["libc6", "libgcc-s1"];
/// `nft`, `iptables` and `ip`, and the libraries they load.
const NETFILTER: &[&str] = &[
    "nftables",
    "libnftables1",
    "libedit2",
    "libbsd0",
    "libmd0",
    "libtinfo6",
    "libjansson4",
    "libgmp10",
    "libmnl0",
    "libnftnl11",
    "libxtables12",
    "iptables",
    "libip4tc2",
    "libip6tc2",
    "libnetfilter-conntrack3",
    "libnfnetlink0",
    "iproute2",
    "libbpf1",
    "libelf1",
    "libcap2",
    "zlib1g",
];
/// A shell, coreutils, `getent`, and their libraries.
const SHELL: &[&str] = &[
    "dash",
    "coreutils",
    "libc-bin",
    "libselinux1",
    "libpcre2-8-0",
    "libacl1",
    "libattr1",
    "libgmp10",
];

/// Directories of packages no container reads.
const PRUNED: &[&str] = &[
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/lintian",
    "usr/share/locale",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/zsh",
];

/// Changes when the layer's recipe changes (not its package list), so that
/// caches made by an older recipe are not reused.
const RECIPE_VERSION: u32 = 1;

impl Base {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Base::Cc => "cc",
            Base::Netfilter => "netfilter",
            Base::Shell => "shell",
        }
    }

    /// The Debian packages it is made of.
    pub fn packages(self) -> Vec<&'static str> {
        let extra = match self {
            Base::Cc => &[][..],
            Base::Netfilter => NETFILTER,
            Base::Shell => SHELL,
        };
        let mut all: Vec<&str> = CC.iter().chain(extra).copied().collect();
        all.dedup();
        all
    }

    /// Symlinks a package's maintainer scripts would have made.
    fn links(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Base::Cc => &[],
            // update-alternatives' choice on Debian: the nft backend.
            Base::Netfilter => &[
                ("usr/sbin/iptables", "iptables-nft"),
                ("usr/sbin/iptables-restore", "iptables-nft-restore"),
                ("usr/sbin/iptables-save", "iptables-nft-save"),
                ("usr/sbin/ip6tables", "ip6tables-nft"),
                ("usr/sbin/ip6tables-restore", "ip6tables-nft-restore"),
                ("usr/sbin/ip6tables-save", "ip6tables-nft-save"),
            ],
            Base::Shell => &[("bin/sh", "dash")],
        }
    }
}

/// A base layer, ready to be an image's first layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseLayer {
    /// Which base.
    pub base: Base,
    /// The layer (uncompressed tar).
    pub path: PathBuf,
    /// Its digest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// The packages in it, `name=version`.
    pub packages: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let describe = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| Error::Command {
        command: describe.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: describe,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The base layer `base`, from the cache under `cache` or made there.
pub fn prepare(base: Base, cache: &Path) -> Result<BaseLayer> {
    let key = crate::digest_of(format!("{RECIPE_VERSION} {:?}", base.packages()).as_bytes());
    let dir = cache.join(format!("base-{}-{}", base.name(), &key[7..19]));
    let record = dir.join("layer.json");
    if let Ok(text) = std::fs::read(&record)
        && let Ok(layer) = serde_json::from_slice::<BaseLayer>(&text)
        && layer.path.is_file()
    {
        return Ok(layer);
    }
    // Made beside its final place, then renamed: concurrent builds (two
    // test processes) each make one and the last rename wins, same bytes.
    let work = cache.join(format!(
        ".base-{}-{}.{}",
        base.name(),
        std::process::id(),
        &key[7..15]
    ));
    let _ = std::fs::remove_dir_all(&work);
    let (debs, root) = (work.join("debs"), work.join("root"));
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    run(Command::new("apt-get")
        .arg("download")
        .args(base.packages())
        .current_dir(&debs))
    .map_err(|e| Error::Invalid(format!("{e} (is `apt-get update` needed?)")))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&debs)
        .map_err(io(&debs))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    let mut packages = Vec::new();
    for deb in &files {
        let fields = run(Command::new("dpkg-deb")
            .args(["--show", "--showformat=${Package}=${Version}"])
            .arg(deb))?;
        packages.push(fields.trim().to_string());
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    }
    lay_out(base, &root)?;
    let layer_path = work.join("layer.tar");
    let mut layer = LayerWriter::create(&layer_path)?;
    layer.tree(&root)?;
    let Blob { digest, size, .. } = layer.finish()?;
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&work, &dir).map_err(io(&dir))?;
    let made = BaseLayer {
        base,
        path: dir.join("layer.tar"),
        digest,
        size,
        packages,
    };
    let text = serde_json::to_vec_pretty(&made).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&record, text).map_err(io(&record))?;
    Ok(made)
}

/// What a distroless base adds to the packages' files: users, `/tmp`,
/// home directories, mount points; and the symlinks maintainer scripts
/// would have made.
fn lay_out(base: Base, root: &Path) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, chown, symlink};
    for dir in PRUNED {
        let path = root.join(dir);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    for dir in [
        "etc",
        "tmp",
        "root",
        "home/nonroot",
        "proc",
        "sys",
        "dev",
        "run",
    ] {
        let path = root.join(dir);
        std::fs::create_dir_all(&path).map_err(io(&path))?;
    }
    let set_mode = |dir: &str, mode: u32| {
        let path = root.join(dir);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io(&path))
    };
    set_mode("tmp", 0o1777)?;
    set_mode("root", 0o700)?;
    set_mode("home/nonroot", 0o700)?;
    let home = root.join("home/nonroot");
    chown(&home, Some(NONROOT), Some(NONROOT)).map_err(io(&home))?;
    let etc = |name: &str, text: String| {
        let path = root.join("etc").join(name);
        std::fs::write(&path, text).map_err(io(&path))
    };
    etc(
        "passwd",
        format!(
            "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        ),
    )?;
    etc(
        "group",
        format!("root:x:0:\nnogroup:x:65534:\nnonroot:x:{NONROOT}:\n"),
    )?;
    etc(
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n".into(),
    )?;
    let var_run = root.join("var/run");
    if std::fs::symlink_metadata(&var_run).is_err() {
        std::fs::create_dir_all(root.join("var")).map_err(io(&var_run))?;
        symlink("../run", &var_run).map_err(io(&var_run))?;
    }
    for (link, target) in base.links() {
        let path = root.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            symlink(target, &path).map_err(io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_base_carries_the_c_runtime_once() {
        for base in [Base::Cc, Base::Netfilter, Base::Shell] {
            let packages = base.packages();
            assert_eq!(&packages[..2], CC, "{base:?}");
            let mut unique = packages.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), packages.len(), "{base:?}");
        }
    }
}

//! A container's OCI runtime spec (`config.json`), made from its pod spec
//! the way a container runtime under a kubelet makes it: the process
//! (command, args, env, user, capabilities, no-new-privileges), the root
//! filesystem (read-only if asked), the mounts (volumes and the kubelet's
//! `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`) and the namespaces
//! (the pod's network namespace, or the node's for `hostNetwork`).
//!
//! The root filesystem stands in for the image (see [`super::images`]): the
//! machine's `/usr` read-only, and the image's binary at its entrypoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SecurityContext};
use serde_json::{Value, json};

use super::env::expand;
use super::images::Image;

/// The capabilities a runtime gives a container by default (containerd's
/// and CRI-O's set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (a privileged container's set).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Where it appears in the container.
    pub destination: String,
    /// What is mounted, on this machine.
    pub source: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// Mounts made on the machine later reach the container (`rslave`:
    /// a volume's `mountPropagation: HostToContainer`).
    pub host_to_container: bool,
}

/// Everything besides the container spec that its runtime spec needs.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The image it runs.
    pub image: &'a Image,
    /// Its resolved environment.
    pub env: &'a BTreeMap<String, String>,
    /// Volumes and kubelet files, in mount order.
    pub binds: &'a [Bind],
    /// The network namespace it joins.
    pub netns: &'a Path,
    /// The pod's hostname.
    pub hostname: &'a str,
    /// The pod's security context.
    pub pod_security: Option<&'a PodSecurityContext>,
    /// The container's cgroup (it names the pod, as the kubelet's do).
    pub cgroup: &'a str,
}

/// The Linux capability name of a Kubernetes one (`NET_ADMIN`).
fn cap_name(k8s: &str) -> String {
    let upper = k8s.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

/// The capability set of a container with `security`.
pub fn capabilities(security: Option<&SecurityContext>) -> Vec<String> {
    if security.and_then(|s| s.privileged) == Some(true) {
        return ALL_CAPS.iter().map(|c| c.to_string()).collect();
    }
    let caps = security.and_then(|s| s.capabilities.as_ref());
    let drop: Vec<String> = caps
        .and_then(|c| c.drop.as_ref())
        .into_iter()
        .flatten()
        .map(|c| cap_name(c))
        .collect();
    let mut set: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for add in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        let name = cap_name(add);
        if name == "CAP_ALL" {
            return ALL_CAPS.iter().map(|c| c.to_string()).collect();
        }
        if !set.contains(&name) {
            set.push(name);
        }
    }
    set
}

/// The user and group the container runs as: its security context's, else
/// the pod's, else the image's; refused when `runAsNonRoot` meets root.
pub fn user(
    container: &Container,
    pod: Option<&PodSecurityContext>,
    image: &Image,
) -> Result<(u32, u32), String> {
    let own = container.security_context.as_ref();
    let pick = |c: Option<i64>, p: Option<i64>| c.or(p).map(|v| v as u32);
    let uid = pick(
        own.and_then(|s| s.run_as_user),
        pod.and_then(|s| s.run_as_user),
    )
    .unwrap_or(image.user.0);
    let gid = pick(
        own.and_then(|s| s.run_as_group),
        pod.and_then(|s| s.run_as_group),
    )
    .unwrap_or(if uid == image.user.0 {
        image.user.1
    } else {
        uid
    });
    let non_root = own
        .and_then(|s| s.run_as_non_root)
        .or(pod.and_then(|s| s.run_as_non_root))
        == Some(true);
    if non_root && uid == 0 {
        return Err(format!(
            "container {} has runAsNonRoot and would run as root (image user 0)",
            container.name
        ));
    }
    Ok((uid, gid))
}

/// The process' argv: `command` (else the image's entrypoint) and `args`,
/// with `$(VAR)` expanded from the environment.
pub fn argv(container: &Container, image: &Image, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut argv: Vec<String> = match &container.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|c| expand(c, env)).collect(),
        _ => vec![image.entrypoint.clone()],
    };
    argv.extend(container.args.iter().flatten().map(|a| expand(a, env)));
    argv
}

fn bind(b: &Bind) -> Value {
    let mut options = vec!["rbind", "nosuid", "nodev"];
    if b.read_only {
        options.push("ro");
    }
    if b.host_to_container {
        options.push("rslave");
    }
    json!({"destination": b.destination, "type": "bind", "source": b.source, "options": options})
}

/// A read-only bind of `source` at `destination`.
fn ro(destination: &str, source: &Path) -> Bind {
    Bind {
        destination: destination.to_string(),
        source: source.to_path_buf(),
        read_only: true,
        host_to_container: false,
    }
}

/// The OCI runtime spec of `container`; `rootfs` is the bundle's root and
/// `local` its `/usr/local` (holding the entrypoint's mount point).
pub fn runtime_spec(
    container: &Container,
    inputs: &Inputs<'_>,
    rootfs: &Path,
    local: &Path,
) -> Result<Value, String> {
    let security = container.security_context.as_ref();
    let (uid, gid) = user(container, inputs.pod_security, inputs.image)?;
    let caps = capabilities(security);
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        format!("HOSTNAME={}", inputs.hostname),
    ];
    env.extend(inputs.env.iter().map(|(k, v)| format!("{k}={v}")));
    let no_new_privileges = security.and_then(|s| s.allow_privilege_escalation) == Some(false);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        bind(&ro("/usr", Path::new("/usr"))),
        bind(&ro("/usr/local", local)),
        bind(&ro(&inputs.image.entrypoint, &inputs.image.binary)),
    ];
    mounts.extend(
        inputs
            .image
            .extra
            .iter()
            .map(|(source, at)| bind(&ro(at, source))),
    );
    mounts.extend(inputs.binds.iter().map(bind));
    let caps_json: Vec<&str> = caps.iter().map(String::as_str).collect();
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": argv(container, inputs.image, inputs.env),
            "env": env,
            "cwd": container.working_dir.clone().unwrap_or_else(|| "/".into()),
            "noNewPrivileges": no_new_privileges,
            "capabilities": {
                "bounding": caps_json,
                "effective": caps_json,
                "permitted": caps_json,
            },
        },
        "root": {
            "path": rootfs,
            "readonly": security.and_then(|s| s.read_only_root_filesystem) == Some(true),
        },
        "hostname": inputs.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": inputs.cgroup,
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": inputs.netns},
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }))
}

/// Lays out a bundle's root filesystem in `rootfs` and its `/usr/local` in
/// `local`: mount points, the usual symlinks into `/usr`, a writable `/tmp`,
/// and `/etc/passwd` naming the container's user.
pub fn make_rootfs(
    rootfs: &Path,
    local: &Path,
    image: &Image,
    user: (u32, u32),
) -> std::io::Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    for dir in ["usr", "proc", "dev", "sys", "etc", "tmp", "run", "var"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    // As in distroless and Debian images: /var/run is /run.
    let var_run = rootfs.join("var/run");
    if std::fs::symlink_metadata(&var_run).is_err() {
        symlink("../run", &var_run)?;
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let path = rootfs.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            symlink(target, &path)?;
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\nnonroot:x:{}:{}:nonroot:/tmp:/bin/sh\n",
            user.0, user.1
        ),
    )?;
    std::fs::write(
        rootfs.join("etc/group"),
        format!("root:x:0:\nnonroot:x:{}:\n", user.1),
    )?;
    let bin = local.join("bin");
    std::fs::create_dir_all(&bin)?;
    // Mount points for the image's binaries inside the read-only /usr/local.
    let in_image = std::iter::once(image.entrypoint.as_str())
        .chain(image.extra.iter().map(|(_, at)| at.as_str()));
    for at in in_image {
        let point = at
            .strip_prefix("/usr/local/")
            .map(|rel| local.join(rel))
            .unwrap_or_else(|| rootfs.join(at.trim_start_matches('/')));
        if !point.exists() {
            std::fs::write(&point, b"")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(root: bool) -> Image {
        let id = if root { 0 } else { 65532 };
        Image {
            binary: PathBuf::from("/bins/weft-controller"),
            entrypoint: "/usr/local/bin/weft-controller".into(),
            user: (id, id),
            extra: vec![(
                PathBuf::from("/bins/weft-cni"),
                "/usr/local/bin/weft-cni".into(),
            )],
        }
    }

    fn container(value: Value) -> Container {
        serde_json::from_value(value).expect("container")
    }

    #[test]
    fn capabilities_follow_drop_add_and_privileged() {
        let c = container(
            json!({"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN"]}}}),
        );
        assert_eq!(
            capabilities(c.security_context.as_ref()),
            vec!["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
        let c = container(
            json!({"name": "c", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}),
        );
        let caps = capabilities(c.security_context.as_ref());
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(caps.contains(&"CAP_CHOWN".to_string()));
        let c = container(json!({"name": "c", "securityContext": {"privileged": true}}));
        assert!(capabilities(c.security_context.as_ref()).contains(&"CAP_BPF".to_string()));
        assert_eq!(capabilities(None).len(), DEFAULT_CAPS.len());
    }

    #[test]
    fn run_as_non_root_refuses_a_root_image_and_accepts_an_explicit_user() {
        let c = container(json!({"name": "c", "securityContext": {"runAsNonRoot": true}}));
        let err = user(&c, None, &image(true)).unwrap_err();
        assert!(err.contains("runAsNonRoot"), "{err}");
        assert_eq!(user(&c, None, &image(false)).expect("user"), (65532, 65532));
        let c = container(
            json!({"name": "c", "securityContext": {"runAsNonRoot": true, "runAsUser": 1000}}),
        );
        assert_eq!(user(&c, None, &image(true)).expect("user"), (1000, 1000));
        let pod: PodSecurityContext =
            serde_json::from_value(json!({"runAsUser": 7, "runAsGroup": 8})).expect("psc");
        let c = container(json!({"name": "c"}));
        assert_eq!(user(&c, Some(&pod), &image(true)).expect("user"), (7, 8));
    }

    #[test]
    fn argv_is_the_entrypoint_or_command_with_expanded_args() {
        let env: BTreeMap<String, String> = [("PORT".to_string(), "80".to_string())].into();
        let c = container(json!({"name": "c", "args": ["--port", "$(PORT)"]}));
        assert_eq!(
            argv(&c, &image(false), &env),
            vec!["/usr/local/bin/weft-controller", "--port", "80"]
        );
        let c =
            container(json!({"name": "c", "command": ["/bin/sh", "-c"], "args": ["echo $(PORT)"]}));
        assert_eq!(
            argv(&c, &image(false), &env),
            vec!["/bin/sh", "-c", "echo 80"]
        );
    }

    #[test]
    fn the_runtime_spec_carries_the_security_context() {
        let c = container(json!({"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}));
        let env = BTreeMap::new();
        let binds = [
            Bind {
                destination: "/etc/hosts".into(),
                source: "/pod/hosts".into(),
                read_only: true,
                host_to_container: false,
            },
            Bind {
                destination: "/var/run/netns".into(),
                source: "/run/netns".into(),
                read_only: false,
                host_to_container: true,
            },
        ];
        let inputs = Inputs {
            image: &image(false),
            env: &env,
            binds: &binds,
            netns: Path::new("/run/netns/p"),
            hostname: "p",
            pod_security: None,
            cgroup: "/weft-e2e/run/kubepods/besteffort/podU/c",
        };
        let spec =
            runtime_spec(&c, &inputs, Path::new("/b/rootfs"), Path::new("/b/local")).expect("spec");
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["capabilities"]["bounding"], json!([]));
        assert_eq!(spec["process"]["user"]["uid"], 65532);
        let mounts = spec["mounts"].as_array().expect("mounts");
        assert!(mounts.iter().any(|m| {
            m["destination"] == "/etc/hosts"
                && m["options"]
                    .as_array()
                    .is_some_and(|o| o.contains(&json!("ro")))
        }));
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/usr/local/bin/weft-controller")
        );
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/usr/local/bin/weft-cni")
        );
        assert!(mounts.iter().any(|m| {
            m["destination"] == "/var/run/netns"
                && m["options"]
                    .as_array()
                    .is_some_and(|o| o.contains(&json!("rslave")))
        }));
        assert_eq!(
            spec["linux"]["cgroupsPath"],
            "/weft-e2e/run/kubepods/besteffort/podU/c"
        );
        assert_eq!(spec["linux"]["namespaces"][4]["path"], "/run/netns/p");
    }
}

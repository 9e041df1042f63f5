//! A container's OCI runtime spec (`config.json`), made from its pod spec
//! the way a container runtime under a kubelet makes it: the process
//! (command, args, env, user, capabilities, no-new-privileges), the root
//! filesystem (read-only if asked), the mounts (volumes and the kubelet's
//! `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`) and the namespaces
//! (the pod's network namespace, or the node's for `hostNetwork`).
//!
//! The root filesystem is the container's own copy of its image's root
//! (see [`super::images`]); the image config gives the entrypoint, command,
//! user, environment and working directory where the pod spec does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SecurityContext};
use serde_json::{Value, json};

use weft_image::Unpacked;
use weft_image::unpack::ImageUser;

use super::env::expand;

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
    pub image: &'a Unpacked,
    /// The image's user.
    pub image_user: ImageUser,
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
/// the pod's, else the image's; refused when `runAsNonRoot` meets root, or
/// an image user given by name (which, as a kubelet, it cannot verify).
pub fn user(
    container: &Container,
    pod: Option<&PodSecurityContext>,
    image: ImageUser,
) -> Result<(u32, u32), String> {
    let own = container.security_context.as_ref();
    let pick = |c: Option<i64>, p: Option<i64>| c.or(p).map(|v| v as u32);
    let uid = pick(
        own.and_then(|s| s.run_as_user),
        pod.and_then(|s| s.run_as_user),
    )
    .unwrap_or(image.uid);
    let gid = pick(
        own.and_then(|s| s.run_as_group),
        pod.and_then(|s| s.run_as_group),
    )
    .unwrap_or(if uid == image.uid { image.gid } else { uid });
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
    let own_uid = own
        .and_then(|s| s.run_as_user)
        .or(pod.and_then(|s| s.run_as_user));
    if non_root && own_uid.is_none() && !image.numeric {
        return Err(format!(
            "container {} has runAsNonRoot and its image names its user (uid {uid}) by name, which cannot be verified: give the image a numeric user or set runAsUser",
            container.name
        ));
    }
    Ok((uid, gid))
}

/// The process' argv as Kubernetes composes it: `command` (else the
/// image's `Entrypoint`), then `args` (else, when `command` is not given,
/// the image's `Cmd`); `$(VAR)` expanded in the pod spec's parts.
pub fn argv(
    container: &Container,
    image: &Unpacked,
    env: &BTreeMap<String, String>,
) -> Vec<String> {
    let command = container.command.as_ref().filter(|c| !c.is_empty());
    let args = container.args.as_ref().filter(|a| !a.is_empty());
    let mut argv: Vec<String> = match command {
        Some(cmd) => cmd.iter().map(|c| expand(c, env)).collect(),
        None => image.config.entrypoint.clone(),
    };
    match args {
        Some(args) => argv.extend(args.iter().map(|a| expand(a, env))),
        None if command.is_none() => argv.extend(image.config.cmd.iter().cloned()),
        None => {}
    }
    argv
}

/// The process' environment: the image's, the hostname, then the pod
/// spec's (which wins over the image's for the same name); a default
/// `PATH` when neither gives one, as runtimes add.
pub fn environment(
    image: &Unpacked,
    hostname: &str,
    env: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        all.retain(|(name, _)| name != k);
        all.push((k.to_string(), v.to_string()));
    };
    for pair in &image.config.env {
        let (k, v) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
        set(k, v);
    }
    set("HOSTNAME", hostname);
    for (k, v) in env {
        set(k, v);
    }
    if !all.iter().any(|(k, _)| k == "PATH") {
        all.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    all
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

/// The OCI runtime spec of `container`; `rootfs` is the bundle's root,
/// the container's copy of its image's. Refused when the program to run
/// is not in the image or its user may not execute it.
pub fn runtime_spec(
    container: &Container,
    inputs: &Inputs<'_>,
    rootfs: &Path,
) -> Result<Value, String> {
    let security = container.security_context.as_ref();
    let (uid, gid) = user(container, inputs.pod_security, inputs.image_user)?;
    let caps = capabilities(security);
    let environment = environment(inputs.image, inputs.hostname, inputs.env);
    let args = argv(container, inputs.image, inputs.env);
    let Some(program) = args.first() else {
        return Err(format!(
            "container {}: neither its command nor its image's entrypoint names a program",
            container.name
        ));
    };
    let path = environment
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or("", |(_, v)| v.as_str());
    weft_image::unpack::check_executable(rootfs, program, path, uid, gid)?;
    let env: Vec<String> = environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
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
    ];
    mounts.extend(inputs.binds.iter().map(bind));
    let caps_json: Vec<&str> = caps.iter().map(String::as_str).collect();
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": container
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| inputs.image.config.working_dir.clone()),
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

/// Makes `rootfs` the container's own copy of its image's root, with the
/// mount points the runtime spec needs and a writable `/tmp`.
pub fn make_rootfs(rootfs: &Path, image: &Unpacked) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    weft_image::unpack::copy_root(&image.rootfs, rootfs).map_err(|e| e.to_string())?;
    for dir in ["proc", "dev", "sys", "etc", "tmp"] {
        let path = rootfs.join(dir);
        if std::fs::symlink_metadata(&path).is_err() {
            let made = std::fs::create_dir_all(&path).and_then(|()| {
                let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            });
            made.map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use weft_image::RunConfig;

    /// An image whose root is `rootfs`, holding `weft-controller` with
    /// `mode`.
    fn image(rootfs: &Path, mode: u32) -> Unpacked {
        let bin = rootfs.join("usr/local/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::write(bin.join("weft-controller"), b"").expect("write");
        std::fs::set_permissions(
            bin.join("weft-controller"),
            std::fs::Permissions::from_mode(mode),
        )
        .expect("chmod");
        Unpacked {
            rootfs: rootfs.to_path_buf(),
            config: RunConfig {
                entrypoint: vec!["/usr/local/bin/weft-controller".into()],
                cmd: vec!["--serve".into()],
                user: "65532".into(),
                env: vec!["PATH=/usr/local/bin:/bin".into(), "MODE=image".into()],
                working_dir: "/home".into(),
            },
            digest: "sha256:00".into(),
        }
    }

    fn user_of(root: bool, numeric: bool) -> ImageUser {
        let id = if root { 0 } else { 65532 };
        ImageUser {
            uid: id,
            gid: id,
            numeric,
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
    fn run_as_non_root_refuses_a_root_or_named_image_user_and_accepts_an_explicit_one() {
        let c = container(json!({"name": "c", "securityContext": {"runAsNonRoot": true}}));
        let err = user(&c, None, user_of(true, true)).unwrap_err();
        assert!(err.contains("runAsNonRoot"), "{err}");
        assert_eq!(
            user(&c, None, user_of(false, true)).expect("user"),
            (65532, 65532)
        );
        let err = user(&c, None, user_of(false, false)).unwrap_err();
        assert!(err.contains("by name"), "{err}");
        let c = container(
            json!({"name": "c", "securityContext": {"runAsNonRoot": true, "runAsUser": 1000}}),
        );
        assert_eq!(
            user(&c, None, user_of(true, false)).expect("user"),
            (1000, 1000)
        );
        let pod: PodSecurityContext =
            serde_json::from_value(json!({"runAsUser": 7, "runAsGroup": 8})).expect("psc");
        let c = container(json!({"name": "c"}));
        assert_eq!(
            user(&c, Some(&pod), user_of(true, true)).expect("user"),
            (7, 8)
        );
    }

    #[test]
    fn argv_composes_command_args_entrypoint_and_cmd_as_kubernetes_does() {
        let tmp = tempfile::tempdir().expect("tmp");
        let image = image(tmp.path(), 0o755);
        let env: BTreeMap<String, String> = [("PORT".to_string(), "80".to_string())].into();
        let c = container(json!({"name": "c"}));
        assert_eq!(
            argv(&c, &image, &env),
            ["/usr/local/bin/weft-controller", "--serve"]
        );
        let c = container(json!({"name": "c", "args": ["--port", "$(PORT)"]}));
        assert_eq!(
            argv(&c, &image, &env),
            ["/usr/local/bin/weft-controller", "--port", "80"]
        );
        let c =
            container(json!({"name": "c", "command": ["/bin/sh", "-c"], "args": ["echo $(PORT)"]}));
        assert_eq!(argv(&c, &image, &env), ["/bin/sh", "-c", "echo 80"]);
        let c = container(json!({"name": "c", "command": ["/bin/true"]}));
        assert_eq!(argv(&c, &image, &env), ["/bin/true"], "no image Cmd");
    }

    #[test]
    fn the_runtime_spec_carries_the_image_config_and_the_security_context() {
        let tmp = tempfile::tempdir().expect("tmp");
        let image = image(tmp.path(), 0o755);
        let c = container(json!({"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}}));
        let env: BTreeMap<String, String> = [("MODE".to_string(), "pod".to_string())].into();
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
            image: &image,
            image_user: user_of(false, true),
            env: &env,
            binds: &binds,
            netns: Path::new("/run/netns/p"),
            hostname: "p",
            pod_security: None,
            cgroup: "/weft-e2e/run/kubepods/besteffort/podU/c",
        };
        let spec = runtime_spec(&c, &inputs, tmp.path()).expect("spec");
        assert_eq!(spec["process"]["noNewPrivileges"], true);
        assert_eq!(spec["root"]["readonly"], true);
        assert_eq!(spec["process"]["capabilities"]["bounding"], json!([]));
        assert_eq!(spec["process"]["user"]["uid"], 65532);
        assert_eq!(spec["process"]["cwd"], "/home", "the image's WorkingDir");
        assert_eq!(
            spec["process"]["args"],
            json!(["/usr/local/bin/weft-controller", "--serve"])
        );
        let env = spec["process"]["env"].as_array().expect("env");
        assert!(env.contains(&json!("PATH=/usr/local/bin:/bin")), "{env:?}");
        assert!(env.contains(&json!("MODE=pod")), "the pod's wins: {env:?}");
        assert!(!env.contains(&json!("MODE=image")), "{env:?}");
        let mounts = spec["mounts"].as_array().expect("mounts");
        assert!(
            !mounts.iter().any(|m| m["destination"] == "/usr"),
            "nothing of the machine's /usr"
        );
        assert!(mounts.iter().any(|m| {
            m["destination"] == "/etc/hosts"
                && m["options"]
                    .as_array()
                    .is_some_and(|o| o.contains(&json!("ro")))
        }));
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

        // A command the image does not carry, by path and by PATH.
        let c = container(json!({"name": "c", "command": ["/usr/local/bin/absent"]}));
        let err = runtime_spec(&c, &inputs, tmp.path()).unwrap_err();
        assert!(
            err.contains("\"/usr/local/bin/absent\": no such file"),
            "{err}"
        );
        let c = container(json!({"name": "c", "command": ["sh"]}));
        let err = runtime_spec(&c, &inputs, tmp.path()).unwrap_err();
        assert!(err.contains("not found in $PATH"), "{err}");
    }

    #[test]
    fn an_entrypoint_its_user_may_not_execute_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let image = image(tmp.path(), 0o700);
        let env = BTreeMap::new();
        let inputs = Inputs {
            image: &image,
            image_user: user_of(false, true),
            env: &env,
            binds: &[],
            netns: Path::new("/run/netns/p"),
            hostname: "p",
            pod_security: None,
            cgroup: "/c",
        };
        let err = runtime_spec(&container(json!({"name": "c"})), &inputs, tmp.path()).unwrap_err();
        assert!(err.contains("permission denied"), "{err}");
        assert!(err.contains("weft-controller"), "{err}");
        // Root may.
        let c = container(json!({"name": "c", "securityContext": {"runAsUser": 0}}));
        runtime_spec(&c, &inputs, tmp.path()).expect("root runs it");
    }
}

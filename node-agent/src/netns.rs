//! Finding a running pod's network namespace; the namespaces themselves are
//! `weft_netns`'s.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use weft_netns::{NetNs, NetnsError};

/// Finds the network namespace of a running Kubernetes pod by its UID, by
/// scanning `/proc` (`proc_root`) for a process whose cgroup path names the
/// pod (`pod<uid>`, with `-` or, under the systemd cgroup driver, `_`) and
/// whose namespace is not the host's (host-network pods have none of their
/// own). Returns a `/proc/<pid>/ns/net` path.
pub fn find_pod_netns(proc_root: &Path, pod_uid: &str) -> io::Result<Option<PathBuf>> {
    if pod_uid.is_empty() {
        return Ok(None);
    }
    let needles = [
        format!("pod{pod_uid}"),
        format!("pod{}", pod_uid.replace('-', "_")),
    ];
    let host_inode = fs::metadata(proc_root.join("self/ns/net"))
        .map(|m| m.ino())
        .ok();
    let mut pids: Vec<u32> = fs::read_dir(proc_root)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Lowest pid first: the sandbox (pause) process starts before the
    // containers, so it is found first when several match.
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        // Processes come and go while we scan; a vanished one is skipped.
        let Ok(cgroup) = fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        if !needles.iter().any(|n| cgroup.contains(n.as_str())) {
            continue;
        }
        let ns = dir.join("ns/net");
        let Ok(meta) = fs::metadata(&ns) else {
            continue;
        };
        if Some(meta.ino()) == host_inode {
            continue;
        }
        return Ok(Some(ns));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_scan_finds_pod_by_uid() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let mk = |pid: &str, cgroup: &str| {
            let d = root.join(pid);
            fs::create_dir_all(d.join("ns")).expect("mkdir");
            fs::write(d.join("cgroup"), cgroup).expect("cgroup");
            fs::write(d.join("ns/net"), pid).expect("ns");
        };
        fs::create_dir_all(root.join("self/ns")).expect("mkdir");
        fs::write(root.join("self/ns/net"), "host").expect("host ns");
        mk("1", "0::/init.scope\n");
        mk(
            "40",
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd.slice/cri-containerd-x.scope\n",
        );
        mk("300", "0::/kubepods/besteffort/pod9999-0000/abc\n");
        fs::create_dir_all(root.join("notapid")).expect("mkdir");
        assert_eq!(
            find_pod_netns(root, "1234-abcd").expect("scan"),
            Some(root.join("40/ns/net"))
        );
        assert_eq!(
            find_pod_netns(root, "9999-0000").expect("scan"),
            Some(root.join("300/ns/net"))
        );
        assert_eq!(find_pod_netns(root, "nope").expect("scan"), None);
        assert_eq!(find_pod_netns(root, "").expect("scan"), None);
    }
}

//! A process's memory as the kernel reports it in `/proc/<pid>/status`.

use std::fmt::Display;

/// Field `field` (`VmRSS`, `RssAnon`, `VmHWM`, …) of `pid`'s status, in MiB;
/// `None` if the process or the field is gone.
pub fn status_mib(pid: impl Display, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: f64 = value.trim().strip_suffix(" kB")?.trim().parse().ok()?;
        Some(kib / 1024.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_not_a_prefix_of_a_field() {
        let me = std::process::id();
        let rss = status_mib(me, "VmRSS").expect("VmRSS");
        let anon = status_mib(me, "RssAnon").expect("RssAnon");
        assert!(rss > 0.0 && anon > 0.0 && anon <= rss, "{rss} {anon}");
        assert_eq!(status_mib(me, "VmRS"), None);
        assert_eq!(status_mib(me, "NoSuchField"), None);
    }
}

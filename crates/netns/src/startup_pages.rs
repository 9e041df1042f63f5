//! Giving back the pages that only start-up needed.
//!
//! Right after start-up most of a node component's resident memory (ztunnel,
//! the waypoint, the node agent) is not its heap but its own binary:
//! argument parsing, TLS and gRPC set-up, the first config's decoding and
//! certificate requests each fault in code and read-only data, and the
//! kernel maps 64 KiB around every page touched. An idle process runs
//! little of it again, yet those pages stay mapped, and counted in its RSS,
//! for the life of the process.
//!
//! Once the process is serving, [`release`] drops this process's mappings of
//! pages that are read-only, backed by a file and hold no private copy
//! (`MADV_DONTNEED`). The pages stay in the page cache, where the kernel can
//! reclaim them under pressure instead of treating them as the process's;
//! what it runs next is mapped back with a minor fault. A mapping with a
//! private copy (relocated data, anything ever written) is never touched: for
//! those, `MADV_DONTNEED` would throw the writes away.

use std::ffi::c_void;
use std::io;
use std::ptr::NonNull;

use nix::sys::mman::{MmapAdvise, madvise};

/// What [`release`] gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Released {
    /// Mappings whose pages were dropped.
    pub mappings: usize,
    /// Resident bytes they held just before.
    pub bytes: u64,
}

/// One mapping of `/proc/self/smaps` that may be dropped: its address range
/// and how much of it was resident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Releasable {
    start: usize,
    end: usize,
    resident: u64,
}

/// Drops this process's mappings of its read-only, file-backed pages (module
/// doc). A mapping the kernel refuses (a device's, say) is left as it is.
#[allow(unsafe_code)]
pub fn release() -> io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for mapping in releasable(&smaps) {
        let Some(start) = NonNull::new(mapping.start as *mut c_void) else {
            continue;
        };
        // SAFETY: the range is one whole mapping of this process that is
        // read-only and holds no private (anonymous) page, so dropping it
        // loses nothing: every page reads back from its file unchanged.
        let dropped = unsafe {
            madvise(
                start,
                mapping.end - mapping.start,
                MmapAdvise::MADV_DONTNEED,
            )
        };
        if dropped.is_ok() {
            released.mappings += 1;
            released.bytes += mapping.resident;
        }
    }
    Ok(released)
}

/// [`release`], for a process that has just finished starting: logs what it
/// gave back, or why it gave back nothing (the process runs on either way).
pub fn give_back() {
    match release() {
        Ok(released) => tracing::info!(
            kib = released.bytes / 1024,
            mappings = released.mappings,
            "gave back the pages only start-up used"
        ),
        Err(error) => tracing::warn!(
            %error,
            "could not read this process's mappings; start-up pages stay resident"
        ),
    }
}

/// The mappings in `smaps` (the format of `/proc/<pid>/smaps`) that are
/// readable, not writable, backed by a file and without anonymous pages.
fn releasable(smaps: &str) -> Vec<Releasable> {
    let mut found = Vec::new();
    let mut lines = smaps.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(header) = Header::parse(line) else {
            continue;
        };
        let (mut resident, mut anonymous) = (0, None);
        while let Some(field) = lines.next_if(|l| Header::parse(l).is_none()) {
            match kib_field(field) {
                Some(("Rss", kib)) => resident = kib * 1024,
                Some(("Anonymous", kib)) => anonymous = Some(kib),
                _ => {}
            }
        }
        // Only a mapping whose `Anonymous` line says 0 qualifies; one
        // without the line (an older kernel) is left alone.
        if header.qualifies && anonymous == Some(0) {
            found.push(Releasable {
                start: header.start,
                end: header.end,
                resident,
            });
        }
    }
    found
}

/// The first line of a mapping in `smaps`.
struct Header {
    start: usize,
    end: usize,
    /// Readable, not writable, backed by a file.
    qualifies: bool,
}

impl Header {
    /// `None` if `line` is not a mapping's first line (a field line).
    fn parse(line: &str) -> Option<Header> {
        let mut parts = line.split_whitespace();
        let (start, end) = parts.next()?.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        let perms = parts.next()?.as_bytes();
        let (_offset, _device, inode) = (parts.next()?, parts.next()?, parts.next()?);
        let path = parts.next().unwrap_or("");
        let qualifies = perms.len() == 4
            && perms[0] == b'r'
            && perms[1] != b'w'
            && inode != "0"
            && path.starts_with('/')
            && end > start;
        Some(Header {
            start,
            end,
            qualifies,
        })
    }
}

/// `("Rss", 1200)` from `Rss:  1200 kB`; `None` for a line of another shape.
fn kib_field(line: &str) -> Option<(&str, u64)> {
    let (field, value) = line.split_once(':')?;
    let kib = value.trim().strip_suffix(" kB")?.parse().ok()?;
    Some((field, kib))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55ab6fe74000-55ab700c1000 r--p 00000000 fe:00 1155859                    /usr/bin/ztunnel
Size:               2356 kB
Rss:                1200 kB
Anonymous:             0 kB
55ab700c1000-55ab70a27000 r-xp 0024c000 fe:00 1155859                    /usr/bin/ztunnel
Size:               9624 kB
Rss:                5572 kB
Anonymous:             0 kB
55ab70a27000-55ab70a65000 r--p 00bb1000 fe:00 1155859                    /usr/bin/ztunnel
Size:                248 kB
Rss:                 248 kB
Anonymous:           248 kB
55ab70a65000-55ab70a70000 rw-p 00bef000 fe:00 1155859                    /usr/bin/ztunnel
Size:                 44 kB
Rss:                  44 kB
Anonymous:            12 kB
7fb887600000-7fb887a00000 rw-p 00000000 00:00 0 
Size:               4096 kB
Rss:                 768 kB
Anonymous:           768 kB
7ffeefdbd000-7ffeefdbf000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
7fb887e00000-7fb887e01000 ---p 00000000 fe:00 326269                     /usr/lib/libc.so.6
Size:                  4 kB
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_mappings_without_private_pages_qualify() {
        let found = releasable(SMAPS);
        assert_eq!(
            found,
            vec![
                Releasable {
                    start: 0x55ab6fe74000,
                    end: 0x55ab700c1000,
                    resident: 1200 * 1024,
                },
                Releasable {
                    start: 0x55ab700c1000,
                    end: 0x55ab70a27000,
                    resident: 5572 * 1024,
                },
            ],
            "the relocated read-only data (anonymous pages), the writable data, \
             anonymous memory, the vDSO and an inaccessible guard are left alone"
        );
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_left_alone() {
        let old_kernel = "\
55ab700c1000-55ab70a27000 r-xp 0024c000 fe:00 1155859                    /usr/bin/ztunnel
Size:               9624 kB
Rss:                5572 kB
";
        assert_eq!(releasable(old_kernel), vec![]);
    }

    #[test]
    fn garbage_finds_nothing() {
        assert_eq!(releasable("not smaps\n\u{0}\n-\n12-zz r-xp\n"), vec![]);
    }

    /// Resident bytes of this process's mappings that `release` would drop.
    fn releasable_resident() -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        releasable(&smaps).iter().map(|m| m.resident).sum()
    }

    #[test]
    fn releasing_drops_resident_code_and_the_process_runs_on() {
        let before = releasable_resident();
        assert!(before > 0, "the test binary's own code is resident");
        let released = release().expect("release");
        assert!(released.mappings > 0 && released.bytes > 0, "{released:?}");
        let after = releasable_resident();
        assert!(
            after < before,
            "resident read-only file pages: {before} bytes before, {after} after"
        );
        // The code it dropped still runs: parse again, with the same result.
        assert_eq!(releasable(SMAPS).len(), 2);
        let data: Vec<u64> = (0..1000).collect();
        assert_eq!(data.iter().sum::<u64>(), 499_500);
    }
}

//! The local-leg bypass on a real kernel: a pod network namespace with
//! weft's own redirect rules, the BPF programs loaded and attached to the
//! node's root cgroup, a stand-in for ztunnel on the pod's 15001 and an
//! application. Every byte must arrive, in order, with the end of stream
//! after it, and the program's counters must show the bytes went socket to
//! socket. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use weft_netns::NetNs;
use weft_node_agent::bypass::{DEFAULT_CGROUP, LocalBypass};
use weft_node_agent::redirect::{Backend, DEFAULT_PROBE_SOURCE, Redirector};

const POD_IP: &str = "10.78.0.2";
/// A destination the pod's rules redirect to ztunnel's 15001.
const REMOTE: &str = "10.78.0.9:80";
/// ztunnel's mark: its sockets pass the pod's rules uncaptured.
const ZTUNNEL_MARK: u32 = 0x539;

/// A pod namespace with an address, a route and weft's redirect rules.
fn pod() -> (NamedNetns, NetNs) {
    require_root_and_tools();
    let ns = NamedNetns::new("wb");
    ns.exec(&[
        "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ns.exec(&["ip", "addr", "add", &format!("{POD_IP}/24"), "dev", "v0"]);
    ns.exec(&["ip", "link", "set", "v0", "up"]);
    ns.exec(&["ip", "link", "set", "v1", "up"]);
    let netns = ns.open();
    Redirector::new(Backend::Nftables, DEFAULT_PROBE_SOURCE)
        .apply(&netns)
        .expect("redirect rules");
    (ns, netns)
}

/// A pod enrolled in a freshly loaded bypass.
fn enrolled_pod() -> (NamedNetns, NetNs, LocalBypass) {
    let (ns, netns) = pod();
    let bypass = load();
    let cookie = netns.cookie().expect("cookie");
    bypass.enroll(cookie).expect("enroll");
    (ns, netns, bypass)
}

fn load() -> LocalBypass {
    LocalBypass::load(Path::new(DEFAULT_CGROUP), None)
        .expect("this kernel offers sockmap and sk_msg")
}

/// ztunnel's stand-in: accepts on the pod's 15001 and echoes every byte,
/// counting what it read.
fn echo_on_15001(netns: &NetNs, read: Arc<AtomicU64>) {
    let listener = netns
        .run(|| TcpListener::bind("0.0.0.0:15001"))
        .expect("enter")
        .expect("bind 15001");
    echo_on(listener, read);
}

/// The same on `[::]:15001`, IPv6 only, as the node agent binds it beside
/// the IPv4 one.
fn echo_on_15001_v6(netns: &NetNs, read: Arc<AtomicU64>) {
    let listener = netns
        .run(|| {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            socket.set_only_v6(true)?;
            socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 15001)).into())?;
            socket.listen(128)?;
            Ok::<_, std::io::Error>(TcpListener::from(socket))
        })
        .expect("enter")
        .expect("bind [::]:15001");
    echo_on(listener, read);
}

fn echo_on(listener: TcpListener, read: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let read = read.clone();
            std::thread::spawn(move || echo(conn, &read));
        }
    });
}

fn echo(mut conn: TcpStream, read: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => {
                let _ = conn.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                read.fetch_add(n as u64, Ordering::Relaxed);
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if retry(&e) => {}
            Err(_) => return,
        }
    }
}

/// A blocking read of a socket in a sockmap may return `EAGAIN` when woken
/// without data (docs/design.md §7, why the bypass is off by default); the
/// stand-ins read again, as a non-blocking application would.
fn retry(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
    )
}

/// Fills `buf`, or fails at the end of stream.
fn read_fully(conn: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `total` patterned bytes in uneven chunks, reading each chunk's echo
/// before the next, then half-closes and expects the end of stream.
fn exchange(mut conn: TcpStream, seed: usize, total: usize) {
    let mut sent = 0;
    let mut chunk = 0;
    while sent < total {
        let len = (1 + (seed * 7919 + chunk * 104_729) % 65_000).min(total - sent);
        let data: Vec<u8> = (sent..sent + len)
            .map(|i| ((i * 31 + seed) % 251) as u8)
            .collect();
        conn.write_all(&data).expect("write");
        let mut back = vec![0u8; len];
        read_fully(&mut conn, &mut back).expect("read the echo");
        assert!(
            back == data,
            "connection {seed}: bytes {sent}..{} came back different",
            sent + len
        );
        sent += len;
        chunk += 1;
    }
    conn.shutdown(Shutdown::Write).expect("half-close");
    let mut one = [0u8; 1];
    let end = read_fully(&mut conn, &mut one).expect_err("bytes after the echo");
    assert_eq!(
        end.kind(),
        std::io::ErrorKind::UnexpectedEof,
        "connection {seed}: {end}"
    );
}

fn connect_in(netns: &NetNs, to: &str, mark: Option<u32>) -> TcpStream {
    let to: SocketAddr = to.parse().expect("address");
    netns
        .run(|| {
            let domain = socket2::Domain::for_address(to);
            let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            if let Some(mark) = mark {
                socket.set_mark(mark)?;
            }
            socket.connect(&to.into())?;
            Ok::<_, std::io::Error>(TcpStream::from(socket))
        })
        .expect("enter")
        .expect("connect")
}

#[test]
fn captured_outbound_legs_go_socket_to_socket_with_every_byte_in_order() {
    let (_ns, netns, bypass) = enrolled_pod();
    let read = Arc::new(AtomicU64::new(0));
    echo_on_15001(&netns, read.clone());

    const CONNECTIONS: usize = 16;
    const BYTES: usize = 1 << 20;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|seed| {
            let conn = connect_in(&netns, REMOTE, None);
            std::thread::spawn(move || exchange(conn, seed, BYTES))
        })
        .collect();
    for c in clients {
        c.join().expect("a connection failed");
    }

    let total = (CONNECTIONS * BYTES) as u64;
    // ztunnel's stand-in read every byte itself: the bypass moves bytes
    // between sockets, it does not hide them from ztunnel.
    assert_eq!(read.load(Ordering::Relaxed), total);
    let counters = bypass.counters();
    assert_eq!(counters.paired_legs, CONNECTIONS as u64, "{counters:?}");
    // Both directions of every leg: the application's bytes and the echo.
    assert_eq!(counters.bypassed_bytes, 2 * total, "{counters:?}");
    assert_eq!(counters.first_send_over_tcp, 0, "{counters:?}");
}

/// The program reads IPv6 addresses from other fields than IPv4's: the
/// same exchange from an IPv6 pod address to an IPv6 destination. An IPv6
/// socket reaching an IPv4 destination (a v4-mapped address) is accepted
/// on the IPv4 listener: its two sockets name the addresses differently,
/// so it is not paired and every byte still arrives over TCP.
#[test]
fn captured_ipv6_legs_are_paired_too() {
    let (ns, netns, bypass) = enrolled_pod();
    let v6 = [
        "ip",
        "-6",
        "addr",
        "add",
        "fd78::2/64",
        "dev",
        "v0",
        "nodad",
    ];
    ns.exec(&v6);
    let read = Arc::new(AtomicU64::new(0));
    echo_on_15001(&netns, read.clone());
    echo_on_15001_v6(&netns, read.clone());

    exchange(
        connect_in(&netns, "[::ffff:10.78.0.9]:80", None),
        9,
        64 * 1024,
    );
    assert_eq!(read.load(Ordering::Relaxed), 64 * 1024);
    let mixed = bypass.counters();
    assert_eq!(mixed.paired_legs, 0, "a mixed pair was paired: {mixed:?}");
    read.store(0, Ordering::Relaxed);

    const CONNECTIONS: usize = 4;
    const BYTES: usize = 256 * 1024;
    for seed in 0..CONNECTIONS {
        exchange(connect_in(&netns, "[fd78::9]:80", None), seed, BYTES);
    }

    let total = (CONNECTIONS * BYTES) as u64;
    assert_eq!(read.load(Ordering::Relaxed), total);
    let counters = bypass.counters();
    assert_eq!(counters.paired_legs, CONNECTIONS as u64, "{counters:?}");
    assert_eq!(
        counters.bypassed_bytes - mixed.bypassed_bytes,
        2 * total,
        "{counters:?}"
    );
}

#[test]
fn an_inbound_leg_from_ztunnels_marked_socket_is_paired_with_the_application() {
    let (_ns, netns, bypass) = enrolled_pod();
    let read = Arc::new(AtomicU64::new(0));
    // The application's server; ztunnel connects to it from inside the pod
    // with its mark, as it does after a tunnel's CONNECT.
    let app = netns
        .run(|| TcpListener::bind((POD_IP, 8080)))
        .expect("enter")
        .expect("bind the application");
    let served = read.clone();
    std::thread::spawn(move || {
        for conn in app.incoming() {
            let Ok(conn) = conn else { return };
            let served = served.clone();
            std::thread::spawn(move || echo(conn, &served));
        }
    });
    let conn = connect_in(&netns, &format!("{POD_IP}:8080"), Some(ZTUNNEL_MARK));
    exchange(conn, 3, 256 * 1024);

    assert_eq!(read.load(Ordering::Relaxed), 256 * 1024);
    let counters = bypass.counters();
    assert_eq!(counters.paired_legs, 1, "{counters:?}");
    assert_eq!(counters.bypassed_bytes, 2 * 256 * 1024, "{counters:?}");
}

#[test]
fn a_pod_not_enrolled_or_forgotten_keeps_its_legs_on_tcp() {
    let (_ns, netns) = pod();
    let bypass = load();
    let read = Arc::new(AtomicU64::new(0));
    echo_on_15001(&netns, read.clone());

    exchange(connect_in(&netns, REMOTE, None), 1, 64 * 1024);
    let cookie = netns.cookie().expect("cookie");
    bypass.enroll(cookie).expect("enroll");
    bypass.forget(cookie);
    exchange(connect_in(&netns, REMOTE, None), 2, 64 * 1024);

    assert_eq!(read.load(Ordering::Relaxed), 2 * 64 * 1024);
    assert_eq!(bypass.counters(), Default::default());
}

#[test]
fn without_a_cgroup2_hierarchy_the_bypass_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = LocalBypass::load(dir.path(), None).expect_err("a plain directory is no cgroup");
    assert!(err.to_string().contains("no cgroup v2 hierarchy"), "{err}");
}

/// An agent restart with pinned maps: the first agent's bypass is dropped
/// (as at its exit) while a paired connection is open, the connection goes
/// on with every byte, and the next agent takes over the pins, counters
/// included, and pairs new connections of the pods it enrolls again (not
/// before). Removing the pins detaches it all.
#[test]
fn pinned_the_bypass_outlives_the_agent_and_the_next_one_takes_it_over() {
    let (_ns, netns) = pod();
    let pins = tempfile::tempdir().expect("tempdir");
    let root = pins.path().join("weft");
    let mounted = Unmount(root.clone());
    let first = LocalBypass::load(Path::new(DEFAULT_CGROUP), Some(&root)).expect("pinned load");
    first
        .enroll(netns.cookie().expect("cookie"))
        .expect("enroll");
    let read = Arc::new(AtomicU64::new(0));
    echo_on_15001(&netns, read.clone());

    let mut conn = connect_in(&netns, REMOTE, None);
    conn.write_all(b"before").expect("write");
    let mut back = [0u8; 6];
    read_fully(&mut conn, &mut back).expect("echo");
    assert_eq!(first.counters().paired_legs, 1);
    drop(first);

    // The pinned link still pairs, the pinned map still carries the leg.
    exchange(conn, 5, 512 * 1024);
    let second = LocalBypass::load(Path::new(DEFAULT_CGROUP), Some(&root)).expect("second load");
    let counters = second.counters();
    assert_eq!(counters.paired_legs, 1, "{counters:?}");
    assert_eq!(
        counters.bypassed_bytes,
        2 * (6 + 512 * 1024),
        "{counters:?}"
    );
    // Its pods map starts empty (a pod may have left while no agent ran):
    // the pod takes the bypass again once this agent enrolls it.
    exchange(connect_in(&netns, REMOTE, None), 6, 64 * 1024);
    assert_eq!(second.counters().paired_legs, 1, "paired before enrolled");
    second
        .enroll(netns.cookie().expect("cookie"))
        .expect("enroll again");
    exchange(connect_in(&netns, REMOTE, None), 8, 64 * 1024);
    assert_eq!(second.counters().paired_legs, 2);
    drop(second);

    LocalBypass::remove_pins(&root).expect("remove pins");
    exchange(connect_in(&netns, REMOTE, None), 7, 64 * 1024);
    drop(mounted);
}

/// Unmounts the BPF filesystem the loader mounted for the test.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = LocalBypass::remove_pins(&self.0);
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

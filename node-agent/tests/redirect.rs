//! The redirect rules on real network namespaces, with both backends:
//! applying twice leaves one set, removal leaves nothing. Needs root.

mod common;

use std::time::Duration;

use common::*;
use weft_node_agent::redirect::{Backend, DEFAULT_PROBE_SOURCE, Redirector};

/// Everything netfilter and routing hold in the namespace, as text.
fn snapshot(ns: &NamedNetns) -> String {
    let mut out = String::new();
    out += &ns.exec(&["nft", "list", "ruleset"]);
    out += &ns
        .exec(&["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    out += &ns.exec(&["ip", "rule", "show"]);
    out += &ns.exec(&["ip", "route", "show", "table", "all"]);
    out
}

fn idempotent_and_clean(backend: Backend) {
    require_root_and_tools();
    let ns = NamedNetns::new("wr");
    let before = snapshot(&ns);
    let r = Redirector::new(backend, DEFAULT_PROBE_SOURCE);
    let netns = ns.open();

    assert_eq!(r.apply(&netns).expect("apply"), backend);
    let once = snapshot(&ns);
    assert!(r.inspect(&netns).expect("inspect").complete());
    r.apply(&netns).expect("apply again");
    let twice = snapshot(&ns);
    assert_eq!(once, twice, "applying twice changed the rule set");
    match backend {
        Backend::Iptables => {
            let save = ns.exec(&["iptables-save"]);
            assert_eq!(
                save.matches("-A OUTPUT -j WEFT_OUTPUT").count(),
                2,
                "one jump in nat and one in mangle:\n{save}"
            );
            assert_eq!(save.matches("--to-ports 15001").count(), 1);
        }
        _ => assert_eq!(once.matches("redirect to :15001").count(), 1),
    }
    assert_eq!(once.matches("fwmark 0x111/0xfff lookup 100").count(), 1);

    r.remove(&netns).expect("remove");
    assert!(r.inspect(&netns).expect("inspect").empty());
    let after = snapshot(&ns);
    assert!(
        !after.contains("weft") && !after.contains("WEFT") && !after.contains("0x111"),
        "left behind:\n{after}"
    );
    // The kernel's own entries are untouched (only `lo up` differs, which
    // apply needs and removal deliberately keeps).
    assert_eq!(
        after.lines().filter(|l| l.contains("lookup")).count(),
        before.lines().filter(|l| l.contains("lookup")).count()
    );
    if backend == Backend::Nftables {
        assert_eq!(before, after, "the namespace is not back to where it was");
    }
    // (iptables-nft keeps the empty built-in nat/mangle chains it created,
    // policy ACCEPT: no rule of weft's, nothing that acts on a packet.)
    r.remove(&netns).expect("removing twice is fine");
}

#[test]
fn nftables_apply_twice_is_one_set_and_removal_leaves_nothing() {
    idempotent_and_clean(Backend::Nftables);
}

#[test]
fn iptables_apply_twice_is_one_set_and_removal_leaves_nothing() {
    idempotent_and_clean(Backend::Iptables);
}

#[test]
fn auto_prefers_nftables() {
    require_root_and_tools();
    let ns = NamedNetns::new("wr");
    let r = Redirector::new(Backend::Auto, DEFAULT_PROBE_SOURCE);
    assert_eq!(r.apply(&ns.open()).expect("apply"), Backend::Nftables);
    r.remove(&ns.open()).expect("remove");
}

/// The capture ports take only what the rules redirected: a connection made
/// straight to 15001 or 15006 (the pod dialling its own loopback, or a
/// marked socket as ztunnel's are) is reset, so nothing can make ztunnel
/// accept its own traffic again. A redirected connection still arrives.
fn capture_ports_take_only_redirected_connections(backend: Backend) {
    require_root_and_tools();
    let ns = NamedNetns::new("wr");
    // An interface with an address and a route, so outbound traffic leaves
    // through something that is not `lo` and gets redirected.
    ns.exec(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    ns.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "d0"]);
    ns.exec(&["ip", "link", "set", "d0", "up"]);
    ns.exec(&["ip", "link", "set", "d1", "up"]);
    let netns = ns.open();
    Redirector::new(backend, DEFAULT_PROBE_SOURCE)
        .apply(&netns)
        .expect("apply");
    let outbound = listen_in(&netns, 15001);
    let inbound = listen_in(&netns, 15006);

    let redirected = connect_from(&netns, "10.77.0.9:80".parse().expect("addr"), None)
        .expect("a redirected connection reaches 15001");
    let accepted = accept_within(&outbound, Duration::from_secs(5)).expect("accepted on 15001");
    assert_eq!(original_dst(&accepted).to_string(), "10.77.0.9:80");
    drop((redirected, accepted));

    for (dst, mark) in [
        ("127.0.0.1:15001", None),
        ("127.0.0.1:15006", None),
        ("10.77.0.1:15001", None),
        ("10.77.0.1:15006", None),
        ("10.77.0.1:15001", Some(0x539)),
        ("127.0.0.1:15006", Some(0x539)),
    ] {
        let result = connect_from(&netns, dst.parse().expect("addr"), mark);
        assert!(
            matches!(&result, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
            "{backend:?}: a direct connection to {dst} (mark {mark:?}) was not reset: {result:?}"
        );
    }
    assert!(accept_within(&outbound, Duration::from_millis(200)).is_none());
    assert!(accept_within(&inbound, Duration::from_millis(200)).is_none());
}

#[test]
fn nftables_capture_ports_take_only_redirected_connections() {
    capture_ports_take_only_redirected_connections(Backend::Nftables);
}

#[test]
fn iptables_capture_ports_take_only_redirected_connections() {
    capture_ports_take_only_redirected_connections(Backend::Iptables);
}

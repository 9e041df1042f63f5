//! The redirect rules of docs/design.md §7, installed inside a pod's network
//! namespace.
//!
//! - Outbound TCP that is not ztunnel's own (mark `0x539/0xfff`), not to
//!   loopback, not out of `lo` (the pod talking to itself) and not to the
//!   probe source → `REDIRECT :15001`.
//! - Inbound TCP not to 15008, not marked, not from the node's probe source
//!   and not arriving on `lo` → `REDIRECT :15006`.
//! - ztunnel's capture ports (15001, 15006) accept only connections the
//!   rules above redirected there (conntrack status DNAT); anything sent to
//!   them directly — from outside, or the pod dialling its own
//!   `127.0.0.1:15001` — is reset. ztunnel's own marked connections are
//!   never redirected, so they cannot reach its listeners either: the rules
//!   cannot feed ztunnel its own traffic (security finding: a proxy loop).
//! - Source preservation: ztunnel connects to the application from the
//!   original client's IP (`IP_TRANSPARENT`, mark 0x539). Such packets get
//!   connmark 0x111 on the way in; the application's replies get the mark
//!   back in OUTPUT and `ip rule fwmark 0x111/0xfff lookup 100` with
//!   `local 0.0.0.0/0 dev lo table 100` delivers them locally, to ztunnel,
//!   instead of routing them out to the (spoofed) client address.
//!
//! Backends: nftables (one `inet weft` table, replaced atomically in a single
//! `nft -f` transaction) when `nft` works in the namespace, iptables
//! (`WEFT_PRERT`/`WEFT_OUTPUT` chains in `nat` and `mangle`, IPv4) otherwise.
//! We drive the `nft`/`iptables-restore`/`ip` tools rather than netlink: they
//! are on every node that has netfilter, their text is what operators read
//! when debugging, and a rule set is a dozen lines applied a few times per pod
//! lifetime, so the fork cost is irrelevant. Both backends are idempotent:
//! applying twice leaves one set, and removal leaves nothing of weft's.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use weft_cni::report::RuleState;

use crate::netns::NetNs;

/// The mark on every socket ztunnel opens in a pod netns (docs/design.md §3).
pub const ZTUNNEL_MARK: u32 = 0x539;
/// The connmark of connections ztunnel opened from a spoofed client IP.
pub const CONNMARK: u32 = 0x111;
/// The mask both marks are compared under.
pub const MARK_MASK: u32 = 0xfff;
/// The routing table holding the local route for marked replies.
pub const ROUTE_TABLE: u32 = 100;
/// Captured outbound.
pub const OUTBOUND_PORT: u16 = 15001;
/// Captured inbound plaintext.
pub const INBOUND_PORT: u16 = 15006;
/// Inbound HBONE: reaches ztunnel directly.
pub const HBONE_PORT: u16 = 15008;
/// The default source address of the node's health probes.
pub const DEFAULT_PROBE_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 127);

const NFT_TABLE: &str = "weft";
const IPT_PRERT: &str = "WEFT_PRERT";
const IPT_OUTPUT: &str = "WEFT_OUTPUT";
const IPT_INPUT: &str = "WEFT_INPUT";

/// Every jump from a built-in chain to one of weft's iptables chains:
/// (table, built-in chain, weft chain).
const IPT_JUMPS: [(&str, &str, &str); 5] = [
    ("mangle", "PREROUTING", IPT_PRERT),
    ("mangle", "OUTPUT", IPT_OUTPUT),
    ("nat", "PREROUTING", IPT_PRERT),
    ("nat", "OUTPUT", IPT_OUTPUT),
    ("filter", "INPUT", IPT_INPUT),
];

/// Which tool programs the rules.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// nftables if `nft` works in the pod namespace, else iptables.
    Auto,
    /// `nft`.
    Nftables,
    /// `iptables-restore` (whichever variant `iptables` is on the node).
    Iptables,
}

/// Why rules could not be applied, removed or read.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// A tool could not be started (not installed?).
    #[error("cannot run {program}: {source} (is it installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// A tool exited with an error.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
}

/// Installs and removes the rules.
#[derive(Clone, Debug)]
pub struct Redirector {
    backend: Backend,
    probe_source: Ipv4Addr,
}

impl Redirector {
    /// A redirector with the given backend and probe source.
    pub fn new(backend: Backend, probe_source: Ipv4Addr) -> Redirector {
        Redirector {
            backend,
            probe_source,
        }
    }

    /// Installs (or re-installs) the full rule set in `ns`; returns the
    /// backend used.
    pub fn apply(&self, ns: &NetNs) -> Result<Backend, RedirectError> {
        let backend = self.resolve(ns);
        match backend {
            Backend::Iptables => self.apply_iptables(ns)?,
            _ => drop(run(
                ns.command("nft").args(["-f", "-"]),
                Some(&self.nft_ruleset()),
            )??),
        }
        apply_routing(ns)?;
        Ok(backend)
    }

    /// Removes everything weft installed in `ns`, with either backend.
    /// Absent pieces are fine; tools that are not installed are skipped.
    pub fn remove(&self, ns: &NetNs) -> Result<(), RedirectError> {
        // `add` then `delete` in one transaction: deletes the table whether or
        // not it existed (nft 1.0.6 has no `destroy`).
        let flush = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n");
        ignore_missing(run(ns.command("nft").args(["-f", "-"]), Some(&flush)))?;
        if tool_works(ns, "iptables", &["-t", "nat", "-S", "OUTPUT"]) {
            for (table, builtin, chain) in IPT_JUMPS {
                while ipt_ok(ns, &["-t", table, "-C", builtin, "-j", chain]) {
                    run(
                        ns.command("iptables")
                            .args(["-w", "-t", table, "-D", builtin, "-j", chain]),
                        None,
                    )??;
                }
            }
            // A chain can be deleted only once nothing jumps to it.
            for (table, _, chain) in IPT_JUMPS {
                if ipt_ok(ns, &["-t", table, "-S", chain]) {
                    run(
                        ns.command("iptables")
                            .args(["-w", "-t", table, "-F", chain]),
                        None,
                    )??;
                    run(
                        ns.command("iptables")
                            .args(["-w", "-t", table, "-X", chain]),
                        None,
                    )??;
                }
            }
        }
        while has_ip_rule(ns)? {
            run(ns.command("ip").args(ip_rule_args("del")), None)??;
        }
        if has_local_route(ns)? {
            run(ns.command("ip").args(local_route_args("del")), None)??;
        }
        Ok(())
    }

    /// Reads back what is installed in `ns`.
    pub fn inspect(&self, ns: &NetNs) -> Result<RuleState, RedirectError> {
        let nftables = matches!(
            run(
                ns.command("nft").args(["list", "table", "inet", NFT_TABLE]),
                None
            ),
            Ok(Ok(_))
        );
        let iptables = ipt_ok(ns, &["-t", "nat", "-C", "OUTPUT", "-j", IPT_OUTPUT]);
        let ip_rule = has_ip_rule(ns)?;
        let local_route = has_local_route(ns)?;
        Ok(RuleState {
            nftables,
            iptables,
            ip_rule,
            local_route,
        })
    }

    /// The nftables rule set, as applied: the table is declared, deleted and
    /// re-created in one transaction, so re-applying replaces rather than
    /// appends, and a reader never sees a half-built table.
    pub fn nft_ruleset(&self) -> String {
        let m = format!("meta mark & 0x{MARK_MASK:08x}");
        let probe = self.probe_source;
        format!(
            "table inet {NFT_TABLE} {{}}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
	chain prerouting_mangle {{
		type filter hook prerouting priority mangle; policy accept;
		{m} == 0x{ZTUNNEL_MARK:08x} ct mark set 0x{CONNMARK:08x}
	}}
	chain output_route {{
		type route hook output priority mangle; policy accept;
		ct mark & 0x{MARK_MASK:08x} == 0x{CONNMARK:08x} meta mark set ct mark
	}}
	chain input_filter {{
		type filter hook input priority filter; policy accept;
		tcp dport {{ {OUTBOUND_PORT}, {INBOUND_PORT} }} ct status & dnat == 0 reject with tcp reset
	}}
	chain prerouting_nat {{
		type nat hook prerouting priority dstnat; policy accept;
		meta l4proto != tcp accept
		iifname \"lo\" accept
		{m} == 0x{ZTUNNEL_MARK:08x} accept
		ip saddr {probe} accept
		tcp dport {HBONE_PORT} accept
		meta l4proto tcp redirect to :{INBOUND_PORT}
	}}
	chain output_nat {{
		type nat hook output priority -100; policy accept;
		meta l4proto != tcp accept
		{m} == 0x{ZTUNNEL_MARK:08x} accept
		{m} == 0x{CONNMARK:08x} accept
		oifname \"lo\" accept
		ip daddr 127.0.0.0/8 accept
		ip6 daddr ::1 accept
		ip daddr {probe} accept
		meta l4proto tcp redirect to :{OUTBOUND_PORT}
	}}
}}
"
        )
    }

    /// The iptables rule set for `iptables-restore --noflush`. Declaring a
    /// chain there flushes it, so re-applying replaces weft's rules; the jumps
    /// from the built-in chains are added only when missing (see
    /// [`Redirector::apply`]).
    pub fn iptables_ruleset(&self, missing_jumps: &[(&str, &str, &str)]) -> String {
        let mark = format!("0x{ZTUNNEL_MARK:x}/0x{MARK_MASK:x}");
        let connmark = format!("0x{CONNMARK:x}/0x{MARK_MASK:x}");
        let probe = self.probe_source;
        let jumps = |table: &str| {
            missing_jumps
                .iter()
                .filter(|(t, _, _)| *t == table)
                .map(|(_, builtin, chain)| format!("-A {builtin} -j {chain}\n"))
                .collect::<String>()
        };
        format!(
            "*filter
:{IPT_INPUT} - [0:0]
-A {IPT_INPUT} -p tcp -m multiport --dports {OUTBOUND_PORT},{INBOUND_PORT} -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset
{filter_jumps}COMMIT
*mangle
:{IPT_PRERT} - [0:0]
:{IPT_OUTPUT} - [0:0]
-A {IPT_PRERT} -m mark --mark {mark} -j CONNMARK --set-xmark {connmark}
-A {IPT_OUTPUT} -m connmark --mark {connmark} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
{mangle_jumps}COMMIT
*nat
:{IPT_PRERT} - [0:0]
:{IPT_OUTPUT} - [0:0]
-A {IPT_PRERT} ! -p tcp -j RETURN
-A {IPT_PRERT} -i lo -j RETURN
-A {IPT_PRERT} -m mark --mark {mark} -j RETURN
-A {IPT_PRERT} -s {probe}/32 -j RETURN
-A {IPT_PRERT} -p tcp --dport {HBONE_PORT} -j RETURN
-A {IPT_PRERT} -p tcp -j REDIRECT --to-ports {INBOUND_PORT}
-A {IPT_OUTPUT} ! -p tcp -j RETURN
-A {IPT_OUTPUT} -m mark --mark {mark} -j RETURN
-A {IPT_OUTPUT} -m mark --mark {connmark} -j RETURN
-A {IPT_OUTPUT} -o lo -j RETURN
-A {IPT_OUTPUT} -d 127.0.0.0/8 -j RETURN
-A {IPT_OUTPUT} -d {probe}/32 -j RETURN
-A {IPT_OUTPUT} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}
{nat_jumps}COMMIT
",
            filter_jumps = jumps("filter"),
            mangle_jumps = jumps("mangle"),
            nat_jumps = jumps("nat"),
        )
    }

    /// Whether the current namespace's kernel and tools would take these
    /// rules with `backend`, committing nothing (`nft --check`,
    /// `iptables-restore --test`); `Auto` checks nftables.
    pub fn check(&self, backend: Backend) -> Result<(), RedirectError> {
        match backend {
            Backend::Iptables => run(
                Command::new("iptables-restore").args(["--test", "--noflush"]),
                Some(&self.iptables_ruleset(&IPT_JUMPS)),
            )?
            .map(|_| ()),
            Backend::Nftables | Backend::Auto => check_nft(&self.nft_ruleset()),
        }
    }

    fn apply_iptables(&self, ns: &NetNs) -> Result<(), RedirectError> {
        let missing: Vec<_> = IPT_JUMPS
            .into_iter()
            .filter(|(table, builtin, chain)| {
                !ipt_ok(ns, &["-t", table, "-C", builtin, "-j", chain])
            })
            .collect();
        let rules = self.iptables_ruleset(&missing);
        run(
            ns.command("iptables-restore").args(["-w", "--noflush"]),
            Some(&rules),
        )??;
        Ok(())
    }

    fn resolve(&self, ns: &NetNs) -> Backend {
        match self.backend {
            Backend::Auto if tool_works(ns, "nft", &["list", "tables"]) => Backend::Nftables,
            Backend::Auto => Backend::Iptables,
            other => other,
        }
    }
}

fn ip_rule_args(verb: &str) -> Vec<String> {
    [
        "rule",
        verb,
        "fwmark",
        &format!("0x{CONNMARK:x}/0x{MARK_MASK:x}"),
        "lookup",
        &ROUTE_TABLE.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn has_ip_rule(ns: &NetNs) -> Result<bool, RedirectError> {
    let rules = run(ns.command("ip").args(["rule", "show"]), None)??;
    let needle = format!("fwmark 0x{CONNMARK:x}/0x{MARK_MASK:x} lookup {ROUTE_TABLE}");
    Ok(rules.lines().any(|l| l.contains(&needle)))
}

fn apply_routing(ns: &NetNs) -> Result<(), RedirectError> {
    // The local route and REDIRECT to 127.0.0.1 both need `lo` up, and a
    // chain without the `loopback` plugin leaves it down.
    run(ns.command("ip").args(["link", "set", "lo", "up"]), None)??;
    if !has_ip_rule(ns)? {
        run(ns.command("ip").args(ip_rule_args("add")), None)??;
    }
    // `replace` is idempotent by itself.
    run(ns.command("ip").args(local_route_args("replace")), None)??;
    Ok(())
}

fn local_route_args(verb: &str) -> Vec<String> {
    [
        "route",
        verb,
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &ROUTE_TABLE.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn has_local_route(ns: &NetNs) -> Result<bool, RedirectError> {
    // `show table 100` fails while the table does not exist; `table all`
    // always works.
    let routes = run(
        ns.command("ip").args(["route", "show", "table", "all"]),
        None,
    )??;
    let table = format!("table {ROUTE_TABLE} ");
    Ok(routes
        .lines()
        .any(|l| l.starts_with("local default dev lo ") && l.contains(&table)))
}

fn ipt_ok(ns: &NetNs, args: &[&str]) -> bool {
    let mut cmd = ns.command("iptables");
    cmd.arg("-w").args(args);
    matches!(run(&mut cmd, None), Ok(Ok(_)))
}

fn tool_works(ns: &NetNs, program: &str, args: &[&str]) -> bool {
    matches!(run(ns.command(program).args(args), None), Ok(Ok(_)))
}

/// A tool that is not installed is not an error for removal: what it would
/// have removed cannot exist either.
fn ignore_missing(
    r: Result<Result<String, RedirectError>, RedirectError>,
) -> Result<(), RedirectError> {
    match r {
        Ok(Ok(_)) | Err(RedirectError::Spawn { .. }) => Ok(()),
        Ok(Err(e)) | Err(e) => Err(e),
    }
}

/// Applies an nftables ruleset in the agent's own namespace (one `nft -f`
/// transaction).
pub fn run_nft(ruleset: &str) -> Result<(), RedirectError> {
    run(Command::new("nft").args(["-f", "-"]), Some(ruleset))?.map(|_| ())
}

/// Asks the kernel whether it would take an nftables ruleset, committing
/// nothing (`nft --check`: the transaction is built, validated and aborted,
/// so a missing nat or redirect module shows here).
pub fn check_nft(ruleset: &str) -> Result<(), RedirectError> {
    run(
        Command::new("nft").args(["--check", "-f", "-"]),
        Some(ruleset),
    )?
    .map(|_| ())
}

/// Runs `cmd`, feeding `stdin`. Outer error: it could not be started;
/// inner error: it failed. Split so callers can tell "not installed" apart.
fn run(
    cmd: &mut Command,
    stdin: Option<&str>,
) -> Result<Result<String, RedirectError>, RedirectError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let line = std::iter::once(program.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|source| RedirectError::Spawn { program, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the tool's failure below.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| RedirectError::Spawn {
            program: line.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()))
    } else {
        Ok(Err(RedirectError::Failed {
            command: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_name_the_contract() {
        let r = Redirector::new(Backend::Auto, DEFAULT_PROBE_SOURCE);
        let nft = r.nft_ruleset();
        for needle in [
            "redirect to :15001",
            "redirect to :15006",
            "tcp dport 15008 accept",
            "0x00000539",
            "0x00000111",
            "169.254.7.127",
            "tcp dport { 15001, 15006 } ct status & dnat == 0 reject with tcp reset",
        ] {
            assert!(nft.contains(needle), "{needle} missing from\n{nft}");
        }
        let ipt = r.iptables_ruleset(&[("nat", "OUTPUT", IPT_OUTPUT)]);
        assert!(ipt.contains("-A OUTPUT -j WEFT_OUTPUT\nCOMMIT"));
        assert!(!ipt.contains("-A PREROUTING"));
        assert!(ipt.contains("--to-ports 15001") && ipt.contains("--to-ports 15006"));
        assert!(ipt.contains(
            "--dports 15001,15006 -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset"
        ));
    }
}

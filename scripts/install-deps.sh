#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian machine
# (run as root). Idempotent: only missing packages are installed.
set -euo pipefail

packages=(
  iproute2                     # ip netns, veth, bridges
  iptables                     # redirect rules (iptables mode)
  nftables                     # redirect rules (nftables mode)
  containernetworking-plugins  # the real CNI chain: bridge + host-local
  tcpdump                      # captures proving only mTLS crosses the underlay
  procps                       # ps/pkill for teardown checks
  haproxy                      # the L7 baseline of the waypoint benchmark
  runc                         # the kube-mode kubelet's OCI runtime (pods' containers)
  conntrack                    # kube-proxy clears stale UDP flows with it
  python3-venv                 # kubernetes-validate (PyPI), the manifests' first check
  clang                        # compiles the node agent's BPF program (local-leg bypass)
  libbpf-dev                   # its BPF helper headers
)

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

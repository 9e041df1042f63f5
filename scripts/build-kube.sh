#!/usr/bin/env bash
# Builds the Kubernetes control plane the kube-mode tests and demo run on,
# and fetches the Gateway API CRDs they install:
#   <dir>/weft-kube       etcd, kube-apiserver, kube-controller-manager,
#                         kube-scheduler, kube-proxy, kubectl and the
#                         harness kubelet's streaming endpoints from Go
#                         modules, one multi-call binary (e2e/controlplane)
#   <dir>/gateway-api/    the standard-channel CRDs of GATEWAY_API below
#   <dir>/weft-dns        the cluster DNS: CoreDNS from Go modules
#                         (e2e/clusterdns), built and cached under its own
#                         key (a link to it), so either module changes alone
#
# Built once per machine and cached outside the clone, keyed by a hash of the
# module's go.mod, go.sum and Go files and of this script: a warm machine pays
# a hash, a cold one the build (about 9 minutes on 2 cores; docs/e2e.md).
# Prints <dir>.
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$0")/../e2e/controlplane"

# The Gateway API release whose CRDs are installed: the one the Rust
# gateway-api crate in Cargo.toml generates its types from.
GATEWAY_API=v1.5.1

if ! command -v go >/dev/null 2>&1; then
  echo "build-kube: go not found; install Go 1.26 first" >&2
  exit 1
fi

cache=${WEFT_KUBE_CACHE:-/var/cache/weft/kube}
key=$(cat go.mod go.sum $(find . -name '*.go' | sort) "$script" | sha256sum | cut -c1-16)
dir="$cache/$key"
out="$dir/weft-kube"

if [ ! -x "$out" ]; then
  # The release the version flags report is the one go.mod requires.
  release=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' go.mod)
  [[ $release =~ ^v([0-9]+)\.([0-9]+)\. ]] || { echo "build-kube: no k8s.io/kubernetes release in go.mod" >&2; exit 1; }
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$release -X $pkg.gitMajor=${BASH_REMATCH[1]} -X $pkg.gitMinor=${BASH_REMATCH[2]} -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$release -X k8s.io/client-go/pkg/version.gitMajor=${BASH_REMATCH[1]} -X k8s.io/client-go/pkg/version.gitMinor=${BASH_REMATCH[2]}"
  echo "build-kube: building the control plane ($release) into $out; a cold build takes minutes" >&2
  mkdir -p "$cache/$key"
  start=$SECONDS
  # -mod=readonly: go.sum is the lock; a build never rewrites it.
  CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$out.tmp" .
  mv "$out.tmp" "$out"
  echo "build-kube: built in $((SECONDS - start)) s" >&2
fi
# go vet analyses every dependency for facts: 11 minutes cold, so it runs
# once per key, like the build, and leaves a stamp.
if [ ! -f "$dir/vetted" ]; then
  echo "build-kube: go vet (once per go.sum)" >&2
  test -z "$(gofmt -l .)" || { echo "build-kube: gofmt: $(gofmt -l .)" >&2; exit 1; }
  go vet -mod=readonly ./...
  touch "$dir/vetted"
fi

if [ ! -d "$dir/gateway-api" ]; then
  module=$(go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$module/config/crd/standard" ] || { echo "build-kube: sigs.k8s.io/gateway-api@$GATEWAY_API has no config/crd/standard" >&2; exit 1; }
  rm -rf "$dir/gateway-api.tmp"
  mkdir -p "$dir/gateway-api.tmp"
  # The CRDs only: the module's validating admission policy needs a newer
  # API server feature set than the conformance profile weft targets.
  cp "$module"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$dir/gateway-api.tmp/"
  rm -f "$dir/gateway-api.tmp/"*_vap_*.yaml
  mv "$dir/gateway-api.tmp" "$dir/gateway-api"
fi
# The cluster DNS, under a key of its own: its module changes apart from
# the control plane's.
dns_key=$(cat ../clusterdns/go.mod ../clusterdns/go.sum ../clusterdns/main.go "$script" | sha256sum | cut -c1-16)
dns_dir="$cache/dns-$dns_key"
if [ ! -x "$dns_dir/weft-dns" ]; then
  echo "build-kube: building the cluster DNS (CoreDNS) into $dns_dir" >&2
  mkdir -p "$dns_dir"
  start=$SECONDS
  (cd ../clusterdns && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$dns_dir/weft-dns.tmp" .)
  mv "$dns_dir/weft-dns.tmp" "$dns_dir/weft-dns"
  echo "build-kube: built in $((SECONDS - start)) s" >&2
fi
if [ ! -f "$dns_dir/vetted" ]; then
  echo "build-kube: go vet of the cluster DNS (once per go.sum)" >&2
  (cd ../clusterdns && test -z "$(gofmt -l .)" && go vet -mod=readonly .) || { echo "build-kube: gofmt or go vet failed in e2e/clusterdns" >&2; exit 1; }
  touch "$dns_dir/vetted"
fi
ln -sfn "$dns_dir/weft-dns" "$dir/weft-dns"
echo "$dir"

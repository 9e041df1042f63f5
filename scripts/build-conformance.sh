#!/usr/bin/env bash
# Builds what the Gateway API conformance run needs, from Go modules, into
# /var/cache/weft/conformance-<key>/ and prints that directory:
#   conformance.test  the suite (sigs.k8s.io/gateway-api/conformance at the
#                     version of the CRDs scripts/build-kube.sh installs),
#                     e2e/conformance: its own TestConformance, unmodified;
#   echo-server       Istio's echo server and client (e2e/conformance/echo),
#   echo-client       the `echo-advanced` image its mesh manifests deploy.
#
# Built once per machine and cached outside the clone, keyed by a hash of the
# two modules' go.mod, go.sum and Go files and of this script: a warm machine
# pays a hash, a cold one the build (measured here, 2026-12-05, 2 cores
# shared with a Rust build: about 2 minutes for the suite and 1 for the echo,
# module downloads included).
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$0")/../e2e/conformance"

if ! command -v go >/dev/null 2>&1; then
  echo "build-conformance: go not found; install Go 1.26 first" >&2
  exit 1
fi

cache=${WEFT_CONFORMANCE_CACHE:-/var/cache/weft}
key=$(cat go.mod go.sum ./*.go echo/go.mod echo/go.sum echo/*.go "$script" | sha256sum | cut -c1-16)
dir="$cache/conformance-$key"

# The suite must be the release whose CRDs the cluster installs: its tests
# read fields of exactly that schema.
suite=$(go list -m -mod=readonly -f '{{.Version}}' sigs.k8s.io/gateway-api/conformance)
crds=$(sed -n 's/^GATEWAY_API=\(v[^ ]*\).*/\1/p' ../../scripts/build-kube.sh)
[ "$suite" = "$crds" ] || {
  echo "build-conformance: the suite is $suite but scripts/build-kube.sh installs the $crds CRDs" >&2
  exit 1
}

if [ ! -x "$dir/conformance.test" ] || [ ! -x "$dir/echo-server" ] || [ ! -x "$dir/echo-client" ]; then
  echo "build-conformance: building the Gateway API $suite conformance suite and Istio's echo into $dir; a cold build takes minutes" >&2
  mkdir -p "$dir"
  start=$SECONDS
  # -mod=readonly: go.sum is the lock; a build never rewrites it. Static
  # binaries: the echo runs in an image with no Go toolchain's libc needs.
  CGO_ENABLED=0 go test -mod=readonly -trimpath -c -o "$dir/conformance.test.tmp" .
  (cd echo &&
    CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$dir/echo-server.tmp" istio.io/istio/pkg/test/echo/cmd/server &&
    CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$dir/echo-client.tmp" istio.io/istio/pkg/test/echo/cmd/client)
  for f in conformance.test echo-server echo-client; do mv "$dir/$f.tmp" "$dir/$f"; done
  echo "build-conformance: built in $((SECONDS - start)) s" >&2
fi
if [ ! -f "$dir/vetted" ]; then
  test -z "$(gofmt -l .)" || { echo "build-conformance: gofmt: $(gofmt -l .)" >&2; exit 1; }
  CGO_ENABLED=0 go vet -mod=readonly .
  (cd echo && CGO_ENABLED=0 go vet -mod=readonly .)
  touch "$dir/vetted"
fi
echo "$dir"

#!/usr/bin/env bash
# Builds the Helm CLI the chart's tests run (e2e/helm: upstream Helm v4 from
# Go modules) into /var/cache/weft/helm-<key>/helm and prints that path.
#
# Built once per machine and cached outside the clone, keyed by a hash of the
# module's go.mod, go.sum and main.go and of this script: a warm machine pays
# a hash, a cold one the build (about 5 minutes on 2 cores shared with
# other builds, and as long again for the once-per-key go vet).
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$0")/../e2e/helm"

if ! command -v go >/dev/null 2>&1; then
  echo "build-helm: go not found; install Go 1.26 first" >&2
  exit 1
fi

cache=${WEFT_HELM_CACHE:-/var/cache/weft}
key=$(cat go.mod go.sum main.go "$script" | sha256sum | cut -c1-16)
dir="$cache/helm-$key"
out="$dir/helm"

if [ ! -x "$out" ]; then
  # The version `helm version` reports is the module go.mod requires.
  release=$(go list -m -mod=readonly -f '{{.Version}}' helm.sh/helm/v4)
  [ -n "$release" ] || { echo "build-helm: no helm.sh/helm/v4 in go.mod" >&2; exit 1; }
  echo "build-helm: building Helm $release into $out; a cold build takes minutes" >&2
  mkdir -p "$dir"
  start=$SECONDS
  # -mod=readonly: go.sum is the lock; a build never rewrites it.
  CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$release" \
    -o "$out.tmp" .
  mv "$out.tmp" "$out"
  echo "build-helm: built in $((SECONDS - start)) s" >&2
fi
# go vet analyses every dependency: once per key, like the build.
if [ ! -f "$dir/vetted" ]; then
  echo "build-helm: go vet (once per go.sum)" >&2
  test -z "$(gofmt -l .)" || { echo "build-helm: gofmt: $(gofmt -l .)" >&2; exit 1; }
  go vet -mod=readonly .
  touch "$dir/vetted"
fi
echo "$out"

#!/usr/bin/env bash
# Builds the Prometheus server the kube-mode observability test runs
# (e2e/prometheus: upstream Prometheus 3 from Go modules, its own
# cmd/prometheus as the module's `tool`) into
# /var/cache/weft/prometheus-<key>/prometheus and prints that path.
#
# Built once per machine and cached outside the clone, keyed by a hash of the
# module's go.mod, go.sum and Go files and of this script: a warm machine pays
# a hash, a cold one the build. Measured here (2026-12-04, 2 cores shared
# with another engineer's Rust builds): 36 s to download the modules, 185 s
# for go build, 242 s for the once-per-key go vet; about 7 minutes in all.
# After a change to this script alone, Go's own build cache makes it a link
# and a cached vet: seconds.
#
# Only the Kubernetes service discovery is compiled in (upstream's own
# remove_all_sd / enable_kubernetes_sd build tags): the test discovers pods
# through the API server and nothing else, and the cloud providers' SDKs would
# add minutes to every cold build.
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$0")/../e2e/prometheus"

if ! command -v go >/dev/null 2>&1; then
  echo "build-prometheus: go not found; install Go 1.26 first" >&2
  exit 1
fi

pkg=github.com/prometheus/prometheus/cmd/prometheus
tags=remove_all_sd,enable_kubernetes_sd
shopt -s nullglob
cache=${WEFT_PROMETHEUS_CACHE:-/var/cache/weft}
key=$(cat go.mod go.sum ./*.go "$script" | sha256sum | cut -c1-16)
dir="$cache/prometheus-$key"
out="$dir/prometheus"

if [ ! -x "$out" ]; then
  # Prometheus 3.x.y is published as the Go module version v0.3xx.y; the
  # version `prometheus --version` reports is the one go.mod requires.
  module=$(go list -m -mod=readonly -f '{{.Version}}' github.com/prometheus/prometheus)
  [[ $module =~ ^v0\.([0-9]+)\.([0-9]+)$ ]] ||
    { echo "build-prometheus: unexpected github.com/prometheus/prometheus version '$module' in go.mod" >&2; exit 1; }
  minor=$((10#${BASH_REMATCH[1]}))
  release="$((minor / 100)).$((minor % 100)).${BASH_REMATCH[2]}"
  echo "build-prometheus: building Prometheus $release ($module) into $out; a cold build takes minutes" >&2
  mkdir -p "$dir"
  start=$SECONDS
  # -mod=readonly: go.sum is the lock; a build never rewrites it.
  CGO_ENABLED=0 go build -mod=readonly -trimpath -tags "$tags" \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release -X github.com/prometheus/common/version.Revision=$module -X github.com/prometheus/common/version.Branch=weft-e2e" \
    -o "$out.tmp" "$pkg"
  mv "$out.tmp" "$out"
  echo "build-prometheus: built in $((SECONDS - start)) s" >&2
fi
# go vet analyses every dependency: once per key, like the build.
if [ ! -f "$dir/vetted" ]; then
  echo "build-prometheus: go vet (once per go.sum)" >&2
  test -z "$(gofmt -l .)" || { echo "build-prometheus: gofmt: $(gofmt -l .)" >&2; exit 1; }
  start=$SECONDS
  CGO_ENABLED=0 go vet -mod=readonly -tags "$tags" "$pkg"
  echo "build-prometheus: go vet passed in $((SECONDS - start)) s" >&2
  touch "$dir/vetted"
fi
echo "$out"

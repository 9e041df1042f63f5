#!/usr/bin/env bash
# Builds the OpenTelemetry Collector the tracing tests send spans to
# (e2e/otelcol: the upstream collector core with its OTLP receiver and a
# file exporter of weft's, from Go modules) into
# /var/cache/weft/otelcol-<key>/otelcol and prints that path.
#
# Built once per machine and cached outside the clone, keyed by a hash of the
# module's go.mod, go.sum and main.go and of this script: a warm machine pays
# a hash, a cold one the build (about 2 minutes on 2 cores shared with a Rust
# build, module downloads included, and 2.5 minutes more for the
# once-per-key go vet).
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$0")/../e2e/otelcol"

if ! command -v go >/dev/null 2>&1; then
  echo "build-otelcol: go not found; install Go 1.26 first" >&2
  exit 1
fi

cache=${WEFT_OTELCOL_CACHE:-/var/cache/weft}
key=$(cat go.mod go.sum main.go "$script" | sha256sum | cut -c1-16)
dir="$cache/otelcol-$key"
out="$dir/otelcol"

if [ ! -x "$out" ]; then
  release=$(go list -m -mod=readonly -f '{{.Version}}' go.opentelemetry.io/collector/otelcol)
  [ -n "$release" ] || { echo "build-otelcol: no go.opentelemetry.io/collector/otelcol in go.mod" >&2; exit 1; }
  echo "build-otelcol: building the collector $release into $out; a cold build takes minutes" >&2
  mkdir -p "$dir"
  start=$SECONDS
  # -mod=readonly: go.sum is the lock; a build never rewrites it.
  CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out.tmp.$$" .
  mv "$out.tmp.$$" "$out"
  echo "build-otelcol: built in $((SECONDS - start)) s" >&2
fi
# go vet analyses every dependency: once per key, like the build.
if [ ! -f "$dir/vetted" ]; then
  echo "build-otelcol: go vet (once per go.sum)" >&2
  test -z "$(gofmt -l .)" || { echo "build-otelcol: gofmt: $(gofmt -l .)" >&2; exit 1; }
  go vet -mod=readonly .
  touch "$dir/vetted"
fi
echo "$out"

#!/usr/bin/env bash
# Builds weft-cni as a static executable (glibc linked in: +crt-static)
# and prints its path. weft-cni runs from the node's own CNI bin directory,
# on whatever libc the host has, so it must carry its own.
#
# The explicit --target keeps these flags off host build scripts and out of
# target/<profile>/ (the shared, dynamically linked builds are untouched):
# the result is target/x86_64-unknown-linux-gnu/<profile>/weft-cni.
# Used by `make images` (profile dist) and by cni-plugin/tests/static_binary.rs.
set -euo pipefail
profile=${1:-dist}
target=x86_64-unknown-linux-gnu
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/weft/target}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --profile "$profile" --target "$target" -p weft-cni --bin weft-cni >&2
dir=$profile
[ "$profile" = dev ] && dir=debug
echo "$CARGO_TARGET_DIR/$target/$dir/weft-cni"

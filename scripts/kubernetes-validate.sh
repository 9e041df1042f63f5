#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI) into a virtualenv cached outside the
# clone, /var/cache/weft/kubernetes-validate-<key>, and prints the path of
# its command. The first check of the manifests: every built-in kind of
# deploy/base validated strictly (unknown fields refused) against the API
# schemas of a Kubernetes version, before any cluster is involved.
#
# Keyed by the pinned version and this script: a warm machine pays a hash,
# a cold one a pip install (seconds).
set -euo pipefail
version=1.37.0
script=$(realpath "$0")
cache=${WEFT_VALIDATE_CACHE:-/var/cache/weft}
key=$(cat "$script" | sha256sum | cut -c1-16)
dir="$cache/kubernetes-validate-$key"
out="$dir/bin/kubernetes-validate"

# A venv's scripts name their interpreter by path, so it is made in place;
# the marker says a previous install finished.
if [ ! -f "$dir/complete" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    echo "kubernetes-validate: python3 with venv not found (scripts/install-deps.sh installs python3-venv)" >&2
    exit 1
  fi
  echo "kubernetes-validate: installing kubernetes-validate $version into $dir" >&2
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version" >&2
  touch "$dir/complete"
fi
echo "$out"

# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
# Build outputs live outside the clone, so a fresh clone (CI's) starts warm.
# One directory for every lock file: cargo's fingerprints already rebuild
# exactly what a changed Cargo.lock or source touches, where a directory per
# lock hash would pay a cold build (tens of minutes on 2 cores) per bump.
export CARGO_TARGET_DIR ?= /var/cache/weft/target
# No incremental caches in the shared directory: they only help a crate
# edited again and again, and grew to 28 GB there in a day of builds.
export CARGO_INCREMENTAL ?= 0

.PHONY: demo test deps kube helm prometheus otelcol conformance-suite conformance kubernetes-validate manifests build images lint unit clean

deps:
	@./scripts/install-deps.sh

# The real Kubernetes control plane of the kube-mode tests, from Go modules:
# built once per machine into /var/cache/weft/kube (minutes cold, a hash
# warm); see docs/e2e.md.
kube:
	@./scripts/build-kube.sh >/dev/null

# Helm from Go modules, for the chart's tests and `make manifests`: built
# once per machine into /var/cache/weft/helm-<key> (scripts/build-helm.sh).
helm:
	@./scripts/build-helm.sh >/dev/null

# Prometheus from Go modules, for kube_prometheus.rs: built once per machine
# into /var/cache/weft/prometheus-<key> (scripts/build-prometheus.sh).
prometheus:
	@./scripts/build-prometheus.sh >/dev/null

# The OpenTelemetry Collector from Go modules, for waypoint/tests/tracing.rs:
# built once per machine into /var/cache/weft/otelcol-<key>
# (scripts/build-otelcol.sh).
otelcol:
	@./scripts/build-otelcol.sh >/dev/null

# The Gateway API conformance suite and the echo its mesh tests deploy (Istio's
# echo server and client), from Go modules: built once per machine into
# /var/cache/weft/conformance-<key> (scripts/build-conformance.sh).
conformance-suite:
	@./scripts/build-conformance.sh >/dev/null

## conformance: run the Gateway API conformance suite's mesh profiles against
## weft on the real control plane and keep its report in docs/conformance/
## (docs/conformance.md). `make test` runs the same test, without keeping it.
conformance: deps kube conformance-suite
	$(CARGO) build --workspace --bins
	WEFT_E2E_NO_BUILD=1 WEFT_CONFORMANCE_REPORT=$(CURDIR)/docs/conformance/report.yaml \
	  $(CARGO) test -p weft-e2e --test kube_conformance -- --nocapture

# kubernetes-validate (PyPI) for the manifests' strict schema check, in a
# virtualenv cached in /var/cache/weft (scripts/kubernetes-validate.sh).
kubernetes-validate:
	@./scripts/kubernetes-validate.sh >/dev/null

## manifests: render deploy/base/weft.yaml from the Helm chart, its one source
manifests:
	@helm=$$(./scripts/build-helm.sh) && $$helm template weft deploy/charts/weft --include-crds \
	  > deploy/base/weft.yaml.tmp && \
	  mv deploy/base/weft.yaml.tmp deploy/base/weft.yaml

build: deps
	$(CARGO) build --release --workspace --bins --examples

## images: every component's image as an OCI archive, without a container
## engine (docs/images.md): $(IMAGES_DIR)/<name>.oci.tar and images.json
## (references, digests, sizes). The `dist` profile; weft-cni static.
IMAGES_DIR ?= $(CARGO_TARGET_DIR)/images
images:
	$(CARGO) build --profile dist -p weft-controller -p weft-ztunnel -p weft-waypoint \
	  -p weft-node-agent -p weftctl --bins
	cni=$$(./scripts/build-cni-static.sh dist) && \
	  $(CARGO) run -q --release -p weft-image -- build \
	    --bin-dir $(CARGO_TARGET_DIR)/dist --cni-plugin $$cni --out $(IMAGES_DIR) --strip-debug

## demo: set everything up and run the demo: weft installed with kubectl on
## a real control plane (built from Go modules, `kube`) whose two nodes are
## network namespaces; real traffic, the tunnels as weftctl shows them.
## DEMO_ARGS=--netns runs the first wave's netns demo instead (add --keep to
## leave its cluster up; `weft-e2e down` removes it). The demo uses the
## binaries just built (a per-package rebuild would resolve features anew).
demo: deps kube
	$(CARGO) build --release --workspace --bins
	WEFT_E2E_NO_BUILD=1 $(CARGO) run --release -q -p weft-e2e --bin weft-e2e -- demo $(DEMO_ARGS)

## test: every test of the workspace, plus format and lint checks
test: deps kube helm prometheus otelcol conformance-suite kubernetes-validate lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Doctests are left out: every example that matters is a test, and rustdoc
# trips over several builds of one crate in a shared target directory.
# The e2e tests use the binaries this build just made (WEFT_E2E_NO_BUILD),
# rather than running cargo again from inside a test.
unit:
	WEFT_E2E_NO_BUILD=1 $(CARGO) test --workspace --all-targets --no-fail-fast

clean:
	$(CARGO) clean

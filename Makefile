# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: demo test deps build lint unit clean

deps:
	@./scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace --bins --examples

## demo: set everything up and run the demo
demo: deps
	$(CARGO) run --release -p weft-hbone --example loopback_demo

## test: every test of the workspace, plus format and lint checks
test: deps lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Doctests are left out: every example that matters is a test, and rustdoc
# trips over several builds of one crate in a shared target directory.
unit:
	$(CARGO) test --workspace --all-targets --no-fail-fast

clean:
	$(CARGO) clean

# Herald — common tasks. `make help` lists them.
CARGO ?= cargo
JOBS ?= 2
HERALD_BIN := target/debug/herald

.PHONY: help build release run test test-rust test-conformance test-python check-deploy lint fmt cluster bench clean

help:
	@echo "make run            build and start one node (in-process bus, demo app)"
	@echo "make test           every test: Rust unit/e2e/cluster, pusher-js conformance, deploy checks"
	@echo "make lint           rustfmt --check and clippy -D warnings"
	@echo "make cluster        a local Redis and three nodes"
	@echo "make bench          the standard benchmark set (loadtest/)"
	@echo "make check-deploy   render and validate the Helm chart and manifests"

build:
	$(CARGO) build -j$(JOBS) --bin herald

release:
	$(CARGO) build -j$(JOBS) --release --bin herald

run: build
	$(HERALD_BIN) $(if $(CONFIG),--config $(CONFIG),)

test: test-rust test-conformance test-python check-deploy

test-rust: build
	$(CARGO) test -j$(JOBS) --workspace

test-conformance: build
	HERALD_BIN=$(CURDIR)/$(HERALD_BIN) tests/conformance/run.sh

test-python: build
	HERALD_BIN=$(CURDIR)/$(HERALD_BIN) tests/python/run.sh

check-deploy: build
	deploy/check/run.sh --herald-bin $(HERALD_BIN)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy -j$(JOBS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

cluster: build
	deploy/local/cluster.sh

bench: release
	loadtest/bench.sh

clean:
	$(CARGO) clean

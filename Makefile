# Herald — common tasks. `make help` lists them.
CARGO ?= cargo
JOBS ?= 2
HERALD_BIN := target/debug/herald

.PHONY: help deps build release run test test-rust test-conformance test-js test-console test-python check-deploy lint fmt cluster bench floor fuzz clean

help:
	@echo "make run            build and start one node (in-process bus, demo app)"
	@echo "make test           every test: Rust unit/e2e/cluster, pusher-js conformance, the JS plugin, the console in Chromium, deploy checks"
	@echo "make lint           rustfmt --check and clippy -D warnings"
	@echo "make cluster        a local Redis and three nodes"
	@echo "make bench          the standard benchmark set (loadtest/)"
	@echo "make floor          this machine's fan-out floor: FLOOR_N loopback writes per wave (loadtest/floor)"
	@echo "make check-deploy   render and validate the Helm chart and manifests"
	@echo "make fuzz           run every fuzz target for FUZZ_SECONDS (nightly, cargo-fuzz)"

build:
	$(CARGO) build -j$(JOBS) --bin herald

release:
	$(CARGO) build -j$(JOBS) --release --bin herald

run: build
	$(HERALD_BIN) $(if $(CONFIG),--config $(CONFIG),)

test: deps test-rust test-conformance test-js test-console test-python check-deploy

# What the tests need beyond the Rust toolchain (redis-server, Node, Python venv, kubectl):
# installed when missing (apt, as root), else named.
deps:
	.ci/deps

test-rust: build
	$(CARGO) test -j$(JOBS) --workspace

test-conformance: build deps
	HERALD_BIN=$(CURDIR)/$(HERALD_BIN) tests/conformance/run.sh

# The herald-recovery plugin (clients/js) with real pusher-js and laravel-echo against the binary.
test-js: build deps
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error && HERALD_BIN=$(CURDIR)/$(HERALD_BIN) npm test

# The debug console page in a headless Chromium (playwright-core, /usr/bin/chromium) against the binary.
test-console: build deps
	cd tests/console && npm ci --no-audit --no-fund --loglevel=error && HERALD_BIN=$(CURDIR)/$(HERALD_BIN) npm test

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

# The floor under a fan-out on this machine: FLOOR_N loopback connections, one message each per
# wave, written by each of the plainest senders (loadtest/floor, docs/benchmarks.md).
FLOOR_N ?= 1000
floor:
	CARGO_TARGET_DIR=$(CURDIR)/target/floor $(CARGO) build -j$(JOBS) --release --manifest-path loadtest/floor/Cargo.toml
	for mode in write write2 uring tasks direct; do target/floor/release/loopback-floor $(FLOOR_N) $$mode; done

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := client_frame frame_reader api_request presence_data bus_envelope

# Coverage-guided fuzzing on nightly; the corpus under fuzz/corpus grows and is replayed by
# `make test` (crates/herald-node/tests/fuzz_corpus.rs).
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run -O $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=65536 -print_final_stats=1 || exit 1; \
	done

clean:
	$(CARGO) clean

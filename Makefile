# marketlane: the two commands of the README.
#   make demo   the whole lane end to end against the simulator (stack up, release build, run)
#   make test   fmt, clippy, unit tests, then integration tests against the real local stack
#
# A shared cargo target dir outside the clone speeds up repeated runs on one machine; a fresh
# machine builds from nothing.
CARGO_TARGET_DIR ?= $(shell mkdir -p /var/cache/marketlane/target 2>/dev/null && echo /var/cache/marketlane/target || echo $(CURDIR)/target)
export CARGO_TARGET_DIR
DEMO_SECONDS ?= 60
export DEMO_SECONDS
CARGO ?= cargo

.PHONY: fuzz demo test chdb-check deps build build-release stack-up stack-down fmt-check clippy unit-test integration-test ops-deps ops-check bench bench-quick bench-build

demo: deps stack-up build-release
	$(CARGO_TARGET_DIR)/release/marketlane demo --seconds $(DEMO_SECONDS)

test: deps fmt-check clippy unit-test chdb-check stack-up ops-check integration-test

# Chromium and chromedriver: the built-in IB login (`marketlane login`) and its tests.
deps:
	@scripts/build-deps
	@scripts/chromium

# Both binaries: the daemon and the simulator (`marketlane-sim`), which the demo and the
# integration tests start from beside `marketlane`.
build:
	$(CARGO) build --bin marketlane --bin marketlane-sim

build-release:
	$(CARGO) build --release --bin marketlane --bin marketlane-sim

stack-up:
	scripts/stack up

stack-down:
	scripts/stack down

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test:
	$(CARGO) test --workspace --exclude marketlane-tests

# --nocapture: each test prints what it measured (recovery times, reconciliations) into the log.
# --no-fail-fast: one failing test file does not hide the results of the others.
integration-test: build
	MARKETLANE_BIN=$(CARGO_TARGET_DIR)/debug/marketlane $(CARGO) test -p marketlane-tests --no-fail-fast -- --test-threads=1 --nocapture

# The DDL for current ClickHouse (production), checked in-process with chdb (PyPI chdb-core,
# ClickHouse 26.x): every table and view, sample rows, snapshot queries, dedup tokens.
chdb-check: build
	@python3 -c 'import chdb' 2>/dev/null || python3 -m pip install -q chdb-core
	$(CARGO_TARGET_DIR)/debug/marketlane schema ddl --server-version 26.1.1 --database marketlane > $(CARGO_TARGET_DIR)/ddl-26.1.1.sql
	python3 scripts/chdb-check.py $(CARGO_TARGET_DIR)/ddl-26.1.1.sql schemas

# Operations checks: promtool (for the metric-spec test's live scrape) and the Kubernetes
# manifests (generated files current, overlays render, schemas validate: scripts/validate-k8s).
ops-deps:
	@command -v promtool >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q prometheus; }
	@command -v kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q kubernetes-validate==1.37.0

ops-check: ops-deps
	scripts/validate-k8s

# Load tests and benchmarks (load-tests/README.md): figures printed and written to
# load-tests/results/<run>/report.md with PNG plots, never asserted. Under the stack lock so
# that no service restart of another test lands in the middle. BENCH_ARGS adds driver flags.
BENCH_ARGS ?=
bench-build: build-release
	$(CARGO) build --release -p marketlane-load-tests
	@python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib

bench: deps stack-up bench-build
	flock /tmp/marketlane-stack.lock $(CARGO_TARGET_DIR)/release/marketlane-bench $(BENCH_ARGS)

bench-quick: deps stack-up bench-build
	flock /tmp/marketlane-stack.lock $(CARGO_TARGET_DIR)/release/marketlane-bench --quick $(BENCH_ARGS)

# Fuzzing on stable Rust (actors/src/fuzz.rs): websocket frames, control requests, cluster
# heartbeats, the econ feed and schema files under a seeded mutator, FUZZ_SECS per target in a
# release build (millions of inputs each); `make test` runs the same targets for 2 s each.
FUZZ_SECS ?= 120
fuzz:
	MARKETLANE_FUZZ_SECS=$(FUZZ_SECS) $(CARGO) test --release -p marketlane-actors --lib fuzz:: -- --test-threads=1 --nocapture

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

.PHONY: demo test deps build build-release stack-up stack-down fmt-check clippy unit-test integration-test

demo: deps stack-up build-release
	$(CARGO_TARGET_DIR)/release/marketlane demo --seconds $(DEMO_SECONDS)

test: deps fmt-check clippy unit-test stack-up integration-test

deps:
	@scripts/build-deps

build:
	$(CARGO) build --bin marketlane

build-release:
	$(CARGO) build --release --bin marketlane

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

integration-test: build
	MARKETLANE_BIN=$(CARGO_TARGET_DIR)/debug/marketlane $(CARGO) test -p marketlane-tests -- --test-threads=1

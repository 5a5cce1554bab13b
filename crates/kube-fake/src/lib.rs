//! A fake Kubernetes API server for tests and benchmarks (dev-only; never shipped).

"""Running pruned layers on sparse kernels where that is faster: kernels, the per-layer chooser, SparseLinear,
latency measurement and `sparse-bench latency` (docs/runtime.md)."""

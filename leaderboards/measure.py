"""Latency and memory of one loaded model: the measurement lives in harness_ext/runtime/latency.py (shared with
`sparse-bench latency`); this module keeps the leaderboard's import path."""

from __future__ import annotations

from ..harness_ext.runtime.latency import (
    WARM_UP_TOKENS,
    device_info,
    measure_latency,
    measure_runtime,
    peak_memory,
    weights_bytes,
)

__all__ = ["WARM_UP_TOKENS", "measure_latency", "measure_runtime", "peak_memory", "weights_bytes", "device_info"]

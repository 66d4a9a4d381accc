"""Sparsity analysis: the fraction of weights near zero, overall, per block and per module type, with plots.

    from sparse_bench.harness_ext.analysis import analyze
    report = analyze("smollm2-135m", thresholds=(0.01, 0.1))
    report["overall"]["below"]["0.01"]["fraction"]

See docs/analysis.md for the JSON schema and the command `sparse-bench analyze`.
"""

from .magnitude_counts import DEFAULT_THRESHOLDS, analyze, parse_thresholds

__all__ = ["DEFAULT_THRESHOLDS", "analyze", "parse_thresholds"]

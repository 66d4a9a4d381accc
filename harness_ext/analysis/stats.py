"""Streaming magnitude statistics: counts below thresholds, exact zeros and a fixed-bin |w| histogram.

`MagnitudeStats.of_chunk(values, thresholds)` measures one chunk of weights (any float dtype, any device; the
arithmetic runs in float32 on the CPU) and `add` merges chunks, tensors and groups. Nothing keeps
weights: a whole model reduces to a few integers per group plus one histogram of HISTOGRAM_BINS counts.

Semantics, in the units of the weights:
- `below[i]` counts |w| < thresholds[i] (strict; exact zeros included; the threshold rounded to float32).
- `zeros` counts w == 0 (+0 and -0); `nonfinite` counts NaN and +-inf, which are in no other count but `numel`.
- The histogram has fixed edges 10**(LOG10_MIN + i / BINS_PER_DECADE) for i = 0 .. HISTOGRAM_BINS, plus an
  underflow bin (0 < |w| < 10**LOG10_MIN) first and an overflow bin (|w| >= 10**LOG10_MAX, finite) last.
  Exact zeros are not in it (log |w| is undefined there): they are `zeros`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

LOG10_MIN = -10
LOG10_MAX = 3
BINS_PER_DECADE = 100  # bins 2.3 % wide in |w|: fine enough to re-bin onto a linear axis
HISTOGRAM_BINS = (LOG10_MAX - LOG10_MIN) * BINS_PER_DECADE


def histogram_edges() -> np.ndarray:
    """The HISTOGRAM_BINS + 1 bin edges in |w| (log-spaced), shared by every analysis."""
    return 10.0 ** (LOG10_MIN + np.arange(HISTOGRAM_BINS + 1) / BINS_PER_DECADE)


@dataclass
class MagnitudeStats:
    """Counts over a set of weights, for fixed `thresholds`. Integers are exact; `abs_sum` is float64."""

    thresholds: tuple[float, ...]
    numel: int = 0
    zeros: int = 0
    nonfinite: int = 0
    below: list[int] = field(default_factory=list)
    abs_sum: float = 0.0
    abs_max: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS + 2, dtype=np.int64))

    def __post_init__(self) -> None:
        self.thresholds = tuple(float(threshold) for threshold in self.thresholds)
        if not self.below:
            self.below = [0] * len(self.thresholds)

    @classmethod
    def of_chunk(cls, values: torch.Tensor, thresholds: tuple[float, ...]) -> "MagnitudeStats":
        """Measure one chunk of weights (any shape, float dtype and device): converted to float32 on the CPU
        and counted with numpy (several times faster than torch's reductions over booleans on CPU)."""
        flat = values.detach().reshape(-1).to(device="cpu", dtype=torch.float32).numpy()
        magnitudes = np.abs(flat)
        numel = magnitudes.size
        stats = cls(thresholds, numel=numel)
        if not numel:
            return stats
        largest = magnitudes.max()  # NaN if any is NaN
        if not np.isfinite(largest):
            magnitudes = magnitudes[np.isfinite(magnitudes)]
            stats.nonfinite = numel - magnitudes.size
            largest = magnitudes.max() if magnitudes.size else np.float32(0)
        stats.zeros = int(np.count_nonzero(magnitudes == 0))
        stats.below = [int(np.count_nonzero(magnitudes < np.float32(threshold))) for threshold in thresholds]
        stats.abs_sum = float(magnitudes.sum(dtype=np.float64))
        stats.abs_max = float(largest)
        stats.histogram = _log_histogram(magnitudes, stats.zeros)
        return stats

    def add(self, other: "MagnitudeStats") -> "MagnitudeStats":
        """Accumulate `other` (same thresholds) into self; returns self."""
        if other.thresholds != self.thresholds:
            raise ValueError(f"cannot merge statistics for thresholds {other.thresholds} into {self.thresholds}")
        self.numel += other.numel
        self.zeros += other.zeros
        self.nonfinite += other.nonfinite
        self.below = [mine + theirs for mine, theirs in zip(self.below, other.below)]
        self.abs_sum += other.abs_sum
        self.abs_max = max(self.abs_max, other.abs_max)
        self.histogram = self.histogram + other.histogram
        return self

    @property
    def nonzero(self) -> int:
        """Weights that are not exactly zero (NaN and inf included: they are stored values)."""
        return self.numel - self.zeros

    def fraction(self, count: int) -> float:
        return count / self.numel if self.numel else 0.0

    def to_dict(self, with_histogram: bool = False) -> dict:
        """JSON-ready summary; keys are stable. Threshold keys are spelled with `threshold_key`."""
        summary = {
            "numel": self.numel,
            "nonzero": self.nonzero,
            "zeros": self.zeros,
            "zero_fraction": self.fraction(self.zeros),
            "below": {threshold_key(threshold): {"count": count, "fraction": self.fraction(count)}
                      for threshold, count in zip(self.thresholds, self.below)},
            "mean_abs": _significant(self.abs_sum / max(1, self.numel - self.nonfinite)),
            "max_abs": self.abs_max,
            "nonfinite": self.nonfinite,
        }
        if with_histogram:
            summary["histogram"] = _histogram_dict(self.histogram)
        return summary


def threshold_key(threshold: float) -> str:
    """A threshold as a JSON key: 0.01 -> '0.01', 1e-05 -> '1e-05' (Python's shortest round-trip repr)."""
    return repr(float(threshold))


def histogram_counts(histogram: dict) -> np.ndarray:
    """All HISTOGRAM_BINS counts (float64) of a histogram as stored in an analysis (`first_bin` + run)."""
    counts = np.zeros(HISTOGRAM_BINS, dtype=np.float64)
    counts[histogram["first_bin"]:histogram["first_bin"] + len(histogram["counts"])] = histogram["counts"]
    return counts


def _histogram_dict(histogram: np.ndarray) -> dict:
    """JSON form: underflow, overflow and the run of bins from the first to the last non-empty one."""
    inner = histogram[1:-1]
    occupied = np.flatnonzero(inner)
    first, stop = (int(occupied[0]), int(occupied[-1]) + 1) if occupied.size else (0, 0)
    return {"underflow": int(histogram[0]), "overflow": int(histogram[-1]), "first_bin": first,
            "counts": inner[first:stop].tolist()}


def histogram_spec() -> dict:
    """How to read every histogram in an analysis: `counts[j]` covers bin i = first_bin + j, that is
    |w| in [10**(log10_min + i / bins_per_decade), 10**(log10_min + (i + 1) / bins_per_decade))."""
    return {"scale": "log10(|w|)", "log10_min": LOG10_MIN, "log10_max": LOG10_MAX,
            "bins_per_decade": BINS_PER_DECADE, "bins": HISTOGRAM_BINS,
            "excludes": "exact zeros (see zeros) and NaN/inf (see nonfinite)"}


def _significant(value: float, digits: int = 9) -> float:
    """`value` to `digits` significant digits: float sums differ in the last bits with summation order."""
    return float(f"{value:.{digits}g}")


def _log_histogram(magnitudes: np.ndarray, zeros: int) -> np.ndarray:
    """Counts per fixed log10 bin (+ underflow/overflow) of finite float32 magnitudes, exact zeros removed."""
    with np.errstate(divide="ignore"):  # log10(0) = -inf lands in the underflow slot, then is taken out
        position = np.log10(magnitudes)
    position -= LOG10_MIN
    position *= BINS_PER_DECADE
    np.floor(position, out=position)
    np.clip(position, -1, HISTOGRAM_BINS, out=position)
    counts = np.bincount(position.astype(np.int32) + 1, minlength=HISTOGRAM_BINS + 2).astype(np.int64)
    counts[0] -= zeros
    return counts

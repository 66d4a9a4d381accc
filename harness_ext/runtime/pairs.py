"""Dense vs runtime timed in interleaved pairs, so that machine drift hits both sides alike.

One call of `run()` with dense kernels and one with the runtime's kernels, repeated `pairs` times after one
warm-up call of each, the order swapped every pair (d r, r d, d r, ...: the second call of a pair measured a
few per cent slower on this CPU, so a fixed order biased the ratio). A pair's ratio is dense seconds / runtime seconds (> 1: the runtime is
faster); the speedup reported is the median of the per-pair ratios, and each side's time is the median of its
own calls. A quiet CPU still drifts by +-20 % between back-to-back forwards, so two separate measurement blocks
(all dense, then all runtime) cannot resolve a few per cent; adjacent pairs can.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .timing import call_seconds


@dataclass(frozen=True)
class PairTimes:
    """Seconds of each dense call and each runtime call, in pair order (same length)."""

    dense: list[float]
    runtime: list[float]

    @property
    def ratio(self) -> float:
        """Median over the pairs of dense seconds / runtime seconds."""
        return statistics.median(d / r for d, r in zip(self.dense, self.runtime))

    def to_dict(self) -> dict[str, Any]:
        return {"dense_ms": round(1000.0 * statistics.median(self.dense), 4),
                "runtime_ms": round(1000.0 * statistics.median(self.runtime), 4),
                "ratio": round(self.ratio, 4), "pairs": len(self.dense)}


def time_pairs(run: Callable[[], Any], use_dense: Callable[[bool], None], pairs: int,
               device: torch.device) -> PairTimes:
    """Time `run()` alternately with `use_dense(True)` and `use_dense(False)` in effect (see the module
    docstring); leaves the runtime's kernels in place."""
    for dense in (True, False):
        use_dense(dense)
        run()
    times: dict[bool, list[float]] = {True: [], False: []}
    for index in range(pairs):
        for dense in ((True, False) if index % 2 == 0 else (False, True)):
            use_dense(dense)
            times[dense].append(call_seconds(run, device))
    return PairTimes(times[True], times[False])


__all__ = ["PairTimes", "time_pairs"]

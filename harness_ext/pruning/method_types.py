"""The contract between the engine and every pruning method: what a method is given and what it returns.

A method's function: `prune(weight, statistics, target, options) -> PruneResult`
- `weight`: (out, in) float64 working copy; several layers that read one input arrive stacked by rows;
- `statistics`: the layer input's `InputStatistics` (None for methods that need none);
- `target`: row segments [(rows, sparsity)] (one per stacked layer) and the N:M structure or None;
- returns a keep-mask (out, in) and, for methods that update weights, the new weight.
Method files import these types from here; the registry (methods.py) imports the method files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch

from .values import NMStructure

NONE, NORMS, HESSIAN = "none", "input norms", "Hessian"
STATISTIC_ORDER = (NONE, NORMS, HESSIAN)  # a Hessian also gives the norms (its diagonal)


class Target(NamedTuple):
    """What one (possibly stacked) weight must lose: row segments [(rows, sparsity)] and the N:M structure."""

    segments: tuple[tuple[int, float], ...]
    structure: NMStructure | None


class PruneResult(NamedTuple):
    """A keep-mask (out, in), True = kept; `weight` the updated weight (None: the method only masks); notes
    are reported to the user (e.g. dampening raised)."""

    keep: torch.Tensor
    weight: torch.Tensor | None = None
    notes: tuple[str, ...] = ()  # about this group of layers; the engine prefixes their names


class Options:
    """Base of every options dataclass: typed fields with defaults; `check()` raises UserError on a bad value.

    Field names are global across methods (model_args and CLI flags use them as is), so each method prefixes
    its own (`ria_exponent`, `admm_iterations`); SparseGPT keeps its historical `block_size` and `dampening`.
    """

    def check(self, target_structure: Any) -> None:
        """Raise UserError for a value outside its range or a combination that does not apply."""

    def note(self, target_structure: Any) -> str | None:
        """What the user must know about the result with these options (reported once per step), or None."""
        return None


@dataclass(frozen=True)
class NoOptions(Options):
    pass


def segments_of(target: Target) -> Sequence[tuple[int, int, float]]:
    """(first row, end row, sparsity) of each stacked layer."""
    bounds, start = [], 0
    for rows, sparsity in target.segments:
        bounds.append((start, start + rows, sparsity))
        start += rows
    return bounds


__all__ = ["NONE", "NORMS", "HESSIAN", "STATISTIC_ORDER", "Target", "PruneResult", "Options", "NoOptions",
           "segments_of"]

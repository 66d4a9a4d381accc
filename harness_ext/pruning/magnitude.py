"""Magnitude pruning: score = |W|. Per layer (one threshold per layer) or global (one threshold over all layers).

Global scope follows `torch.nn.utils.prune.global_unstructured` with L1 importance: the `round(s * total)`
smallest-magnitude weights of all targeted layers together are pruned, so layers with small weights lose
more. The threshold is found exactly from two histograms of the float32 bit patterns (|w| >= 0 orders like
its bits), which needs no concatenated copy of the model's weights.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .masks import prune_count, scores_mask, target_mask
from .method_types import NoOptions, PruneResult, Target
from .values import NMStructure

_HIGH_SHIFT = 15          # float32 bits of |w| fit in 31 bits: 16 high bits, then 15 low bits
_LOW_BINS = 1 << _HIGH_SHIFT


def magnitude_mask(weight: torch.Tensor, sparsity: float, structure: NMStructure | None = None) -> torch.Tensor:
    """Keep-mask of an (out, in) weight: lowest |W| of the layer (or of each N:M group) pruned."""
    return scores_mask(weight.abs().float(), sparsity, structure, per_row=False)


def magnitude_prune(weight: torch.Tensor, statistics: None, target: Target, options: NoOptions) -> PruneResult:
    """Registry function: the lowest |W| of each layer (or N:M group) pruned."""
    return PruneResult(target_mask(weight, target, torch.abs, per_row=False))


def _magnitude_bits(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs().reshape(-1).view(torch.int32)


def _global_threshold(weights: Sequence[torch.Tensor], count: int) -> tuple[int, int]:
    """(threshold bits T, ties): prune all |w| with bits < T and the first `ties` weights with bits == T."""
    high = None
    for weight in weights:
        counts = torch.bincount(_magnitude_bits(weight) >> _HIGH_SHIFT, minlength=1 << 16).cpu()
        high = counts if high is None else high + counts
    high_cumulative = high.cumsum(0)
    high_bin = int(torch.searchsorted(high_cumulative, count))
    below = int(high_cumulative[high_bin - 1]) if high_bin else 0
    low = torch.zeros(_LOW_BINS, dtype=torch.int64)
    for weight in weights:
        bits = _magnitude_bits(weight)
        in_bin = bits[(bits >> _HIGH_SHIFT) == high_bin] & (_LOW_BINS - 1)
        low += torch.bincount(in_bin, minlength=_LOW_BINS).cpu()
    low_cumulative = below + low.cumsum(0)
    low_bin = int(torch.searchsorted(low_cumulative, count))
    below = int(low_cumulative[low_bin - 1]) if low_bin else below
    return (high_bin << _HIGH_SHIFT) | low_bin, count - below


@torch.no_grad()
def prune_global_magnitude(weights: Sequence[torch.Tensor], sparsity: float) -> None:
    """Zero, in place, the `round(sparsity * total)` smallest-magnitude weights across all `weights`.

    Ties at the threshold are pruned in layer order, then flat index order (deterministic).
    """
    count = prune_count(sum(weight.numel() for weight in weights), sparsity)
    if count == 0:
        return
    threshold, ties = _global_threshold(weights, count)
    for weight in weights:
        bits = _magnitude_bits(weight).reshape(weight.shape)
        prune = bits < threshold
        if ties > 0:
            tied = (bits == threshold).reshape(-1)
            tied_positions = tied.nonzero().reshape(-1)[:ties]
            ties -= tied_positions.numel()
            prune.reshape(-1)[tied_positions] = True
        weight.masked_fill_(prune, 0)


__all__ = ["magnitude_mask", "magnitude_prune", "prune_global_magnitude"]

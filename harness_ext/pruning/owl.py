"""OWL (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity"): non-uniform sparsity across blocks.

A block's outlier ratio D is the fraction of its Wanda scores |W_ij| * ||X_j|| above `m` times their mean
(over all its target layers together). Ratios are scaled linearly to [0, 2 * lmbda], centred on
1 - sparsity, and a block gets sparsity 1 - (its scaled ratio): more outliers, fewer weights pruned. The
block sparsities average to the requested sparsity (blocks are the same size in these models).
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..errors import UserError
from .plan import OwlConfig


def outlier_ratio(block_scores: Iterable[torch.Tensor], m: float) -> float:
    """Fraction of all scores of one block that exceed `m` x the block's mean score."""
    scores = list(block_scores)
    total = sum(float(score.sum(dtype=torch.float64)) for score in scores)
    count = sum(score.numel() for score in scores)
    threshold = m * total / count
    return sum(int((score > threshold).sum()) for score in scores) / count


def owl_sparsities(ratios: list[float], sparsity: float, config: OwlConfig) -> list[float]:
    """Per-block sparsities from outlier ratios (OWL's formula), each in [0, 1)."""
    low, high = min(ratios), max(ratios)
    spread = [0.0 if high == low else (ratio - low) / (high - low) * 2 * config.lmbda for ratio in ratios]
    mean = sum(spread) / len(spread)
    result = [sparsity - (value - mean) for value in spread]
    if min(result) < 0 or max(result) >= 1:
        raise UserError(f"OWL with lmbda={config.lmbda} moves sparsity {sparsity:g} out of [0, 1) "
                        f"(range {min(result):.3f}..{max(result):.3f}); use a smaller lmbda")
    return result


__all__ = ["outlier_ratio", "owl_sparsities"]

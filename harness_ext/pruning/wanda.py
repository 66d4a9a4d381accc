"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

Score of weight W_ij = |W_ij| * ||X_j||_2, the input feature's norm over all calibration tokens; the lowest
scores are pruned within each output row (the paper's comparison group), or within each N:M group.
"""

from __future__ import annotations

import torch

from .calibration import InputStatistics
from .masks import scores_mask, target_mask
from .method_types import NoOptions, PruneResult, Target
from .values import NMStructure


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2 for an (out, in) weight and (in,) input norms, in fp32."""
    return weight.abs().float() * column_norms.float().reshape(1, -1)


def wanda_mask(weight: torch.Tensor, column_norms: torch.Tensor, sparsity: float,
               structure: NMStructure | None = None) -> torch.Tensor:
    """Keep-mask of an (out, in) weight: per row (or per N:M group) the lowest Wanda scores pruned."""
    return scores_mask(wanda_scores(weight, column_norms), sparsity, structure, per_row=True)


def wanda_prune(weight: torch.Tensor, statistics: InputStatistics, target: Target, options: NoOptions) -> PruneResult:
    """Registry function: per output row the lowest |W_ij| * ||X_j|| pruned (or per N:M group)."""
    norms = statistics.column_norms().to(weight.dtype)
    return PruneResult(target_mask(weight, target, lambda rows: wanda_scores(rows, norms), per_row=True))


__all__ = ["wanda_scores", "wanda_mask", "wanda_prune"]

"""From importance scores to keep-masks: the lowest-scoring weights are pruned, exactly as many as asked.

Every function takes `scores` shaped like the weight in (out_features, in_features) orientation and returns a
bool mask of that shape, True = keep. Ties are broken by position (stable sort), so masks are deterministic.
Counts: a group of `n` weights at sparsity `s` loses `prune_count(n, s)` = round-half-up(n * s) weights.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .plan import NMStructure


def prune_count(numel: int, sparsity: float) -> int:
    """How many of `numel` weights sparsity `sparsity` removes (round half up, never more than numel)."""
    return min(numel, int(numel * sparsity + 0.5))


def _prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask over the last dimension pruning the `count` lowest scores of every row (stable ties)."""
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if count > 0:
        lowest = torch.argsort(scores, dim=-1, stable=True)[..., :count]
        keep.scatter_(-1, lowest, False)
    return keep


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest `sparsity` fraction of the whole layer (one threshold per layer)."""
    flat = scores.reshape(1, -1)
    return _prune_lowest(flat, prune_count(flat.numel(), sparsity)).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest `sparsity` fraction of every output row (Wanda's comparison group)."""
    return _prune_lowest(scores, prune_count(scores.shape[-1], sparsity))


def check_nm_shape(columns: int, structure: NMStructure, layer: str = "layer") -> None:
    if columns % structure.m:
        raise UserError(f"{layer} has {columns} input features, not a multiple of M={structure.m}: "
                        f"{structure} cannot apply; ignore this layer or pick another M")


def nm_mask(scores: torch.Tensor, structure: NMStructure) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive inputs of each row."""
    rows, columns = scores.shape
    check_nm_shape(columns, structure)
    groups = scores.reshape(rows, columns // structure.m, structure.m)
    return _prune_lowest(groups, structure.m - structure.n).reshape(rows, columns)


def scores_mask(scores: torch.Tensor, sparsity: float, structure: NMStructure | None,
                per_row: bool) -> torch.Tensor:
    """N:M when a structure is given, else unstructured per row (`per_row`) or per layer."""
    if structure is not None:
        return nm_mask(scores, structure)
    return row_mask(scores, sparsity) if per_row else layer_mask(scores, sparsity)


__all__ = ["prune_count", "layer_mask", "row_mask", "check_nm_shape", "nm_mask", "scores_mask"]

"""From importance scores to keep-masks: the lowest-scoring weights are pruned, exactly as many as asked.

Every function takes `scores` shaped like the weight in (out_features, in_features) orientation and returns a
bool mask of that shape, True = keep. Ties are broken by position (stable sort), so masks are deterministic.
Counts: a group of `n` weights at sparsity `s` loses `prune_count(n, s)` = round-half-up(n * s) weights; with a
block structure the groups count R x C tiles, each scored by the sum of its members' scores.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import UserError
from .method_types import Target, segments_of
from .values import BlockStructure, NMStructure


def prune_count(numel: int, sparsity: float) -> int:
    """How many of `numel` weights sparsity `sparsity` removes (round half up, never more than numel)."""
    return min(numel, int(numel * sparsity + 0.5))


def prune_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask over the last dimension pruning the `count` lowest scores of every row.

    Selection by k-th value (linear time), with ties at the k-th value pruned in position order, so the
    result equals a stable sort's first `count` and is deterministic.
    """
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if count <= 0:
        return keep
    kth = scores.kthvalue(count, dim=-1, keepdim=True).values
    prune = scores < kth
    ties = scores == kth
    needed = count - prune.sum(dim=-1, keepdim=True)
    if bool((ties.sum(dim=-1, keepdim=True) > needed).any()):
        ties &= ties.cumsum(dim=-1) <= needed
    return keep.masked_fill_(prune | ties, False)


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest `sparsity` fraction of the whole layer (one threshold per layer)."""
    flat = scores.reshape(1, -1)
    return prune_lowest(flat, prune_count(flat.numel(), sparsity)).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the lowest `sparsity` fraction of every output row (Wanda's comparison group)."""
    return prune_lowest(scores, prune_count(scores.shape[-1], sparsity))


def check_structure_shape(shape: tuple[int, int], structure: NMStructure | BlockStructure,
                          layer: str = "layer") -> None:
    """UserError unless N:M groups (along the inputs) or R x C blocks tile the (out, in) weight exactly."""
    rows, columns = shape
    if isinstance(structure, BlockStructure):
        if rows % structure.rows or columns % structure.columns:
            raise UserError(f"{layer} is {rows} x {columns}, which {structure} tiles do not divide; ignore this "
                            "layer or pick another block shape")
    elif columns % structure.m:
        raise UserError(f"{layer} has {columns} input features, not a multiple of M={structure.m}: "
                        f"{structure} cannot apply; ignore this layer or pick another M")


def block_sums(scores: torch.Tensor, structure: BlockStructure) -> torch.Tensor:
    """(out/R, in/C) sums of the scores of each R x C tile of an (out, in) score matrix."""
    rows, columns = scores.shape
    tiles = scores.reshape(rows // structure.rows, structure.rows, columns // structure.columns, structure.columns)
    return tiles.sum(dim=(1, 3))


def expand_blocks(keep: torch.Tensor, structure: BlockStructure) -> torch.Tensor:
    """A per-tile (out/R, in/C) mask back to the (out, in) weight's shape."""
    return keep.repeat_interleave(structure.rows, 0).repeat_interleave(structure.columns, 1)


def block_mask(scores: torch.Tensor, sparsity: float, structure: BlockStructure, per_row: bool) -> torch.Tensor:
    """Prune the lowest-sum `sparsity` fraction of R x C tiles, per row of tiles (`per_row`) or per layer."""
    check_structure_shape(tuple(scores.shape), structure)
    sums = block_sums(scores, structure)
    keep = row_mask(sums, sparsity) if per_row else layer_mask(sums, sparsity)
    return expand_blocks(keep, structure)


def nm_mask(scores: torch.Tensor, structure: NMStructure) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive inputs of each row."""
    rows, columns = scores.shape
    check_structure_shape((rows, columns), structure)
    groups = scores.reshape(rows, columns // structure.m, structure.m)
    return prune_lowest(groups, structure.m - structure.n).reshape(rows, columns)


def scores_mask(scores: torch.Tensor, sparsity: float, structure: NMStructure | BlockStructure | None,
                per_row: bool) -> torch.Tensor:
    """N:M or blocks when a structure is given, else unstructured; per row (`per_row`) or per layer."""
    if isinstance(structure, BlockStructure):
        return block_mask(scores, sparsity, structure, per_row)
    if structure is not None:
        return nm_mask(scores, structure)
    return row_mask(scores, sparsity) if per_row else layer_mask(scores, sparsity)


def target_mask(weight: torch.Tensor, target: Target, score: Callable[[torch.Tensor], torch.Tensor],
                per_row: bool) -> torch.Tensor:
    """Keep-mask of a (possibly stacked) weight: `score(rows of one layer)` ranked within each stacked layer
    (per row, per layer, or per N:M group), each layer at its own sparsity."""
    keep = torch.empty(weight.shape, dtype=torch.bool, device=weight.device)
    for first, end, sparsity in segments_of(target):
        keep[first:end] = scores_mask(score(weight[first:end]), sparsity, target.structure, per_row)
    return keep


__all__ = ["prune_count", "prune_lowest", "layer_mask", "row_mask", "check_structure_shape", "block_sums", "expand_blocks",
           "block_mask", "nm_mask", "scores_mask",
           "target_mask"]

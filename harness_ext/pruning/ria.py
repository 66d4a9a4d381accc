"""RIA (Zhang et al. 2024, "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models").

Relative importance and activations: the score of W_ij is

    RIA_ij = (|W_ij| / sum_k |W_kj|  +  |W_ij| / sum_k |W_ik|) * (||X_j||_2)^a

(column sum over the layer's output rows, row sum over its inputs; ||X_j|| over all calibration tokens;
a = 0.5 in the paper). The lowest scores are pruned across the whole layer (the paper's default comparison
group), or within each N:M group.

Channel reallocation (`ria_reallocation=true`, N:M only): the input channels are reordered before the N:M
groups are formed, so that each group of M holds channels of different importance. Channels are sorted by
their summed score and dealt into the M positions of the groups in a snake order (strip i of the sorted
list fills position i of every group, every second strip reversed). The mask is then N:M in that permuted
order. The permutation is NOT folded into the weights (that would mean permuting the previous layer's
outputs or the residual stream), so in the stored column order the layer is not N:M: a reallocated result
measures mask quality, not a deployable N:M layout, and the report says so. The paper's optional linear-sum-
assignment refinement of the permutation is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from .calibration import InputStatistics
from .masks import nm_mask, target_mask
from .method_types import Options, PruneResult, Target, segments_of
from .values import NMStructure

REALLOCATION_NOTE = ("ria_reallocation: N:M holds in a permuted input-channel order that is not folded into the "
                     "weights; in the stored order the layers are not N:M (mask quality, not a deployable N:M "
                     "layout)")


@dataclass(frozen=True)
class RiaOptions(Options):
    """`ria_exponent`: a, the power of the input norm, in (0, 2]; `ria_reallocation`: heuristic channel
    reallocation before N:M selection (N:M structures only)."""

    ria_exponent: float = 0.5
    ria_reallocation: bool = False

    def check(self, target_structure) -> None:
        if not 0.0 < self.ria_exponent <= 2.0:
            raise UserError(f"ria_exponent must be in (0, 2] (the power of the input norm), got "
                            f"{self.ria_exponent}; the paper uses 0.5")
        if self.ria_reallocation and not isinstance(target_structure, NMStructure):
            raise UserError("ria_reallocation reorders channels for N:M groups; it needs structure=N:M "
                            "(e.g. 2:4), or drop ria_reallocation")

    def note(self, target_structure) -> str | None:
        return REALLOCATION_NOTE if self.ria_reallocation else None


def ria_scores(weight: torch.Tensor, column_norms: torch.Tensor, exponent: float) -> torch.Tensor:
    """RIA score of an (out, in) weight with (in,) input norms, in the weight's dtype."""
    magnitude = weight.abs()
    tiny = torch.finfo(magnitude.dtype).tiny  # an all-zero row or column scores 0, not 0/0
    relative = (magnitude / magnitude.sum(dim=0, keepdim=True).clamp_min(tiny)
                + magnitude / magnitude.sum(dim=1, keepdim=True).clamp_min(tiny))
    return relative * column_norms.to(magnitude.dtype).reshape(1, -1).pow(exponent)


def reallocation_order(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Column order (in,) putting one channel of each importance strip into every group of `m`.

    Channels sorted by summed score (ascending) are cut into m strips; strip i fills position i of every
    group, every second strip reversed (the paper's heuristic with the "sum" importance)."""
    columns = scores.shape[1]
    ranked = scores.sum(dim=0).argsort(stable=True)
    order = torch.empty_like(ranked)
    width = columns // m
    for strip in range(m):
        part = ranked[strip * width:(strip + 1) * width]
        order[strip::m] = part.flip(0) if strip % 2 else part
    return order


def reallocated_nm_mask(scores: torch.Tensor, structure: NMStructure) -> torch.Tensor:
    """N:M keep-mask chosen in the reallocated column order, returned in the original order."""
    order = reallocation_order(scores, structure.m)
    keep = torch.empty_like(scores, dtype=torch.bool)
    keep[:, order] = nm_mask(scores[:, order], structure)
    return keep


def ria_prune(weight: torch.Tensor, statistics: InputStatistics, target: Target, options: RiaOptions) -> PruneResult:
    """Registry function: per layer the lowest RIA scores pruned (or per N:M group, optionally reallocated)."""
    norms = statistics.column_norms()

    def score(rows: torch.Tensor) -> torch.Tensor:
        return ria_scores(rows, norms, options.ria_exponent)

    if not options.ria_reallocation:
        return PruneResult(target_mask(weight, target, score, per_row=False))
    keep = torch.cat([reallocated_nm_mask(score(weight[first:end]), target.structure)
                      for first, end, _ in segments_of(target)])
    return PruneResult(keep)


__all__ = ["RiaOptions", "REALLOCATION_NOTE", "ria_scores", "reallocation_order", "reallocated_nm_mask", "ria_prune"]

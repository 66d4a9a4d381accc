"""DSnoT mask refinement (Zhang et al. 2024, "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse
LLMs", ICLR 2024): swap pruned and kept weights of any method's mask, no weight changes, no gradients.

For an output row w (its weights W_j) and the layer input x, the expected reconstruction error of the row's
mask is what the pruned weights would have added to the output on average:

    e = sum_{j pruned} W_j E[x_j]          (E over all calibration tokens)

Each cycle, in every row whose |e| is above `dsnot_threshold`, one pruned weight grows back and one kept weight
is pruned, so every row (and every N:M group) keeps its count of zeros:
- grow: the pruned weight with the largest sign(e) W_j E[x_j] / Var(x_j)^p (p = `dsnot_variance_power`): the
  one that most reduces the error, preferring features whose value varies little around their mean;
- prune: among the weights kept by the starting mask, the lowest Wanda score |W_j| ||X_j|| whose removal moves
  e towards zero (sign(W_j E[x_j]) = -sign(e)); for N:M, the lowest Wanda score among the kept weights of the
  grown weight's group (the swap stays inside the group);
- the swap is made only if it lowers |e|. A row stops for good at the first swap that would not, once its |e|
  falls to the threshold, when no candidate is left (each weight grows back or is pruned at most once), or
  after `dsnot_cycles` cycles.

Differences from the reference code (zyxxmu/DSnoT), all deliberate: a swap must lower |e| (the reference only
stops an N:M row when e would change sign, and its N:M swaps, which have no sign condition on the pruned weight,
can raise |e|, and with it the layer's squared output error); E[x] and Var(x) are over all calibration
tokens (the reference averages per-sample variances); grow candidates are the pruned weights only (the
reference's sorted list also holds kept weights, whose regrowth is a no-op); N:M refines every layer (the
reference skips the MLP at N:M by default); the base mask comes from any method, while the pruning choice always
uses the Wanda score, as in the paper. All arithmetic is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .calibration import InputStatistics
from .method_types import Options, PruneResult, Target
from .values import NMStructure

VARIANCE_FLOOR = 1e-12  # a constant input feature (variance 0) counts as this variance


@dataclass(frozen=True)
class DsnotOptions(Options):
    """`dsnot_cycles`: most swaps per row; `dsnot_threshold`: |expected row error| (output units) at or below
    which a row stops; `dsnot_variance_power`: p in the growing score (0: ignore the variance)."""

    dsnot_cycles: int = 50
    dsnot_threshold: float = 0.1
    dsnot_variance_power: float = 1.0

    def check(self, target_structure) -> None:
        if self.dsnot_cycles < 1:
            raise UserError(f"dsnot_cycles must be >= 1, got {self.dsnot_cycles}; the default is 50")
        if not (math.isfinite(self.dsnot_threshold) and self.dsnot_threshold >= 0):
            raise UserError(f"dsnot_threshold must be a finite number >= 0, got {self.dsnot_threshold}; "
                            "the default is 0.1")
        if not (math.isfinite(self.dsnot_variance_power) and self.dsnot_variance_power >= 0):
            raise UserError(f"dsnot_variance_power must be a finite number >= 0, got {self.dsnot_variance_power}; "
                            "the default is 1.0 (0 ignores the variance)")


def _check_nm(keep: torch.Tensor, structure: NMStructure) -> None:
    kept = keep.reshape(keep.shape[0], -1, structure.m).sum(dim=-1)
    if not bool((kept == structure.n).all()):
        raise UserError(f"update=dsnot needs a mask that is {structure} in the stored column order (ria_reallocation "
                        "permutes the groups); drop ria_reallocation or the update")


def _prune_choice(wanda: torch.Tensor, can_prune: torch.Tensor, contribution: torch.Tensor, error: torch.Tensor,
                  grow: torch.Tensor, structure: NMStructure | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(column to prune, whether there is a candidate) per row; see the module docstring."""
    rows = torch.arange(wanda.shape[0])
    if structure is None:
        allowed = can_prune & (contribution * error.sign().unsqueeze(1) < 0)
        scores = wanda.masked_fill(~allowed, math.inf)
        prune = scores.argmin(dim=1)
        return prune, torch.isfinite(scores[rows, prune])
    start = grow - grow % structure.m
    group = start.unsqueeze(1) + torch.arange(structure.m)
    scores = wanda.gather(1, group).masked_fill(~can_prune.gather(1, group), math.inf)
    return start + scores.argmin(dim=1), torch.isfinite(scores.min(dim=1).values)


@torch.no_grad()
def dsnot_refine(weight: torch.Tensor, statistics: InputStatistics, keep: torch.Tensor, target: Target,
                 options: DsnotOptions) -> PruneResult:
    """Registry update: the (out, in) keep-mask refined by DSnoT swaps; the weight is unchanged (None)."""
    if target.structure is not None:
        _check_nm(keep, target.structure)
    weight = weight.double()
    mean, variance = statistics.feature_moments()
    contribution = weight * mean  # W_j E[x_j]: what each weight adds to its row's output on average
    growth = contribution / variance.clamp_min(VARIANCE_FLOOR).pow(options.dsnot_variance_power)
    wanda = weight.abs() * statistics.column_norms().double()
    keep = keep.clone()
    can_grow, can_prune = ~keep, keep.clone()
    error = (contribution * can_grow).sum(dim=1)
    active = torch.ones(weight.shape[0], dtype=torch.bool)
    rows = torch.arange(weight.shape[0])
    for _ in range(options.dsnot_cycles):
        active &= error.abs() > options.dsnot_threshold
        if not bool(active.any()):
            break
        grow_scores = (growth * error.sign().unsqueeze(1)).masked_fill(~can_grow, -math.inf)
        grow = grow_scores.argmax(dim=1)
        prune, can = _prune_choice(wanda, can_prune, contribution, error, grow, target.structure)
        after = error - contribution[rows, grow] + contribution[rows, prune]
        active &= torch.isfinite(grow_scores[rows, grow]) & can & (after.abs() < error.abs())
        swap, grow, prune = rows[active], grow[active], prune[active]
        keep[swap, grow], keep[swap, prune] = True, False
        can_grow[swap, grow], can_prune[swap, prune] = False, False
        error[swap] = after[swap]
    return PruneResult(keep)


__all__ = ["DsnotOptions", "dsnot_refine"]

"""ADMM weight update for pruned layers (Boza 2024, "Fast and Effective Weight Update for Pruned Large Language
Models", TMLR).

Given a layer's dense weight W0 (rows w0_i), the Hessian H = sum_tokens x x^T of its input and a keep-mask M,
find the masked weight that best reproduces the dense outputs:

    min_W  sum_i (w_i - w0_i)^T H (w_i - w0_i)   subject to  W = M * W.

ADMM splits W (unconstrained) from Z (masked), with the scaled dual U and penalty rho; in row form

    Z <- M * (W + U)
    U <- U + W - Z
    W <- (W0 H + rho (Z - U)) (H + rho I)^-1

so one factorisation of H + rho I serves every iteration and every row. As in the paper, inputs are first
normalised (H_jk / (d_j d_k), W_ij * d_j with d = sqrt(diag H), so rho = 1 fits every layer) and H is damped by
`admm_dampening` x its mean diagonal, which also pulls the solution towards W0. After `admm_iterations`
iterations the result is Z = M * (W + U), scaled back.

Two uses (methods.py):
- `update=admm` (`admm_refit`): the mask is any method's, fixed; only the kept weights change.
- `method=admm` (`admm_gradual_prune`): the paper's gradual variant: during the first `admm_prune_iterations`
  iterations the mask is re-chosen from |W + U| (in the normalised space, where |W_ij| d_j is Wanda's score)
  at a sparsity rising on the cubic schedule s_t = s (1 - (1 - (t+1)/T)^3); for N:M, only weights outside
  each group's N largest are pruned, the smallest first, until the N:M mask is reached at t = T - 1.
Normalisation and the factorisation are float64; the iterations run in float32 (`ITERATION_DTYPE`, the reference
code's precision): faster on CPU, with the same layer error to ~1e-10 relative, and CPU BLAS gives the same
product (so the same N:M choices) with 1 and 2 threads (tests/test_pruning_determinism.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UserError
from .calibration import InputStatistics
from .masks import layer_mask, nm_mask
from .method_types import Options, PruneResult, Target, segments_of
from .reproducible import one_cpu_thread

MaskAt = Callable[[int, torch.Tensor], torch.Tensor]
ITERATION_DTYPE = torch.float32  # the iterations (the reference code's precision); set-up and scaling in float64


@dataclass(frozen=True)
class AdmmOptions(Options):
    """`admm_iterations`: ADMM iterations; `admm_rho`: penalty (on normalised inputs); `admm_dampening`:
    fraction of the mean normalised Hessian diagonal added to it (the reference code's 0.1)."""

    admm_iterations: int = 20
    admm_rho: float = 1.0
    admm_dampening: float = 0.1

    def check(self, target_structure) -> None:
        if self.admm_iterations < 1:
            raise UserError(f"admm_iterations must be >= 1, got {self.admm_iterations}; the default is 20")
        if self.admm_rho <= 0:
            raise UserError(f"admm_rho must be > 0, got {self.admm_rho}; the default is 1.0")
        if not 0.0 <= self.admm_dampening <= 1.0:
            raise UserError(f"admm_dampening must be in [0, 1] (fraction of the mean Hessian diagonal), got "
                            f"{self.admm_dampening}; the default is 0.1")


@dataclass(frozen=True)
class AdmmGradualOptions(AdmmOptions):
    """Plus `admm_prune_iterations`: iterations over which the mask is chosen (the paper's 15 of 20)."""

    admm_prune_iterations: int = 15

    def check(self, target_structure) -> None:
        super().check(target_structure)
        if not 1 <= self.admm_prune_iterations <= self.admm_iterations:
            raise UserError(f"admm_prune_iterations must be in [1, admm_iterations={self.admm_iterations}], got "
                            f"{self.admm_prune_iterations}; the default is 15 of 20")


class _Problem:
    """The normalised least-squares problem of one (stacked) layer: scale d, W0 d, W0 H and (H + rho I)^-1."""

    def __init__(self, weight: torch.Tensor, hessian: torch.Tensor, options: AdmmOptions) -> None:
        hessian = hessian.double()
        scale = hessian.diagonal().sqrt()
        self.scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # never-active inputs: any value
        normalised = hessian / self.scale.reshape(-1, 1) / self.scale.reshape(1, -1)
        normalised.diagonal().add_(options.admm_dampening * normalised.diagonal().mean())
        self.dense = weight.double() * self.scale
        self.target = self.dense @ normalised
        normalised.diagonal().add_(options.admm_rho)
        with one_cpu_thread():  # the same inverse whatever the thread count (reproducible.py)
            self.inverse = torch.cholesky_inverse(torch.linalg.cholesky(normalised))
        self.rho = options.admm_rho
        self.dense, self.target, self.inverse = (x.to(ITERATION_DTYPE) for x in (self.dense, self.target, self.inverse))

    def solve(self, mask_at: MaskAt, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ADMM; (keep-mask, masked weight in the original scale)."""
        weight, dual = self.dense.clone(), torch.zeros_like(self.dense)
        for iteration in range(iterations):
            keep = mask_at(iteration, weight + dual)
            masked = (weight + dual) * keep
            dual += weight - masked
            weight = (self.target + self.rho * (masked - dual)) @ self.inverse
        keep = mask_at(iterations, weight + dual)
        return keep, (weight + dual).double() * keep / self.scale


@torch.no_grad()
def admm_refit(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, options: AdmmOptions) -> torch.Tensor:
    """Registry update: the (out, in) weight refitted on the fixed keep-mask, zeros elsewhere (float64 result)."""
    problem = _Problem(weight, hessian, options)
    return problem.solve(lambda _iteration, _current: keep, options.admm_iterations)[1]


def admm_update(weight: torch.Tensor, statistics: InputStatistics, keep: torch.Tensor, target: Target,
                options: AdmmOptions) -> PruneResult:
    """Registry update (`update=admm`): `admm_refit` on the method's mask."""
    return PruneResult(keep, admm_refit(weight, statistics.hessian, keep, options))


def _gradual_mask(current: torch.Tensor, target: Target, sparsity_scale: float) -> torch.Tensor:
    """Keep-mask from |W + U| at `sparsity_scale` x each layer's sparsity (N:M: within the N:M-prunable)."""
    scores = current.abs()
    keep = torch.empty_like(scores, dtype=torch.bool)
    for first, end, sparsity in segments_of(target):
        part = scores[first:end]
        if target.structure is not None:
            sparsity = target.structure.sparsity
            part = part.masked_fill(nm_mask(part, target.structure), float("inf"))
        keep[first:end] = layer_mask(part, sparsity * sparsity_scale)
    return keep


@torch.no_grad()
def admm_gradual_prune(weight: torch.Tensor, statistics: InputStatistics, target: Target,
                       options: AdmmGradualOptions) -> PruneResult:
    """Registry method: ADMM choosing its own mask on the cubic schedule, then refitting on it."""
    problem = _Problem(weight, statistics.hessian, options)
    steps = options.admm_prune_iterations
    chosen: list[torch.Tensor] = []

    def mask_at(iteration: int, current: torch.Tensor) -> torch.Tensor:
        if iteration < steps:
            chosen[:] = [_gradual_mask(current, target, 1.0 - (1.0 - (iteration + 1) / steps) ** 3)]
        return chosen[0]

    keep, pruned = problem.solve(mask_at, options.admm_iterations)
    return PruneResult(keep, pruned)


__all__ = ["AdmmOptions", "AdmmGradualOptions", "admm_refit", "admm_update", "admm_gradual_prune"]

"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

Optimal Brain Surgeon, one input column at a time, with the Hessian H = sum_tokens x x^T of the layer input:
columns are visited left to right in blocks of `block_size`; when column j is pruned (or kept), its error
(w_j - q_j) / [H^-1]_jj is spread over the columns not yet visited through the upper Cholesky factor of
H^-1. The mask of each block is chosen when the block starts, from w^2 / [H^-1]_jj^2 (lowest pruned);
for N:M, each group of m columns is chosen when it starts. Dampening adds `dampening * mean(diag H)` to the
diagonal; when the Cholesky factorisation fails it is retried with 10x more, and the caller is told.

The whole solve runs in float64 (the Hessian arrives in float64 from the calibration loop): the inverse
amplifies rounding by the Hessian's condition number, and in fp32 that flipped near-tie choices between
machines whose BLAS kernels sum in different orders. In float64 the Hessian's summation order no longer
changes a mask (tested). LAPACK's Cholesky also sums in a thread-count-dependent order, so the factorisation
runs on one CPU thread (reproducible.py): SmolLM2's SparseGPT 2:4 masks had differed with 1 and 2 threads until
then (benchmarks/results/determinism.md).

Layers that share one input (q/k/v) share the Hessian and run as one stacked matrix: rows are independent in
OBS, and each layer keeps its own exact sparsity through its own row segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import UserError
from .calibration import InputStatistics
from .masks import block_sums, expand_blocks, prune_count, prune_lowest
from .method_types import Options, PruneResult, Target
from .reproducible import one_cpu_thread
from .values import BlockStructure, NMStructure

MAX_DAMPENING = 1.0  # after 0.01 -> 0.1 -> 1.0 the Hessian is dominated by the identity; stop there


@dataclass(frozen=True)
class SparseGPTOptions(Options):
    """`block_size`: columns per OBS block (lazy batch updates); `dampening`: fraction of the mean Hessian
    diagonal added to it (the reference code's `percdamp`)."""

    block_size: int = 128
    dampening: float = 0.01

    def check(self, target_structure) -> None:
        if self.block_size < 1:
            raise UserError(f"block_size must be a positive number of columns, got {self.block_size}; "
                            "the default is 128")
        if not 0.0 < self.dampening < 1.0:
            raise UserError(f"dampening must be in (0, 1) (fraction of the mean Hessian diagonal), "
                            f"got {self.dampening}; the default is 0.01")


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor U of (H + d * mean(diag H) * I)^-1 and the dampening d that worked.

    `hessian` (in, in) is read, not modified; a column whose diagonal is 0 (an input that was always zero)
    gets 1 there first. Tries `dampening`, then 10x more until MAX_DAMPENING; UserError if even that fails.
    Runs on one CPU thread, so the factor is the same whatever the caller's thread count
    (harness_ext/pruning/reproducible.py). Memory: one float64 (in, in) matrix besides `hessian` (SmolLM2's
    down_proj: 18 MiB), factored, inverted and factored again in place (LAPACK's potrf and potri work in
    place; the values are those of the out-of-place calls, bit for bit, tested).
    """
    with one_cpu_thread():
        return _inverse_hessian_factor(hessian, dampening)


def _damped(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """A float64 copy of `hessian` with 1 on its zero diagonal entries, plus damp * mean(diag) on the diagonal,
    laid out column-major (LAPACK's order, so the factorisations below need no copy of their own)."""
    damped = torch.empty_strided(hessian.shape, (1, hessian.shape[0]), dtype=torch.float64, device=hessian.device)
    damped.copy_(hessian)
    dead = damped.diagonal() == 0
    damped[dead, dead] = 1.0
    damped.diagonal().add_(damp * damped.diagonal().mean())
    return damped


def _inverse_hessian_factor(hessian: torch.Tensor, dampening: float) -> tuple[torch.Tensor, float]:
    damp = dampening
    while damp <= MAX_DAMPENING * (1 + 1e-9):
        factor = _damped(hessian, damp)
        info = torch.empty((), dtype=torch.int32, device=hessian.device)
        torch.linalg.cholesky_ex(factor, out=(factor, info))  # L, lower
        if int(info) == 0:
            torch.cholesky_inverse(factor, out=factor)  # (L L^T)^-1
            torch.linalg.cholesky_ex(factor, upper=True, out=(factor, info))  # U, upper
            if int(info) == 0:
                return factor, damp
        damp *= 10
    raise UserError(f"the calibration Hessian is not positive definite even with dampening {MAX_DAMPENING}; "
                    "use more calibration samples or longer sequences")


def _block_prune_flags(block: torch.Tensor, inverse_diagonal: torch.Tensor,
                       segments: Sequence[tuple[int, int, int]], tiles: BlockStructure | None) -> torch.Tensor:
    """Prune flags (columns, rows) for one block: per row segment, its `count` lowest w^2 / d^2 pruned
    (with `tiles`: its `count` R x C tiles of lowest summed w^2 / d^2)."""
    scores = block.square() / inverse_diagonal.square().reshape(-1, 1)
    prune = torch.zeros_like(block, dtype=torch.bool)
    transposed = None if tiles is None else BlockStructure(tiles.columns, tiles.rows)  # (columns, rows) layout
    for start, stop, count in segments:
        segment = scores[:, start:stop]
        if transposed is not None:
            segment = block_sums(segment, transposed)
        keep = prune_lowest(segment.reshape(1, -1), count).reshape(segment.shape)
        prune[:, start:stop] = ~(keep if transposed is None else expand_blocks(keep, transposed))
    return prune


def _nm_prune_flags(group: torch.Tensor, inverse_diagonal: torch.Tensor, structure: NMStructure) -> torch.Tensor:
    """Prune flags (m, rows) for one group of m columns: per row the m - n lowest w^2 / d^2."""
    scores = group.square() / inverse_diagonal.square().reshape(-1, 1)
    return ~prune_lowest(scores.t(), structure.m - structure.n).t()


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsities: Sequence[tuple[int, float]],
                    structure: NMStructure | BlockStructure | None, block_size: int, dampening: float) -> tuple[torch.Tensor, float]:
    """Prune and reconstruct an (out, in) weight; returns (new weight in the input's dtype, dampening used).

    `sparsities` lists (rows, sparsity) segments covering the rows in order (one per stacked layer); each
    segment loses exactly round(rows * in * sparsity) weights (unstructured), m - n per N:M group, or
    round(tiles * sparsity) R x C tiles (block structure; the mask is chosen per column block as for
    unstructured, ranking tiles by their summed w^2 / d^2, and the OBS update is unchanged).
    `hessian` is (in, in), used in float64; neither input is modified.
    """
    columns = weight.shape[1]
    nm = structure if isinstance(structure, NMStructure) else None
    tiles = structure if isinstance(structure, BlockStructure) else None
    step = nm.m if nm else tiles.columns if tiles else 1
    if block_size % step:
        block_size += step - block_size % step
    dead = hessian.diagonal() == 0
    upper, damp_used = inverse_hessian_factor(hessian, dampening)  # no float64 copy of the Hessian kept
    # transposed working copy: column j of W is the contiguous row j here
    work = weight.double().t().contiguous()
    work[dead] = 0.0
    bounds, start = [], 0
    for rows, sparsity in sparsities:
        bounds.append((start, start + rows, sparsity))
        start += rows
    for first in range(0, columns, block_size):
        last = min(first + block_size, columns)
        block, factor = work[first:last], upper[first:last, first:last]
        inverse_diagonal = factor.diagonal()
        errors = torch.empty_like(block)
        if nm is None:
            size = tiles.size if tiles else 1
            segments = [(a, b, prune_count((b - a) * last // size, s) - prune_count((b - a) * first // size, s))
                        for a, b, s in bounds]
            prune = _block_prune_flags(block, inverse_diagonal, segments, tiles)
        else:
            prune = torch.zeros_like(block, dtype=torch.bool)
        for j in range(last - first):
            if nm is not None and j % nm.m == 0:
                group = slice(j, j + nm.m)
                prune[group] = _nm_prune_flags(block[group], inverse_diagonal[group], nm)
            row = block[j]
            kept = row.masked_fill(prune[j], 0.0)
            error = (row - kept) / inverse_diagonal[j]
            block[j] = kept
            block[j + 1:].addr_(factor[j, j + 1:], error, alpha=-1.0)
            errors[j] = error
        work[last:].addmm_(upper[first:last, last:].t(), errors, alpha=-1.0)
    return work.t().to(weight.dtype), damp_used


def sparsegpt_method(weight: torch.Tensor, statistics: InputStatistics, target: Target,
                     options: SparseGPTOptions) -> PruneResult:
    """Registry function: SparseGPT on a (possibly stacked) weight; the keep-mask is its non-zeros."""
    pruned, damp_used = sparsegpt_prune(weight, statistics.hessian, target.segments, target.structure,
                                        options.block_size, options.dampening)
    notes = () if damp_used == options.dampening else (
        f"Hessian Cholesky failed with dampening {options.dampening:g}; used {damp_used:g}",)
    return PruneResult(pruned != 0, pruned, notes)


__all__ = ["MAX_DAMPENING", "SparseGPTOptions", "inverse_hessian_factor", "sparsegpt_prune", "sparsegpt_method"]

"""What pruning did, measured from the weights: zeros per layer and overall, non-zero parameters, times, memory.

`report_as_loaded` only counts (for checkpoints that were pruned elsewhere); the engine fills the same
report after pruning. Sparsity is always counted as exact zeros in the weights, never taken from the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..memory import peak_rss_bytes
from .targets import DEFAULT_IGNORE, find_target_layers


@dataclass
class LayerSparsity:
    """Exact zeros in one layer's weight and the sparsity that was asked of it (None: only measured)."""

    zeros: int
    numel: int
    target_sparsity: float | None = None

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class PruneReport:
    """Measured result of pruning (or of measuring) a model.

    `layers` covers the pruned (or prunable) layers; `nonzero_params` / `total_params` cover every parameter
    of the model, tied weights counted once. Times in seconds, memory in bytes.
    """

    layers: dict[str, LayerSparsity]
    nonzero_params: int
    total_params: int
    plan: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    prune_seconds: float = 0.0
    calibration_seconds: float = 0.0
    peak_rss_bytes: int | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def zeros(self) -> int:
        return sum(layer.zeros for layer in self.layers.values())

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers.values())

    @property
    def overall_sparsity(self) -> float:
        """Exact zeros / weights over the pruned layers."""
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary; the per-layer table keeps model order."""
        return {
            "overall_sparsity": self.overall_sparsity,
            "zeros": self.zeros,
            "numel": self.numel,
            "nonzero_params": self.nonzero_params,
            "total_params": self.total_params,
            "layers": {name: {"zeros": layer.zeros, "numel": layer.numel, "sparsity": layer.sparsity,
                              "target_sparsity": layer.target_sparsity}
                       for name, layer in self.layers.items()},
            "plan": self.plan,
            "calibration": self.calibration,
            "prune_seconds": self.prune_seconds,
            "calibration_seconds": self.calibration_seconds,
            "peak_rss_bytes": self.peak_rss_bytes,
            "warnings": list(self.warnings),
        }


@torch.no_grad()
def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(non-zero, total) over the model's parameters; a tied weight is one parameter and counted once."""
    nonzero = total = 0
    for parameter in model.parameters():  # parameters() already skips repeated (tied) tensors
        nonzero += int(torch.count_nonzero(parameter))
        total += parameter.numel()
    return nonzero, total


@torch.no_grad()
def layer_sparsity(layers: dict[str, nn.Module],
                   targets: dict[str, float] | None = None) -> dict[str, LayerSparsity]:
    """Exact zero counts of each layer's weight, with the target sparsity where one was set."""
    targets = targets or {}
    return {name: LayerSparsity(zeros=int(module.weight.numel() - torch.count_nonzero(module.weight)),
                                numel=module.weight.numel(), target_sparsity=targets.get(name))
            for name, module in layers.items()}


def report_as_loaded(model: nn.Module, targets: Iterable[str] = (),
                     ignore: Iterable[str] = DEFAULT_IGNORE) -> PruneReport:
    """Measure (never change) the sparsity of `model`'s prunable layers, as `prune` would report it."""
    layers = find_target_layers(model, targets, ignore)
    nonzero, total = count_parameters(model)
    return PruneReport(layers=layer_sparsity(layers), nonzero_params=nonzero, total_params=total,
                       peak_rss_bytes=peak_rss_bytes())


__all__ = ["LayerSparsity", "PruneReport", "count_parameters", "layer_sparsity",
           "report_as_loaded"]

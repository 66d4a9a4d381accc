"""Keep every pruned zero an exact zero while training (llm-compressor's ConstantPruningModifier semantics).

At the start, each target layer's mask is `weight != 0` (exact zeros: sparse-bench prunes by writing +0.0).
Two things then hold the zeros in place:
- a gradient hook multiplies the weight's gradient by the mask, so the optimizer's moments of a pruned weight
  stay zero (no momentum or weight decay can revive it), and
- `MaskCallback` writes +0.0 into the pruned positions after every optimizer step, so nothing that moves
  weights outside the gradient (decoupled weight decay, AMP rounding, a custom optimizer) can revive them either.
Layers without any zero get neither: a dense model trains exactly as without masks.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from ..pruning.report import layer_sparsity


class MaskKeeper:
    """The pruned positions of `layers` ({name: module with .weight}) and the hooks that keep them zero.

    `masks[name]` is a bool tensor shaped like the weight: True where the weight may train (non-zero at start).
    """

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = layers
        self.masks: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, module in layers.items():
                keep = module.weight != 0
                if not bool(keep.all()):
                    self.masks[name] = keep
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> MaskKeeper:
        """Register the gradient hooks on trainable masked weights (idempotent)."""
        self.detach()
        for name, keep in self.masks.items():
            weight = self.layers[name].weight
            if weight.requires_grad:
                self._hooks.append(weight.register_hook(_masked_gradient(keep)))
        return self

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @torch.no_grad()
    def apply(self) -> None:
        """Write +0.0 into every pruned position (after an optimizer step)."""
        for name, keep in self.masks.items():
            self.layers[name].weight.masked_fill_(~keep, 0.0)

    def zeros(self) -> dict[str, dict[str, int]]:
        """{layer: {"zeros": exact zeros now, "numel": weights}} over every layer watched."""
        return {name: {"zeros": layer.zeros, "numel": layer.numel}
                for name, layer in layer_sparsity(self.layers).items()}


def _masked_gradient(keep: torch.Tensor):
    def hook(gradient: torch.Tensor) -> torch.Tensor:
        return gradient * keep.to(gradient.dtype)
    return hook


class MaskCallback(TrainerCallback):
    """Re-applies the masks after every optimizer step of a transformers Trainer."""

    def __init__(self, keeper: MaskKeeper) -> None:
        self.keeper = keeper

    def on_train_begin(self, args, state, control, **kwargs):
        self.keeper.attach()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.keeper.apply()

    def on_train_end(self, args, state, control, **kwargs):
        self.keeper.detach()


def changed_zero_positions(before: dict[str, torch.Tensor], layers: dict[str, nn.Module]) -> list[str]:
    """Names of layers whose set of exact-zero positions differs from `before` ({name: bool zero map})."""
    return [name for name, zero_map in before.items() if not torch.equal(zero_map, layers[name].weight == 0)]


def zero_maps(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """{name: weight == 0} for each layer (a copy, for before/after comparisons)."""
    with torch.no_grad():
        return {name: module.weight == 0 for name, module in layers.items()}


__all__ = ["MaskCallback", "MaskKeeper", "changed_zero_positions", "zero_maps"]

"""A recipe against a model, without calibration: which layers each step prunes, how much, and what fails.

`layer_plan(recipe, model)` resolves every step's targets to layer names (each target and ignore pattern
must match something: the error names the recipe line), checks that N:M groups or blocks tile every layer,
and returns one row per pruned layer with the sparsity the recipe asks for and the zeros it implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import UserError
from ..pruning.masks import check_structure_shape
from ..pruning.plan import PruneStep
from ..pruning.targets import find_target_layers, matches_any, weight_matrix
from .loader import LoadedRecipe
from .modifiers import StepSource
from .yaml_loader import recipe_error


@dataclass(frozen=True)
class LayerRow:
    """The plan for one layer: last step that prunes it, the sparsity it asks for, and its size."""

    layer: str
    method: str
    sparsity: float
    structure: str
    params: int
    steps: tuple[int, ...]
    owl: bool = False

    @property
    def zeros(self) -> int:
        return round(self.params * self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "method": self.method, "sparsity": self.sparsity,
                "structure": self.structure, "params": self.params, "expected_zeros": self.zeros,
                "steps": list(self.steps), "owl": self.owl}


def _layer_sparsity(step: PruneStep, name: str) -> float:
    for pattern, value in step.layer_sparsity:
        if matches_any(name, (pattern,)):
            return value
    return step.sparsity


def _resolve_step(recipe: LoadedRecipe, step: PruneStep, source: StepSource, model: nn.Module) -> dict:
    """{layer name: module} of one step; errors point at the recipe line of the pattern that failed."""
    for pattern, line in source.targets:
        try:
            find_target_layers(model, (pattern,), ())
        except UserError as error:
            raise recipe_error(recipe.path, line, f"{source.modifier} targets", str(error)) from None
    for pattern, line in source.ignore:
        try:
            find_target_layers(model, (), (pattern,))
        except UserError as error:
            if "matches no module" in str(error):
                raise recipe_error(recipe.path, line, f"{source.modifier} ignore", str(error)) from None
    try:
        return find_target_layers(model, step.targets, step.ignore)
    except UserError as error:
        raise recipe_error(recipe.path, source.line, source.modifier, str(error)) from None


def _check_structure(recipe: LoadedRecipe, step: PruneStep, source: StepSource, layers: dict) -> None:
    if step.structure is None:
        return
    for name, module in layers.items():
        try:
            check_structure_shape(tuple(weight_matrix(module).shape), step.structure, f"layer {name}")
        except UserError as error:
            raise recipe_error(recipe.path, source.line, f"{source.modifier} mask {step.structure}",
                               str(error)) from None


def layer_plan(recipe: LoadedRecipe, model: nn.Module) -> list[LayerRow]:
    """One row per layer the recipe prunes, in model order (a later step on the same layer wins)."""
    rows: dict[str, LayerRow] = {}
    for index, (step, source) in enumerate(zip(recipe.plan.steps, recipe.sources), start=1):
        layers = _resolve_step(recipe, step, source, model)
        _check_structure(recipe, step, source, layers)
        for name, module in layers.items():
            earlier = rows.get(name)
            rows[name] = LayerRow(
                layer=name, method=step.method,
                sparsity=max(_layer_sparsity(step, name), earlier.sparsity if earlier else 0.0),
                structure=str(step.structure) if step.structure else "unstructured",
                params=weight_matrix(module).numel(), steps=(earlier.steps if earlier else ()) + (index,),
                owl=step.owl is not None)
    order = {name: position for position, (name, _) in enumerate(model.named_modules())}
    return sorted(rows.values(), key=lambda row: order[row.layer])


def summary(rows: list[LayerRow], model: nn.Module) -> dict[str, Any]:
    """Overall expected sparsity over the pruned layers and over all model parameters."""
    pruned_params = sum(row.params for row in rows)
    zeros = sum(row.zeros for row in rows)
    total = sum(parameter.numel() for parameter in model.parameters())
    return {"layers": len(rows), "pruned_layer_params": pruned_params, "expected_zeros": zeros,
            "sparsity_of_pruned_layers": zeros / pruned_params if pruned_params else 0.0,
            "model_params": total, "sparsity_of_model": zeros / total if total else 0.0,
            "owl": any(row.owl for row in rows)}


__all__ = ["LayerRow", "layer_plan", "summary"]

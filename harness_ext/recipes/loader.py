"""`load_recipe(path) -> PruningPlan`: a SparseML / llm-compressor recipe file as the engine's plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..pruning.plan import PruningPlan
from .modifiers import StepSource, map_modifier
from .overlaps import prune_each_layer_once
from .stages import V1_FORMAT, read_layout
from .yaml_loader import load_yaml, recipe_error

FORMAT_NAMES = {V1_FORMAT: "SparseML v1 (!Modifier tags)",
                "stage": "stage format (SparseML >= 1.6 / llm-compressor)"}


@dataclass(frozen=True)
class LoadedRecipe:
    """A parsed recipe: the plan plus what model-dependent checks need to point at the right line."""

    path: Path
    format: str
    plan: PruningPlan
    sources: tuple[StepSource, ...]

    @property
    def prunes_nothing_new(self) -> bool:
        """True for a recipe whose only pruning modifier holds existing masks (ConstantPruningModifier)."""
        return not self.plan.steps


def read_recipe(path: str | Path, recipe_args: Mapping[str, Any] | None = None) -> LoadedRecipe:
    """Parse and check a recipe file; raises UserError "FILE:LINE: Modifier.field: what is expected"."""
    path = Path(path)
    document, raw = load_yaml(path)
    layout = read_layout(path, document, recipe_args)
    steps, sources, holds = [], [], False
    notes = [f"recipe format: {FORMAT_NAMES[layout.format]}"]
    for entry in layout.entries:
        mapped = map_modifier(path, entry)
        notes += mapped.notes
        holds |= mapped.holds_masks
        if mapped.step is not None:
            steps.append(mapped.step)
            sources.append(StepSource(entry.label, entry.line, tuple(mapped.target_lines),
                                      tuple(mapped.ignore_lines)))
    steps, sources = prune_each_layer_once(path, steps, sources, notes)
    if not steps and not holds:
        found = ", ".join(entry.name for entry in layout.entries)
        raise recipe_error(path, None, None, f"no pruning modifier (found {found}): nothing to prune; add e.g. "
                           "SparseGPTModifier, WandaPruningModifier or GMPruningModifier")
    if not steps:
        notes.append("nothing is pruned: the recipe's only pruning modifier holds the masks already in the "
                     "weights (ConstantPruningModifier), so the model is used as loaded")
    elif len(steps) > 1:
        notes.append(f"{len(steps)} pruning steps run in recipe order")
    plan = PruningPlan(steps=tuple(steps), source=str(path), recipe_sha256=hashlib.sha256(raw).hexdigest(),
                       notes=tuple(notes))
    return LoadedRecipe(path, layout.format, plan, tuple(sources))


def load_recipe(path: str | Path, recipe_args: Mapping[str, Any] | None = None) -> PruningPlan:
    """The pruning plan of a SparseML (v1 or stage) or llm-compressor recipe (.yaml, .json or .md card).

    `recipe_args` override recipe variables (SparseML's recipe_args) or define ones its eval() uses.
    An empty `steps` means the recipe only holds existing masks: nothing new is pruned (see `notes`).
    """
    return read_recipe(path, recipe_args).plan


__all__ = ["StepSource", "LoadedRecipe", "read_recipe", "load_recipe"]

"""The cells of a grid: one (model, dtype, pruning) combination each, their ids, prune keys and shards.

A cell is one model load (plus one pruning, cached) evaluated on all the grid's tasks. The dense baseline of
every (model, dtype) is always a cell. N:M patterns fix their own sparsity, so they ignore `sparsities`; a
`{recipe: FILE}` method fixes sparsity and pattern itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.pruning.plan import UNSTRUCTURED, NMStructure, PruningPlan, parse_structure, plan_from_arguments
from .spec import GridSpec, MethodSpec

DENSE = "dense"
RECIPE = "recipe"


@dataclass(frozen=True)
class Cell:
    """One row of the leaderboard.

    `method` None is the dense baseline; a method with a recipe prunes as the recipe says. `sparsity` is the
    target fraction (0.0 for dense, None for recipes, the pattern's own for N:M); `nm` the N:M pattern, None
    for unstructured, dense and recipe cells."""

    model: str
    dtype: str
    method: MethodSpec | None
    sparsity: float | None
    nm: NMStructure | None = None

    @property
    def is_dense(self) -> bool:
        return self.method is None

    @property
    def is_recipe(self) -> bool:
        return self.method is not None and self.method.recipe is not None

    @property
    def method_label(self) -> str:
        return DENSE if self.method is None else self.method.label

    @property
    def structure_label(self) -> str:
        """"dense", "recipe", "unstructured" or the N:M pattern ("2:4"), as result files and tables name it."""
        if self.is_dense:
            return DENSE
        if self.is_recipe:
            return RECIPE
        return str(self.nm) if self.nm else UNSTRUCTURED

    @property
    def target_label(self) -> str:
        """The pruning target in a name: the sparsity (`0.5`) or the N:M pattern (`2:4`)."""
        return str(self.nm) if self.nm else f"{self.sparsity:g}" if self.sparsity is not None else RECIPE

    def plan(self) -> PruningPlan | None:
        """The pruning plan (None for dense); recipes are parsed by the recipes module."""
        if self.method is None:
            return None
        if self.method.recipe:
            return plan_from_arguments(recipe=self.method.recipe)
        return plan_from_arguments(self.method.method, self.sparsity, str(self.nm) if self.nm else None,
                                   scope=self.method.scope, source="leaderboard", update=self.method.update,
                                   options=dict(self.method.options))

    def describe(self) -> dict[str, Any]:
        """The cell as result files and grid.json record it (`structure` = `structure_label`)."""
        return {"model": self.model, "dtype": self.dtype, "method": self.method_label,
                "scope": None if self.method is None else self.method.scope,
                "recipe": None if self.method is None else self.method.recipe,
                "recipe_sha256": None if self.method is None else self.method.recipe_sha256,
                "sparsity": self.sparsity, "structure": self.structure_label}

    @property
    def cell_id(self) -> str:
        """Readable and unique file name stem, e.g. `smollm2-135m_wanda_2-4_float32_1a2b3c4d`."""
        parts = [model_name(self.model), self.method_label, *([] if self.is_dense else [self.target_label]), self.dtype,
                 _short_hash(self.describe())]
        return "_".join(re.sub(r"[^A-Za-z0-9.+-]+", "-", part) for part in parts)

    @property
    def label(self) -> str:
        """One line for progress output: `smollm2-135m wanda 0.5 float32`."""
        target = "" if self.is_dense else f" {self.target_label}"
        return f"{model_name(self.model)} {self.method_label}{target} {self.dtype}"


def model_name(model: str) -> str:
    """A model's short display name: the last part of its path or hub id."""
    return Path(model.rstrip("/")).name


def _short_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def expand_cells(spec: GridSpec) -> list[Cell]:
    """Every cell of the grid in a fixed order: per model and dtype, dense first, then methods x structures x
    sparsities in spec order (N:M once, ignoring sparsities; recipes once)."""
    cells: list[Cell] = []
    for model in spec.models:
        for dtype in spec.dtypes:
            cells.append(Cell(model, dtype, None, 0.0))
            for method in spec.methods:
                if method.recipe:
                    cells.append(Cell(model, dtype, method, None))
                    continue
                for structure in map(parse_structure, spec.structures):
                    if structure is None:
                        cells.extend(Cell(model, dtype, method, s) for s in spec.sparsities)
                    else:
                        cells.append(Cell(model, dtype, method, structure.sparsity, structure))
    return list(dict.fromkeys(cells))


def prune_key(cell: Cell, spec: GridSpec, model_fingerprint: str) -> dict[str, Any]:
    """What determines a pruned model: model weights, method, sparsity, structure, recipe, calibration
    (seed included) and the dtype pruning ran in. The evaluation dtype is not part of it."""
    return {"model": cell.model, "model_fingerprint": model_fingerprint, "method": cell.method_label,
            "scope": cell.method.scope if cell.method else None, "sparsity": cell.sparsity,
            "structure": cell.structure_label, "recipe_sha256": cell.method.recipe_sha256 if cell.method else None,
            "calibration": spec.calibration.describe(), "prune_dtype": spec.prune_dtype}


def parse_shard(text: str) -> tuple[int, int]:
    """"i/N" (0 <= i < N) -> (i, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise UserError(f"--shard must be i/N with 0 <= i < N, got {text!r}; "
                        "write e.g. 0/4 .. 3/4 (a Slurm array index)")
    return int(match.group(1)), int(match.group(2))


def pruned_model_groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by the pruned model they load (a dtype sweep of one mask is one group), in grid order."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.method, cell.sparsity, cell.nm), []).append(cell)
    return list(groups.values())


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count`: cells that share a pruned model stay together; groups are dealt round-robin
    in grid order, so every cell lands in exactly one shard whatever machine computes the split."""
    return [cell for number, group in enumerate(pruned_model_groups(cells)) if number % count == index
            for cell in group]


__all__ = ["DENSE", "RECIPE", "Cell", "model_name", "expand_cells", "prune_key", "parse_shard",
           "pruned_model_groups", "shard_cells"]

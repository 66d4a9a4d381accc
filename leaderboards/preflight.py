"""Before a grid runs: every pruning cell's plan checked against its model's structure, no weights loaded.

A combination that cannot work (N:M on a layer width not divisible by M, targets that match no layer, a method
that needs what the model lacks) stops the whole run with one `UserError` naming the spec entry and the model,
before any model is pruned or any cell runs. The model is built from its config on PyTorch's `meta` device
(shapes only, no memory, no weights), and the engine's own `plan_layers` does the checking.

A model whose config cannot be read here (not on disk, hub offline) is not checked: its cells fail in their
prune phase with the reason, as they always did.
"""

from __future__ import annotations

from typing import Any

from ..harness_ext.errors import UserError
from .cells import Cell


def model_skeleton(model_path: str) -> Any | None:
    """The model of `model_path` on the meta device (no weights), or None if its config cannot be read."""
    import torch
    from transformers import AutoConfig

    from ..harness_ext.models import auto_model_class

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return None
    with torch.device("meta"):
        return auto_model_class(config).from_config(config)


def check_cells(cells: list[Cell], source: str, model_path: str) -> None:
    """UserError (one line: the spec, the cell, the engine's reason) if a cell's plan cannot prune the model."""
    from ..harness_ext.pruning.engine import plan_layers

    pruned = [cell for cell in cells if not cell.is_dense]
    skeleton = model_skeleton(model_path) if pruned else None
    if skeleton is None:
        return
    for cell in pruned:
        try:
            plan_layers(skeleton, cell.plan())
        except UserError as error:
            raise UserError(f"{source}: {cell.method_label} {cell.target_label} cannot prune {cell.model}: "
                            f"{error}; nothing ran: change the spec's methods or structures for this model") from None


__all__ = ["check_cells", "model_skeleton"]

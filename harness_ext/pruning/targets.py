"""Which layers get pruned: the transformer blocks of a model and the Linear / GPT-2 Conv1D layers inside them.

Target and ignore entries are matched against module names:
- an exact module name or a `re:` regex (fullmatch), e.g. `model.layers.0.mlp.down_proj`, `re:.*self_attn.*`;
  a match on a container (a block, `...mlp`) selects every prunable layer under it;
- a class name, `Linear` or `Conv1D`, selects every layer of that class (llm-compressor's habit).
With no targets, every prunable layer inside the transformer blocks is a target: embeddings and `lm_head`
(tied to the embedding on SmolLM2) are never pruned by default.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from ..errors import UserError

DEFAULT_IGNORE = ("lm_head",)  # every way in adds the user's ignore entries to this


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A target/ignore entry as a regex: `re:EXPR` is EXPR, anything else an exact module name."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as error:
            raise UserError(f"bad regex {pattern!r}: {error}; fix the pattern after re:") from None
    return re.compile(re.escape(pattern))


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if module `name` matches one of the target/ignore patterns (regexes must match the whole name)."""
    return any(compile_pattern(pattern).fullmatch(name) for pattern in patterns)


try:  # GPT-2 style models use a transposed Linear: weight shape (in_features, out_features)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()

PRUNABLE_TYPES = (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ())


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out_features, in_features) view (transposed for GPT-2 Conv1D).

    Writing into the view writes the parameter: masks and updates always work in this orientation, so
    "row" means an output unit and N:M groups run along the input dimension for every layer type.
    """
    return module.weight.data if isinstance(module, nn.Linear) else module.weight.data.t()


def transformer_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated transformer blocks, in execution order, as (name, module).

    A block stack is an `nn.ModuleList` of modules of one class that contain prunable layers, not nested in
    another stack (so MoE expert lists stay inside their block). Encoder-decoder models have two stacks;
    both are returned, encoder first as in `named_modules`.
    """
    stacks: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(stack + ".") for stack, _ in stacks):
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if all(any(is_prunable(sub) for sub in child.modules()) for child in module):
            stacks.append((name, module))
    return [(f"{stack}.{index}", block) for stack, blocks in stacks for index, block in enumerate(blocks)]


def _selected_by(pattern: str, names: Iterable[str], modules: dict[str, nn.Module]) -> set[str]:
    """Names of prunable layers that `pattern` selects (by name, by container, or by class name)."""
    if not pattern.startswith("re:") and pattern in {type(m).__name__ for m in modules.values()}:
        return {name for name, module in modules.items() if type(module).__name__ == pattern}
    regex = compile_pattern(pattern)
    matched = [name for name in names if regex.fullmatch(name)]
    return {layer for layer in modules for name in matched if layer == name or layer.startswith(name + ".")}


def find_target_layers(model: nn.Module, targets: Iterable[str] = (),
                       ignore: Iterable[str] = DEFAULT_IGNORE) -> dict[str, nn.Module]:
    """{module name: layer} of the Linear / Conv1D layers to prune, in model order.

    Raises UserError when a target pattern (or a non-default ignore pattern) matches nothing, when nothing is
    left to prune, or when no target is given and the model has no transformer block stack to walk.
    """
    targets, ignore = tuple(targets), tuple(ignore)
    all_names = [name for name, _ in model.named_modules() if name]
    prunable = {name: module for name, module in model.named_modules() if name and is_prunable(module)}
    if not targets:
        blocks = transformer_blocks(model)
        if not blocks:
            raise UserError(f"cannot find the transformer blocks of {type(model).__name__} (no ModuleList of "
                            "blocks with Linear/Conv1D layers); name the layers to prune with targets")
        prefixes = tuple(name + "." for name, _ in blocks)
        selected = {name for name in prunable if name.startswith(prefixes)}
    else:
        selected = set()
        for pattern in targets:
            hits = _selected_by(pattern, all_names, prunable)
            if not hits:
                raise UserError(f"target {pattern!r} matches no Linear/Conv1D layer of {type(model).__name__}; "
                                f"layer names look like {next(iter(prunable), '(none)')!r}")
            selected |= hits
    for pattern in ignore:
        hits = _selected_by(pattern, all_names, prunable)
        if not hits and pattern not in DEFAULT_IGNORE and not any(
                compile_pattern(pattern).fullmatch(name) for name in all_names):
            raise UserError(f"ignore entry {pattern!r} matches no module of {type(model).__name__}; "
                            "check the spelling (names look like "
                            f"{next(iter(prunable), '(none)')!r})")
        selected -= hits
    if not selected:
        raise UserError(f"no layer of {type(model).__name__} is left to prune after targets={list(targets)} "
                        f"and ignore={list(ignore)}; widen targets or shorten ignore (`sparse-bench analyze` lists the layers)")
    return {name: module for name, module in prunable.items() if name in selected}


__all__ = ["DEFAULT_IGNORE", "PRUNABLE_TYPES", "compile_pattern", "matches_any", "is_prunable", "weight_matrix",
           "transformer_blocks", "find_target_layers"]

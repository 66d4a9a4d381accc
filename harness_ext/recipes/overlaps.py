"""Recipes that prune the same layers twice (prune 50 %, fine-tune, prune to 70 %) -> each layer pruned once.

The engine gives every layer to exactly one plan step. One-shot has no training between stages, so a later
pruning step on the same layers supersedes an earlier one: the later step keeps those layers, the earlier
step keeps the rest (its `ignore` grows by the later step's targets) or disappears. Overlaps that cannot be
split without knowing the model's layer names are an error naming both lines.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from ..pruning.plan import PruneStep
from ..pruning.targets import DEFAULT_IGNORE
from .modifiers import StepSource
from .yaml_loader import recipe_error

# A target that is a plain module name (a regex without metacharacters but '.' reads as one).
PLAIN_NAME = re.compile(r"(?:re:)?[\w.]+")


def _covered(earlier: PruneStep, later: PruneStep) -> bool:
    """True when every layer the earlier step targets is certainly a target of the later step."""
    if set(later.ignore) - set(earlier.ignore):
        return False
    if not later.targets:
        return True
    if not earlier.targets:
        return False
    later_regexes = [re.compile(t[3:] if t.startswith("re:") else re.escape(t)) for t in later.targets]
    return all(target in later.targets or (PLAIN_NAME.fullmatch(target) is not None and any(
        regex.fullmatch(name) for regex in later_regexes for name in _containers(target.removeprefix("re:"))))
        for target in earlier.targets)


def _containers(name: str) -> list[str]:
    """The name and every module above it: a.b.c -> a, a.b, a.b.c."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts) + 1)]


def _split(path: Path, earlier: PruneStep, source: StepSource, later: PruneStep, later_source: StepSource,
           notes: list[str]) -> PruneStep | None:
    """The earlier step minus the layers the later step takes over (None if nothing is left)."""
    where = f"{source.modifier} (line {source.line})"
    by = f"{later_source.modifier} (line {later_source.line})"
    if _covered(earlier, later):
        if later.sparsity < earlier.sparsity and not later.layer_sparsity and not earlier.layer_sparsity:
            raise recipe_error(path, later_source.line, later_source.modifier,
                               f"asks for sparsity {later.sparsity:g} on layers {where} already prunes to "
                               f"{earlier.sparsity:g}; sparse-bench prunes each layer once, give the final "
                               "sparsity in one step")
        notes.append(f"{where} is superseded by {by} on the same layers: one-shot prunes them once, at "
                     f"{later.sparsity:g}")
        return None
    extra_ignore = [pattern for pattern in later.ignore if pattern not in DEFAULT_IGNORE]
    if later.targets and not set(extra_ignore) - set(earlier.ignore):
        notes.append(f"{where} leaves {', '.join(later.targets)} to {by}: each layer is pruned once")
        return replace(earlier, ignore=tuple(dict.fromkeys((*earlier.ignore, *later.targets))))
    if not later.targets and not earlier.targets:
        notes.append(f"{where} keeps only {', '.join(extra_ignore)}; {by} prunes the other layers")
        return replace(earlier, targets=tuple(extra_ignore))
    raise recipe_error(path, later_source.line, later_source.modifier,
                       f"may prune layers that {where} also prunes, and sparse-bench prunes each layer once; "
                       "give the two steps disjoint targets (or use ignore)")


def prune_each_layer_once(path: Path, steps: list[PruneStep], sources: list[StepSource],
                          notes: list[str]) -> tuple[list[PruneStep], list[StepSource]]:
    """Steps and sources with overlaps resolved in favour of the later step."""
    kept: list[tuple[PruneStep, StepSource]] = []
    for later, later_source in zip(steps, sources):
        remaining = []
        for earlier, source in kept:
            split = _split(path, earlier, source, later, later_source, notes) if _may_overlap(earlier, later) \
                else earlier
            if split is not None:
                remaining.append((split, source))
        kept = remaining + [(later, later_source)]
    return [step for step, _ in kept], [source for _, source in kept]


def _may_overlap(earlier: PruneStep, later: PruneStep) -> bool:
    """False only when both steps name disjoint exact module names (no regex, no 'all layers')."""
    if not earlier.targets or not later.targets:
        return True
    if any(target.startswith("re:") for target in (*earlier.targets, *later.targets)):
        return True
    return any(a == b or a.startswith(b + ".") or b.startswith(a + ".")
               for a in earlier.targets for b in later.targets)


__all__ = ["prune_each_layer_once"]

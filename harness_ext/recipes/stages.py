"""The layout of a recipe: variables, stages, modifier groups, modifiers, for every supported format.

Formats (SparseML's and llm-compressor's own rules for telling them apart):
- SparseML v1: top-level variables and `*modifiers` keys holding lists of `!ModifierName` nodes
  (optionally inside stages: a top-level mapping that has `*modifiers` keys).
- SparseML stage format / llm-compressor: `<name>_stage:` mappings with `run_type` and `<group>_modifiers:`
  mappings of `ModifierName: {fields}` (a list of single-key mappings is accepted too). A recipe without
  stages is one implicit stage.
Any key containing "modifiers" is a modifier group; any other key is a variable (at the top level, global;
inside a stage, for that stage) usable in `eval(...)`. `recipe_args` override variables of the same name and
may define variables the recipe leaves undefined.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .expressions import (
    UNDEFINED_HINT,
    BadExpression,
    UndefinedVariable,
    all_expressions,
    eval_expression,
    evaluate,
    referenced_names,
    resolve_variables,
)
from .yaml_loader import TaggedModifier, YamlList, YamlMap, recipe_error

STAGE_RESERVED = ("run_type",)
V1_FORMAT = "sparseml-v1"
STAGE_FORMAT = "stage"


@dataclass
class ModifierEntry:
    """One modifier as written in the recipe, eval() values already computed."""

    name: str
    args: YamlMap
    line: int
    stage: str | None = None
    run_type: str | None = None
    tagged: bool = False

    @property
    def label(self) -> str:
        where = f" in {self.stage}" if self.stage else ""
        return f"{self.name}{where}"


@dataclass
class RecipeLayout:
    format: str
    entries: list[ModifierEntry] = field(default_factory=list)
    variables: dict[str, Any] = field(default_factory=dict)


def _is_group_key(key: Any) -> bool:
    return isinstance(key, str) and "modifiers" in key


def _holds_modifiers(value: Any) -> bool:
    """True if a value looks like a modifier group (tagged nodes or ModifierName keys)."""
    if isinstance(value, TaggedModifier):
        return True
    if isinstance(value, list):
        return any(isinstance(item, TaggedModifier) or (isinstance(item, dict) and _holds_modifiers(item))
                   for item in value)
    return isinstance(value, dict) and any(isinstance(key, str) and key.endswith("Modifier") for key in value)


def _misnamed_group(path: Path, mapping: YamlMap, key: Any) -> Exception:
    head, _, tail = str(key).rpartition("_")
    suggestion = f"{head}_modifiers" if head and difflib.SequenceMatcher(None, tail, "modifiers").ratio() > 0.6 \
        else f"{key}_modifiers"
    return recipe_error(path, mapping.line_of(key), str(key),
                        "holds modifiers, but only keys containing 'modifiers' are read as modifier groups; "
                        f"did you mean {suggestion!r}?")


def _split(path: Path, mapping: YamlMap, in_stage: bool) -> tuple[dict, dict, dict]:
    """(groups, stages, variables) of a top-level or stage mapping."""
    groups, stages, variables = {}, {}, {}
    for key, value in mapping.items():
        if _is_group_key(key):
            groups[key] = value
        elif _holds_modifiers(value):
            raise _misnamed_group(path, mapping, key)
        elif not in_stage and isinstance(value, dict) and any(_is_group_key(inner) for inner in value):
            stages[key] = value
        elif not in_stage and isinstance(value, YamlMap) and any(_holds_modifiers(v) for v in value.values()):
            inner = next(k for k, v in value.items() if _holds_modifiers(v))
            raise _misnamed_group(path, value, inner)
        elif not (in_stage and key in STAGE_RESERVED):
            variables[key] = value
    return groups, stages, variables


def _group_entries(path: Path, group_name: str, value: Any, holder: YamlMap) -> list[ModifierEntry]:
    where = str(group_name)
    if value is None:
        return []
    if isinstance(value, TaggedModifier):
        return [ModifierEntry(value.name, value.args, value.line, tagged=True)]
    if isinstance(value, YamlMap):
        return [_dict_entry(path, where, value, name) for name in value]
    if isinstance(value, YamlList):
        entries = []
        for item, line in zip(value, value.item_lines):
            if isinstance(item, TaggedModifier):
                entries.append(ModifierEntry(item.name, item.args, item.line, tagged=True))
            elif isinstance(item, YamlMap) and len(item) == 1:
                entries.append(_dict_entry(path, where, item, next(iter(item))))
            else:
                raise recipe_error(path, line, where, "each item must be a '!ModifierName' node with its fields "
                                   "or a single 'ModifierName: {fields}' mapping")
        return entries
    raise recipe_error(path, holder.line_of(group_name), where,
                       "expected a list of !Modifier nodes or a mapping of ModifierName: {fields}")


def _dict_entry(path: Path, where: str, group: YamlMap, name: Any) -> ModifierEntry:
    args = group[name]
    if args is None:
        args = YamlMap()
        args.line = group.line_of(name)
    if not isinstance(args, YamlMap):
        raise recipe_error(path, group.line_of(name), f"{where}.{name}",
                           f"expected the modifier's fields as a mapping, got {type(args).__name__} {args!r}")
    return ModifierEntry(str(name), args, group.line_of(name))


def _substitute(path: Path, value: Any, line: int, where: str, variables: Mapping[str, Any]) -> Any:
    """A field value with every eval(...) replaced by its result (containers updated in place)."""
    if isinstance(value, YamlMap):
        for key in value:
            value[key] = _substitute(path, value[key], value.line_of(key), f"{where}.{key}", variables)
        return value
    if isinstance(value, YamlList):
        for index, (item, item_line) in enumerate(zip(value, value.item_lines)):
            value[index] = _substitute(path, item, item_line, where, variables)
        return value
    expression = eval_expression(value)
    if expression is None:
        return value
    try:
        return evaluate(expression, variables)
    except UndefinedVariable as missing:
        raise recipe_error(path, line, where, f"eval({expression.strip()}) uses undefined variable "
                           f"{missing.name!r}; {UNDEFINED_HINT}") from None
    except BadExpression as error:
        raise recipe_error(path, line, where, f"eval({expression.strip()}): {error}") from None


def _variables(path: Path, holder: YamlMap, definitions: dict, outer: Mapping[str, Any],
               overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = {name: overrides.get(name, value) for name, value in definitions.items()}

    def error(name: str, message: str) -> Exception:
        return recipe_error(path, holder.line_of(name), str(name), message)

    return resolve_variables(merged, {**outer, **overrides}, error)


def read_layout(path: Path, document: Any, recipe_args: Mapping[str, Any] | None = None) -> RecipeLayout:
    """Every modifier of a parsed recipe, in file order, with stage names, run types and eval() computed."""
    if document is None or (isinstance(document, dict) and not document):
        raise recipe_error(path, None, None, "empty recipe: expected modifiers (`modifiers:` with !Modifier "
                           "entries, or `<name>_stage:` with `<group>_modifiers:`)")
    if not isinstance(document, YamlMap):
        raise recipe_error(path, 1, None, "expected a mapping of variables, stages and *_modifiers groups at the "
                           f"top level, got {type(document).__name__}")
    overrides = dict(recipe_args or {})
    groups, stages, definitions = _split(path, document, in_stage=False)
    global_variables = _variables(path, document, definitions, {}, overrides)
    defined = set(definitions)
    blocks = [(None, document, groups, global_variables)]
    for stage_name, stage in stages.items():
        stage_groups, _, stage_definitions = _split(path, stage, in_stage=True)
        defined |= set(stage_definitions)
        blocks.append((stage_name, stage, stage_groups,
                       _variables(path, stage, stage_definitions, global_variables, overrides)))
    _check_recipe_args(path, overrides, defined, document)
    entries = []
    for stage_name, holder, stage_groups, variables in blocks:
        run_type = holder.get("run_type") if stage_name is not None else None
        for group_name, value in stage_groups.items():
            for entry in _group_entries(path, group_name, value, holder):
                entry.stage, entry.run_type = stage_name, run_type
                _substitute(path, entry.args, entry.line, entry.name, variables)
                entries.append(entry)
    if not entries:
        raise recipe_error(path, None, None, "empty recipe: no modifiers found (expected `modifiers:` with "
                           "!Modifier entries, or `<name>_stage:` with `<group>_modifiers:`)")
    layout_format = V1_FORMAT if any(entry.tagged for entry in entries) else STAGE_FORMAT
    return RecipeLayout(layout_format, entries, global_variables)


def _check_recipe_args(path: Path, overrides: Mapping[str, Any], defined: set, document: YamlMap) -> None:
    used = {name for expression in all_expressions(document) for name in referenced_names(expression)}
    for name in overrides:
        if name not in defined and name not in used:
            raise recipe_error(path, None, "recipe_args", f"{name!r} is neither a variable of the recipe nor "
                               "used by any eval(...); known variables: " + (", ".join(sorted(map(str, defined)))
                                                                            or "none"))


__all__ = ["ModifierEntry", "RecipeLayout", "read_layout", "V1_FORMAT", "STAGE_FORMAT"]

"""One recipe modifier -> one PruneStep (or a note), with one-shot semantics and errors that name the line.

Rules (also in docs/recipes.md):
- sparsity: `sparsity` (one-shot modifiers), `final_sparsity` (gradual ones; `init_sparsity` and the
  schedule are reported, the final value is applied at once), `compression_sparsity` (AC/DC). A per-layer
  list pairs with explicitly named targets; SparseML's `{sparsity: [params]}` form gives per-layer values.
- structure: `mask_structure` / `mask_type`: "unstructured", "0:0", "N:M" (quoted or not), "tensorrt" (2:4).
  Block and channel masks ([1, 4], block4, channel, filter) are refused: the engine cannot prune that way.
- targets: `targets` / `params`: names or `re:` regexes of modules or of `.weight` parameters (the suffix is
  dropped; a match on a block selects its layers); `__ALL__`, `__ALL_PRUNABLE__`, `Linear`, `Conv1D` or a
  block class name mean every Linear/Conv1D layer in the transformer blocks. `ignore` adds to `lm_head`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..pruning.methods import get_method
from ..pruning.plan import (
    DEFAULT_IGNORE,
    NMStructure,
    OwlConfig,
    PruneStep,
    compile_pattern,
    parse_structure,
    validate_sparsity,
)
from ..typed_values import WrongValue, check_flag, check_number
from .fields import MODIFIERS, ModifierSpec, close_match, modifier_spec
from .stages import ModifierEntry
from .yaml_loader import YamlMap, recipe_error

ALL_LAYERS = ("__ALL__", "__ALL_PRUNABLE__")
PRUNABLE_CLASSES = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d")
BLOCK_CLASS_SUFFIXES = ("DecoderLayer", "EncoderLayer", "Layer", "Block")
CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
SPARSITY_FIELDS = ("sparsity", "final_sparsity", "compression_sparsity")
FIELD_EXPLANATIONS = {
    "sequential_update": "the engine is always layer-sequential",
    "preserve_sparsity_mask": "weights already zero are not forced to stay zero",
    "quantize": "quantization is not applied",
    "sequential_targets": "the engine walks the transformer blocks it finds",
}


@dataclass(frozen=True)
class StepSource:
    """Where a plan step came from: the modifier, its line, and each target / ignore pattern with its line."""

    modifier: str
    line: int
    targets: tuple[tuple[str, int], ...] = ()
    ignore: tuple[tuple[str, int], ...] = ()


@dataclass
class MappedModifier:
    """What one modifier contributes: a step (or None), notes, and where its targets came from."""

    step: PruneStep | None = None
    notes: list[str] = field(default_factory=list)
    holds_masks: bool = False
    target_lines: list[tuple[str, int]] = field(default_factory=list)
    ignore_lines: list[tuple[str, int]] = field(default_factory=list)


class _Fields:
    """Typed access to one modifier's fields; every error names file, line and `Modifier.field`."""

    def __init__(self, path: Path, entry: ModifierEntry) -> None:
        self.path, self.entry, self.args = path, entry, entry.args

    def line(self, name: str) -> int:
        return self.args.line_of(name) if name in self.args else self.entry.line

    def error(self, name: str | None, message: str) -> UserError:
        where = f"{self.entry.name}.{name}" if name else self.entry.name
        return recipe_error(self.path, self.line(name) if name else self.entry.line, where, message)

    def one_of(self, *names: str) -> str | None:
        present = [name for name in names if name in self.args]
        if len(present) > 1:
            raise self.error(max(present, key=self.line), f"give only one of {' / '.join(present)}")
        return present[0] if present else None

    def number(self, name: str, kind: type = float) -> Any:
        try:
            return check_number(self.args[name], integer=kind is int)
        except WrongValue as problem:
            raise self.error(name, f"expected {problem}") from None

    def sparsity(self, name: str, value: Any = None) -> float:
        value = self.args[name] if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"expected a sparsity (fraction of weights set to zero, e.g. 0.5), "
                                   f"got {type(value).__name__} {value!r}")
        try:
            return validate_sparsity(value)
        except UserError as error:
            raise self.error(name, str(error)) from None

    def flag(self, name: str, default: bool) -> bool:
        try:
            return check_flag(self.args.get(name, default))
        except WrongValue as problem:
            raise self.error(name, f"expected {problem}") from None

    def strings(self, name: str) -> list[tuple[str, int]]:
        """A name-or-list field as (stripped string, line) pairs."""
        value = self.args[name]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
            raise self.error(name, f"expected a name, a 're:' regex or a list of them, got {value!r}")
        lines = getattr(items, "item_lines", None) or [self.line(name)] * len(items)
        return [(item.strip(), line) for item, line in zip(items, lines)]


def _check_fields(fields: _Fields, spec: ModifierSpec) -> None:
    for name in fields.args:
        if name not in spec.known_fields:
            raise fields.error(str(name), "unknown field" + close_match(name, spec.known_fields)
                               + f"; {spec.name} fields: {', '.join(sorted(spec.known_fields))}")


def parse_mask(fields: _Fields, name: str | None) -> NMStructure | None:
    """mask_structure / mask_type -> None (unstructured) or NMStructure; refuses what the engine cannot do."""
    if name is None:
        return None
    value = fields.args[name]
    if isinstance(value, list):
        if value in ([1, 1], [1, 1.0]):
            return None
        raise fields.error(name, f"block mask {value} (blocks of weights pruned together) is not supported: the "
                                 "engine prunes single weights or N:M groups; use 'unstructured' or \"2:4\"")
    if not isinstance(value, str):
        raise fields.error(name, f"expected 'unstructured' or a quoted N:M such as \"2:4\", got {value!r}")
    text = value.strip().lower()
    if text == "tensorrt":
        return NMStructure(2, 4)
    if text.startswith("block") or text in ("channel", "filter"):
        raise fields.error(name, f"{value!r} masks (whole blocks, channels or filters) are not supported: the "
                                 "engine prunes single weights or N:M groups; use 'unstructured' or \"2:4\"")
    try:
        return parse_structure(text)
    except UserError as error:
        raise fields.error(name, str(error)) from None


def _module_pattern(fields: _Fields, name: str, item: str) -> str:
    """A params/targets entry as a module-name pattern (drops `.weight`, a regex's trailing `$`)."""
    expression = item[3:] if item.startswith("re:") else item
    if expression.endswith("$"):
        expression = expression[:-1]
    if re.search(r"(\\?\.|_)bias$", expression):
        raise fields.error(name, f"{item!r} names biases; only weights are pruned")
    expression = re.sub(r"(\\?\.|(?<=\.\*))weight$", "", expression)
    pattern = ("re:" + expression) if item.startswith("re:") else expression
    try:
        compile_pattern(pattern)
    except UserError as error:
        raise fields.error(name, str(error)) from None
    return pattern


def _is_everything(item: str) -> bool:
    """`__ALL__`, `Linear`, a block class name, or a regex for every weight (`re:.*`, `re:.*weight`)."""
    return item in ALL_LAYERS or item in PRUNABLE_CLASSES or item in ("re:.*", "re:.*weight", r"re:.*\.weight") or (
        CLASS_NAME.fullmatch(item) is not None and item.endswith(BLOCK_CLASS_SUFFIXES))


def plan_targets(fields: _Fields, name: str, notes: list[str]) -> dict[str, int]:
    """{target pattern: line} for the plan; empty means every prunable layer in the transformer blocks."""
    items = fields.strings(name)
    everything = [item for item, _ in items if _is_everything(item)]
    if everything:
        notes.append(f"{fields.entry.name}.{name} {everything[0]}: every Linear/Conv1D layer in the transformer "
                     "blocks (embeddings and lm_head are not pruned)")
        return {}
    patterns: dict[str, int] = {}
    for item, line in items:
        if CLASS_NAME.fullmatch(item):
            raise fields.error(name, f"class name {item!r} is not a layer type sparse-bench prunes (Linear, "
                                     "Conv1D) nor a transformer block class; name modules or use a 're:' regex")
        patterns.setdefault(_module_pattern(fields, name, item), line)
    return patterns


def plan_ignore(fields: _Fields, notes: list[str]) -> dict[str, int]:
    """{ignore pattern: line}, always starting with DEFAULT_IGNORE (lm_head)."""
    patterns = {pattern: fields.entry.line for pattern in DEFAULT_IGNORE}
    if "ignore" not in fields.args:
        return patterns
    for item, line in fields.strings("ignore"):
        if item in PRUNABLE_CLASSES or item in ALL_LAYERS:
            raise fields.error("ignore", f"ignoring {item!r} leaves nothing to prune")
        if CLASS_NAME.fullmatch(item):
            notes.append(f"{fields.entry.name}.ignore {item}: not a Linear/Conv1D layer type, nothing to skip")
            continue
        patterns.setdefault(_module_pattern(fields, "ignore", item), line)
    return patterns


def _descendants(pattern: str) -> str:
    """A pattern that matches a module and everything under it (for per-layer sparsity pairs)."""
    expression = pattern[3:] if pattern.startswith("re:") else re.escape(pattern)
    return f"re:(?:{expression})(?:\\..+)?"


def _per_layer(fields: _Fields, name: str, values: list[float], targets: tuple[str, ...],
               notes: list[str]) -> tuple[float, tuple[tuple[str, float], ...]]:
    """(step sparsity, per-layer pairs) for a list of sparsities, one per explicitly named target."""
    if len(set(values)) == 1:
        return values[0], ()
    if not targets or any(target.startswith("re:") for target in targets) or len(targets) != len(values):
        raise fields.error(name, f"a per-layer list of {len(values)} sparsities needs exactly one explicitly "
                                 f"named target per value (targets: {list(targets) or 'all layers'}); name the "
                                 "layers in targets, or give one sparsity")
    notes.append(f"{fields.entry.name}.{name}: per-layer sparsities "
                 + ", ".join(f"{target}={value:g}" for target, value in zip(targets, values)))
    return max(values), tuple((_descendants(target), value) for target, value in zip(targets, values))


def _by_sparsity(fields: _Fields, name: str, notes: list[str]):
    """SparseML's `final_sparsity: {0.8: [params], 0.9: [params]}` -> (sparsity, pairs, targets)."""
    groups: YamlMap = fields.args[name]
    pairs = []
    for value, params in groups.items():
        sparsity = fields.sparsity(name, value)
        items = [params] if isinstance(params, str) else params
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise fields.error(name, f"expected {value}: [parameter names], got {params!r}")
        pairs += [(_module_pattern(fields, name, item.strip()), sparsity) for item in items]
    if not pairs:
        raise fields.error(name, "no layers listed")
    notes.append(f"{fields.entry.name}.{name}: per-layer sparsities "
                 + ", ".join(f"{pattern}={value:g}" for pattern, value in pairs))
    targets = tuple(dict.fromkeys(pattern for pattern, _ in pairs))
    return max(value for _, value in pairs), tuple((_descendants(p), v) for p, v in pairs), targets


def _sparsity(fields: _Fields, spec: ModifierSpec, structure: NMStructure | None, targets: tuple[str, ...],
              notes: list[str]):
    """(sparsity, layer_sparsity, targets) from the modifier's sparsity field(s) and structure."""
    name = fields.one_of(*(candidate for candidate in SPARSITY_FIELDS if candidate in spec.used))
    pairs: tuple[tuple[str, float], ...] = ()
    if name is None:
        if structure is None:
            raise fields.error(None, f"no sparsity given: add {next(f for f in SPARSITY_FIELDS if f in spec.used)}"
                                     " (e.g. 0.5) or a mask_structure such as \"2:4\"")
        sparsity = structure.sparsity
    elif isinstance(fields.args[name], list) and name == "sparsity":
        sparsity, pairs = _per_layer(fields, name, [fields.sparsity(name, v) for v in fields.args[name]],
                                     targets, notes)
    elif isinstance(fields.args[name], dict) and name == "final_sparsity":
        sparsity, pairs, targets = _by_sparsity(fields, name, notes)
    else:
        sparsity = fields.sparsity(name)
    if structure is not None and name is not None and abs(sparsity - structure.sparsity) > 1e-9:
        raise fields.error(name, f"sparsity {sparsity:g} contradicts mask {structure} (which fixes sparsity at "
                                 f"{structure.sparsity:g}); use {structure.sparsity:g} or drop the mask")
    if sparsity == 0 and not any(value > 0 for _, value in pairs):
        raise fields.error(name, "sparsity 0 prunes nothing; give the fraction of weights to remove, e.g. 0.5")
    if "init_sparsity" in fields.args and name == "final_sparsity" and not pairs:
        start = fields.args["init_sparsity"]
        if start != "auto":
            start = fields.sparsity("init_sparsity")
            if start == sparsity:
                return sparsity, pairs, targets
        start = f"{start:g}" if isinstance(start, float) else str(start)
        notes.append(f"{fields.entry.name}: gradual schedule {start}->{sparsity:g} applied one-shot at final "
                     f"sparsity {sparsity:g}")
    return sparsity, pairs, targets


def _owl(fields: _Fields, notes: list[str], per_layer: bool) -> OwlConfig | None:
    profile = fields.args.get("sparsity_profile")
    if profile is None:
        for name in ("owl_m", "owl_lmbda"):
            if name in fields.args:
                raise fields.error(name, "only used with sparsity_profile: owl")
        return None
    if not isinstance(profile, str) or profile.lower() != "owl":
        raise fields.error("sparsity_profile", f"unknown profile {profile!r}; the only profile is 'owl'")
    if per_layer:
        raise fields.error("sparsity_profile", "OWL computes the per-layer sparsities itself; give one sparsity")
    defaults = OwlConfig()
    owl = OwlConfig(m=fields.number("owl_m") if "owl_m" in fields.args else defaults.m,
                    lmbda=fields.number("owl_lmbda") if "owl_lmbda" in fields.args else defaults.lmbda)
    notes.append(f"{fields.entry.name}: OWL layer-wise sparsity (M={owl.m:g}, lambda={owl.lmbda:g}) around the "
                 "mean sparsity, decided from calibration data")
    return owl


def _scope(fields: _Fields, spec: ModifierSpec, method: str, structured: bool, notes: list[str]) -> str:
    name = fields.one_of("global_sparsity", "apply_globally")
    if not (fields.flag(name, spec.global_by_default) if name else spec.global_by_default):
        return "layer"
    if "global" in get_method(method).scopes and not structured:
        notes.append(f"{fields.entry.name}: global sparsity: one magnitude threshold across all targeted layers")
        return "global"
    notes.append(f"{fields.entry.name}: global ranking across layers is not available for {method}"
                 f"{' with N:M' if structured else ''}; each layer is pruned to the sparsity (scope=layer)")
    return "layer"


def _method_options(fields: _Fields, method: str) -> dict[str, Any]:
    """The method's options from the recipe fields its registry row maps (e.g. SparseGPT's percdamp)."""
    row = get_method(method)
    kinds = {field.name: field.type for field in dataclasses.fields(row.options)}
    options: dict[str, Any] = {}
    for option in dict.fromkeys(row.recipe_fields.values()):
        name = fields.one_of(*(recipe for recipe, target in row.recipe_fields.items() if target == option))
        if name:
            options[option] = fields.number(name, int if kinds[option] in ("int", int) else float)
    return options


def _ignored_fields_note(fields: _Fields, spec: ModifierSpec) -> str | None:
    present = [name for name in fields.args if name in spec.ignored]
    if not present:
        return None
    described = [f"{name} ({FIELD_EXPLANATIONS[name]})" if name in FIELD_EXPLANATIONS else name
                 for name in present]
    return f"{fields.entry.name} (line {fields.entry.line}): ignored for one-shot pruning: {', '.join(described)}"


def _prune_step(fields: _Fields, spec: ModifierSpec, mapped: MappedModifier) -> PruneStep:
    notes = mapped.notes
    if fields.args.get("score_type", "magnitude") != "magnitude":
        raise fields.error("score_type", f"{fields.args['score_type']!r} scores need training; only 'magnitude' "
                                         "has a one-shot equivalent")
    notes.append(f"{fields.entry.label} (line {fields.entry.line}) -> {spec.method}: {spec.reason}")
    structure = parse_mask(fields, fields.one_of("mask_structure", "mask_type"))
    target_field = fields.one_of("targets", "params")
    layers_by_sparsity = isinstance(fields.args.get("final_sparsity"), dict)
    if target_field is None and "params" in spec.used and not layers_by_sparsity:
        raise fields.error(None, "no params/targets given: list the layers to prune, or write "
                                 "__ALL_PRUNABLE__ for every prunable layer")
    target_lines = plan_targets(fields, target_field, notes) if target_field else {}
    sparsity, pairs, targets = _sparsity(fields, spec, structure, tuple(target_lines), notes)
    mapped.target_lines = [(target, target_lines.get(target, fields.line("final_sparsity"))) for target in targets]
    owl = _owl(fields, notes, per_layer=bool(pairs))
    if structure is not None and (owl or pairs):
        raise fields.error("mask_structure" if "mask_structure" in fields.args else "mask_type",
                           f"N:M {structure} fixes every layer's sparsity at {structure.sparsity:g}; it cannot be "
                           "combined with per-layer sparsities or OWL")
    scope = _scope(fields, spec, spec.method, structure is not None, notes)
    if scope == "global" and pairs:
        raise fields.error(None, "global sparsity and per-layer sparsities contradict each other; choose one")
    options = _method_options(fields, spec.method)
    ignore = plan_ignore(fields, notes)
    mapped.ignore_lines = [(pattern, line) for pattern, line in ignore.items() if pattern not in DEFAULT_IGNORE]
    try:
        return PruneStep(method=spec.method, sparsity=sparsity, structure=structure, scope=scope, targets=targets,
                         ignore=tuple(ignore), layer_sparsity=pairs, owl=owl, options=options)
    except UserError as error:
        raise fields.error(None, str(error)) from None


def map_modifier(path: Path, entry: ModifierEntry) -> MappedModifier:
    """What one modifier contributes to the plan; raises UserError naming file, line and field."""
    spec = modifier_spec(entry.name)
    fields = _Fields(path, entry)
    if spec is None:
        raise fields.error(None, "unknown modifier" + close_match(entry.name, MODIFIERS)
                           + "; docs/recipes.md lists the supported ones")
    if spec.kind == "reject":
        raise fields.error(None, f"not supported: {spec.reason}")
    where = f"{entry.label} (line {entry.line})"
    if spec.kind == "ignore":
        return MappedModifier(notes=[f"ignored: {where}: {spec.reason}"])
    _check_fields(fields, spec)
    if spec.kind == "hold":
        fields.one_of("targets", "params")
        return MappedModifier(notes=[f"{where} {spec.reason}: it prunes nothing new"], holds_masks=True)
    mapped = MappedModifier()
    if entry.run_type not in (None, "oneshot"):
        mapped.notes.append(f"{where}: stage run_type {entry.run_type}: no training is run, its pruning is "
                            "applied one-shot")
    mapped.step = _prune_step(fields, spec, mapped)
    ignored = _ignored_fields_note(fields, spec)
    if ignored:
        mapped.notes.append(ignored)
    return mapped


__all__ = ["StepSource", "MappedModifier", "map_modifier", "parse_mask", "plan_targets", "plan_ignore", "ALL_LAYERS"]

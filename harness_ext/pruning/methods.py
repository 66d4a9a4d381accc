"""The registry of pruning methods and weight updates: one row each, read by every part of the tool.

A row says what a method is called, which calibration statistic it needs, the pure function that prunes, its
options (a dataclass that validates itself) and a one-line description. The plan (`PruneStep`), the engine's
dispatch, the recipe modifier mapping, the `prune` CLI choices and flags, `sparse-hf` model_args, grid specs
and the docs table all read these rows; no method name appears anywhere else.

A method's function is `prune(weight, statistics, target, options) -> PruneResult` (method_types.py).
An update runs on the method's mask: `update(weight, statistics, keep, target, options) -> PruneResult`; it
refits the kept weights (`update=admm`) or refines the mask itself (`update=dsnot`, only after methods that keep
the dense weights).

Adding a method: write its file (function + options dataclass), add one `Method(...)` row to `_rows()` below,
paste the table it prints (python -m sparse_bench.harness_ext.pruning.methods) into docs/pruning.md. Nothing
else changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import UserError
from . import admm, dsnot, magnitude, ria, sparsegpt, wanda
from .method_types import HESSIAN, NONE, NORMS, STATISTIC_ORDER, NoOptions, Options, PruneResult
from .values import NMStructure, parse_flag


@dataclass(frozen=True)
class Row:
    """What every registry row has: its name, the statistic it needs (NONE, NORMS or HESSIAN), its pure
    function, its options dataclass and a one-line description."""

    name: str
    statistic: str
    function: Callable[..., PruneResult]
    options: type[Options]
    description: str


@dataclass(frozen=True)
class Method(Row):
    """One method row. `comparison`: "row" (each output row loses its
    share) or "layer" (one ranking per layer), which fixes the exact number of zeros. `scopes`: "global" where
    one threshold across layers makes sense. `takes_update`: False where an update would redo the method's own
    weight fit. `block`: the method can rank R x C tiles (structure=block:RxC). `recipe_modifiers`: the SparseML /
    llm-compressor modifier classes it runs (recipes/fields.py lists their fields); `recipe_fields`: recipe field ->
    option name. `sets_weights`: the method returns new weights (a mask refinement cannot follow it: the weights
    were fitted to the method's own mask)."""

    comparison: str = "layer"
    scopes: tuple[str, ...] = ("layer",)
    takes_update: bool = True
    sets_weights: bool = False
    block: bool = False
    recipe_modifiers: tuple[str, ...] = ()
    recipe_fields: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Update(Row):
    """One update row, run on a method's mask: `changes` "weights" (refits the kept weights) or "mask"
    (swaps kept and pruned weights, keeping every row's and N:M group's count)."""

    changes: str = "weights"


def _rows() -> tuple[tuple[Method, ...], tuple[Update, ...]]:
    methods = (
        Method("magnitude", NONE, magnitude.magnitude_prune, NoOptions,
               "|W|; one threshold per layer, or across all layers with scope=global", scopes=("layer", "global"),
               block=True, recipe_modifiers=("MagnitudePruningModifier", "GMPruningModifier", "GlobalMagnitudePruningModifier",
                                 "ACDCPruningModifier")),
        Method("wanda", NORMS, wanda.wanda_prune, NoOptions,
               "|W| x ||X_j||, each output row loses its share (Sun et al. 2023)", comparison="row", block=True,
               recipe_modifiers=("WandaPruningModifier",)),
        Method("sparsegpt", HESSIAN, sparsegpt.sparsegpt_method, sparsegpt.SparseGPTOptions,
               "OBS column sweep: w^2 / [H^-1]_jj pruned, error spread over later columns (Frantar & Alistarh 2023)",
               sets_weights=True, block=True,
               recipe_modifiers=("SparseGPTModifier", "OBSPruningModifier", "MFACPruningModifier"),
               recipe_fields={"block_size": "block_size", "dampening_frac": "dampening", "percdamp": "dampening"}),
        Method("ria", NORMS, ria.ria_prune, ria.RiaOptions,
               "(|W|/row sum + |W|/column sum) x ||X_j||^a; N:M channel reallocation (Zhang et al. 2024)",
               block=True),
        Method("admm", HESSIAN, admm.admm_gradual_prune, admm.AdmmGradualOptions,
               "ADMM reconstruction choosing the mask gradually (cubic schedule) from its own iterates (Boza 2024)",
               takes_update=False, sets_weights=True),
    )
    updates = (
        Update("admm", HESSIAN, admm.admm_update, admm.AdmmOptions,
               "refit the kept weights to min ||XW - X(M*W)||^2 by ADMM, any method's mask (Boza 2024)"),
        Update("dsnot", NORMS, dsnot.dsnot_refine, dsnot.DsnotOptions,
               "swap pruned/kept weights per row to cancel the expected output error sum W_j E[x_j], "
               "magnitude/Wanda/RIA masks (Zhang et al. 2024)", changes="mask"),
    )
    return methods, updates


_REGISTRY: dict[str, dict[str, Any]] = {}


def _registry() -> dict[str, dict[str, Any]]:
    if not _REGISTRY:
        methods, updates = _rows()
        _REGISTRY["methods"] = {row.name: row for row in methods}
        _REGISTRY["updates"] = {row.name: row for row in updates}
    return _REGISTRY


def method_names() -> tuple[str, ...]:
    return tuple(_registry()["methods"])


def update_names() -> tuple[str, ...]:
    return tuple(_registry()["updates"])


def get_method(name: str) -> Method:
    """The registry row of `name`; UserError listing the registered names otherwise."""
    row = _registry()["methods"].get(name)
    if row is None:
        raise UserError(f"unknown pruning method {name!r}; use one of: {', '.join(method_names())}")
    return row


def get_update(name: str) -> Update:
    row = _registry()["updates"].get(name)
    if row is None:
        raise UserError(f"unknown weight update {name!r}; use one of: {', '.join(update_names())}")
    return row


def method_for_modifier(modifier: str) -> str:
    """The registered method that runs a recipe modifier class (recipes/fields.py)."""
    return next(row.name for row in _registry()["methods"].values() if modifier in row.recipe_modifiers)


def recipe_method_names() -> tuple[str, ...]:
    """Methods a peer recipe format has a modifier for (`recipe new` can write them)."""
    return tuple(row.name for row in _registry()["methods"].values() if row.recipe_modifiers)


def statistic_needed(method: str, update: str | None) -> str:
    """The richest statistic the method and its update need (NONE < NORMS < HESSIAN)."""
    needed = [get_method(method).statistic] + ([get_update(update).statistic] if update else [])
    return max(needed, key=STATISTIC_ORDER.index)


def option_fields() -> dict[str, tuple[dataclasses.Field, str]]:
    """Every option name of every method and update -> (its dataclass field, "method=X or update=Y": the
    rows that take it)."""
    fields: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    rows = [(f"method={row.name}", row.options) for row in _registry()["methods"].values()]
    rows += [(f"update={row.name}", row.options) for row in _registry()["updates"].values()]
    for owner, options in rows:
        for field in dataclasses.fields(options):
            fields.setdefault(field.name, (field, []))[1].append(owner)
    return {name: (field, " or ".join(owners)) for name, (field, owners) in fields.items()}


def _coerce(name: str, field: dataclasses.Field, value: Any) -> Any:
    """A value given as text (model_args, CLI) or YAML as the field's type; UserError if it is not one."""
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    if kind == "bool":
        return parse_flag(name, value)
    try:
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}; "
                        f"e.g. {name}={field.default}") from None
    return value


def build_options(row: Method | Update, given: Mapping[str, Any], structure: NMStructure | None) -> Options:
    """The row's options dataclass from the given values (defaults for the rest), checked."""
    names = {field.name: field for field in dataclasses.fields(row.options)}
    options = row.options(**{key: _coerce(key, names[key], value) for key, value in given.items() if key in names})
    options.check(structure)
    return options


def resolve_options(method: str, update: str | None, given: Mapping[str, Any],
                    structure: NMStructure | None) -> tuple[Options, Options | None]:
    """(method options, update options) from one flat mapping of option names; UserError for an unknown name
    or an option that belongs to another method or update."""
    method_row = get_method(method)
    update_row = get_update(update) if update else None
    accepted = {field.name for field in dataclasses.fields(method_row.options)}
    if update_row is not None:
        accepted |= {field.name for field in dataclasses.fields(update_row.options)}
    known = option_fields()
    for name in given:
        if name not in known:
            raise UserError(f"unknown pruning option {name!r}; options are: {', '.join(sorted(known))}")
        if name not in accepted:
            applies = "" if not accepted else f" (method={method}{f', update={update}' if update else ''} " \
                                               f"takes: {', '.join(sorted(accepted))})"
            raise UserError(f"option {name} applies to {known[name][1]}, not to method={method}"
                            f"{f' with update={update}' if update else ''}{applies}; remove it")
    return (build_options(method_row, given, structure),
            build_options(update_row, given, structure) if update_row else None)


def described_options(options: Options | None) -> dict[str, Any]:
    return {} if options is None else dataclasses.asdict(options)


def table_rows() -> list[dict[str, str]]:
    """One row per method and update, for docs and `--help`: name, statistic, options, description."""
    rows = []
    for kind, table in (("method", _registry()["methods"]), ("update", _registry()["updates"])):
        for row in table.values():
            options = ", ".join(f"{field.name}={field.default}" for field in dataclasses.fields(row.options))
            rows.append({"argument": f"{kind}={row.name}", "needs": row.statistic, "options": options or "-",
                         "what it does": row.description})
    return rows


def markdown_table() -> str:
    """The registry as the Markdown table docs/pruning.md shows (`python -m ...pruning.methods` prints it)."""
    rows = table_rows()
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(f"`{value}`" if key == "argument" else value.replace("|", "\\|")
                                for key, value in row.items()) + " |" for row in rows]
    return "\n".join(lines)


def split_grid_name(text: str) -> tuple[str, str | None]:
    """A grid method name `METHOD` or `METHOD+UPDATE` -> (method, update); UserError for unknown names."""
    method, _, update = str(text).partition("+")
    get_method(method)
    if update:
        get_update(update)
    return method, update or None


__all__ = ["Method", "Update", "method_names", "update_names", "get_method", "get_update", "method_for_modifier",
           "recipe_method_names", "statistic_needed", "option_fields", "build_options", "resolve_options",
           "described_options", "table_rows", "markdown_table", "split_grid_name"]


if __name__ == "__main__":
    print(markdown_table())

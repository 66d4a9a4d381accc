"""The one table of pruning options: every way in (model_args, `sparse-bench prune` flags, grid spec fields,
recipe fields) reads it, so an option has one name and one meaning everywhere.

A row names the option (the model_args key and grid-spec key; the CLI flag is `--name` with dashes, or
`cli_flag`), its kind (how text or YAML becomes a value), its group and the recipe field that expresses it:
- "plan" options describe the pruning itself; a recipe defines them, so with `recipe` they are an error;
- "calibration" options say which data the methods see; they combine with a recipe;
- "recipe" is the recipe file.
The method and update options come from the registry's options dataclasses (methods.py), one row each.
`python -m sparse_bench.harness_ext.pruning.options` prints the Markdown table of docs/pruning.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UserError
from .methods import get_method, method_names, option_fields, update_names
from .plan import SCOPES, CalibrationConfig, OwlConfig
from .values import parse_flag, parse_integer

PLAN, CALIBRATION, RECIPE = "plan", "calibration", "recipe"
LIST_SEPARATOR = ";"  # model_args text cannot hold a comma (lm-eval splits model_args on ",")


@dataclass(frozen=True)
class PruneOption:
    """One option. `kind`: text, number, integer, flag or patterns (a list of names / `re:` regexes); `choices`:
    the CLI's choices (the plan checks the value itself, with the registry's message); `recipe_fields`: the
    recipe fields that say the same thing (empty if recipes cannot say it)."""

    name: str
    kind: str
    group: str
    default: Any
    help: str
    recipe_fields: tuple[str, ...] = ()
    cli_flag: str = ""
    choices: Callable[[], tuple[str, ...]] | None = None
    example: Any = None  # a valid value, for docs and tests

    @property
    def flag(self) -> str:
        return self.cli_flag or "--" + self.name.replace("_", "-")


def _method_option_rows() -> tuple[PruneOption, ...]:
    kinds = {"int": "integer", "float": "number", "bool": "flag"}
    recipe_fields: dict[str, list[str]] = {}
    for method in method_names():
        for recipe_name, option in get_method(method).recipe_fields.items():
            recipe_fields.setdefault(option, []).append(recipe_name)
    rows = []
    for name, (field, owners) in option_fields().items():
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        rows.append(PruneOption(name, kinds.get(kind, "text"), PLAN, field.default, f"{owners} option",
                                recipe_fields=tuple(recipe_fields.get(name, ())), example=field.default))
    return tuple(rows)


_CALIBRATION = CalibrationConfig()
OPTIONS: tuple[PruneOption, ...] = (
    PruneOption("method", "text", PLAN, None, "pruning method (docs/pruning.md lists them; in a recipe: the "
                "modifier class)", choices=method_names, example="wanda"),
    PruneOption("update", "text", PLAN, None, "update run on the method's mask (refit weights or refine the mask)", choices=update_names,
                example="admm"),
    PruneOption("sparsity", "number", PLAN, None, "fraction of weights set to zero per layer, in [0, 1)",
                recipe_fields=("sparsity", "final_sparsity"), example=0.5),
    PruneOption("structure", "text", PLAN, "unstructured", "unstructured, N:M (keep N of every M), e.g. 2:4, or "
                "block:RxC (whole R x C tiles), e.g. block:1x4",
                recipe_fields=("mask_structure", "mask_type"), example="2:4"),
    PruneOption("scope", "text", PLAN, "layer", "global: one magnitude threshold across all target layers",
                recipe_fields=("global_sparsity", "apply_globally"), choices=lambda: SCOPES, example="global"),
    PruneOption("targets", "patterns", PLAN, (), "layers to prune: names or re:REGEX (default: every Linear in "
                "the blocks)", recipe_fields=("targets", "params"), cli_flag="--target", example=("re:.*mlp.*",)),
    PruneOption("ignore", "patterns", PLAN, (), "layers to keep, added to lm_head: names or re:REGEX",
                recipe_fields=("ignore",), example=("re:.*down_proj",)),
    PruneOption("owl", "flag", PLAN, False, "OWL outlier-weighted layer-wise sparsity",
                recipe_fields=("sparsity_profile",), example=True),
    PruneOption("owl_m", "number", PLAN, OwlConfig.m, "OWL outlier threshold M (with owl=true)",
                recipe_fields=("owl_m",), example=4.0),
    PruneOption("owl_lambda", "number", PLAN, OwlConfig.lmbda, "OWL spread lambda (with owl=true)",
                recipe_fields=("owl_lmbda",), example=0.1),
    *_method_option_rows(),
    PruneOption("recipe", "text", RECIPE, None, "SparseML / llm-compressor recipe file instead of method",
                example="recipe.yaml"),
    PruneOption("calibration", "text", CALIBRATION, _CALIBRATION.data, "calibration text: c4, wikitext2 or a "
                ".txt/.jsonl FILE", example="wikitext2"),
    PruneOption("nsamples", "integer", CALIBRATION, _CALIBRATION.nsamples, "calibration sequences", example=64),
    PruneOption("seqlen", "integer", CALIBRATION, _CALIBRATION.seqlen, "tokens per calibration sequence (capped "
                "at the model's context)", example=256),
    PruneOption("seed", "integer", CALIBRATION, _CALIBRATION.seed, "calibration sampling seed", example=1),
    PruneOption("true_sequential", "flag", CALIBRATION, _CALIBRATION.true_sequential, "one forward per block, "
                "each layer pruned from the pruned layers' outputs (faster, more memory)", example=True),
)
BY_NAME = {row.name: row for row in OPTIONS}


def option_names() -> tuple[str, ...]:
    return tuple(BY_NAME)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise UserError(f"{name} must be a number, got {value!r}; e.g. {name}={BY_NAME[name].example}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}; e.g. {name}={BY_NAME[name].example}") from None


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """A list of patterns from YAML / CLI (a list) or model_args text (`a;re:b.*`)."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(LIST_SEPARATOR)
    patterns = tuple(str(item).strip() for item in items if str(item).strip())
    if not patterns:
        raise UserError(f"{name} is empty; give layer names or re:REGEX entries separated by "
                        f"'{LIST_SEPARATOR}', or leave {name} out")
    return patterns


PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "text": lambda name, value: str(value), "number": _number, "integer": parse_integer, "flag": parse_flag,
    "patterns": _patterns,
}


def parse_option(name: str, value: Any) -> Any:
    """`value` (text from model_args / CLI, or a YAML value) as option `name`'s type; UserError if it is not."""
    row = BY_NAME.get(name)
    if row is None:
        raise UserError(f"unknown pruning option {name!r}; options are: {', '.join(option_names())}")
    return PARSERS[row.kind](name, value)


def markdown_table() -> str:
    """The options as docs/pruning.md shows them: name, CLI flag, kind, default, recipe field, meaning."""
    lines = ["| model_args / grid spec | CLI | value | default | recipe field | meaning |", "|---|---|---|---|---|---|"]
    for row in OPTIONS:
        default = "-" if row.default in (None, ()) else row.default
        lines.append(f"| `{row.name}` | `{row.flag}` | {row.kind} | {default} | {', '.join(row.recipe_fields) or '-'} | "
                     f"{row.help} |")
    return "\n".join(lines)


__all__ = ["PLAN", "CALIBRATION", "RECIPE", "LIST_SEPARATOR", "PruneOption", "OPTIONS", "BY_NAME", "option_names",
           "parse_option", "markdown_table"]

if __name__ == "__main__":
    print(markdown_table())

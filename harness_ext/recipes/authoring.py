"""`sparse-bench recipe new`: a commented starter recipe that parses back to the plan it was asked for."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from string import Template

from ..errors import UserError
from ..pruning.methods import get_method
from ..pruning.plan import PruningPlan
from ..pruning.request import shortcut_plan
from .loader import load_recipe

FORMATS = ("llmcompressor", "sparseml-stage", "sparseml")


def _template(name: str) -> Template:
    return Template(resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8"))


def _targets_lines(method: str, recipe_format: str) -> str:
    """The targets (and ignore) fields: llm-compressor's habit for its one-shot modifiers, else a token."""
    if recipe_format == "llmcompressor" and method != "magnitude":
        return '      targets: ["Linear"]\n      ignore: ["lm_head"]'
    return f"      targets: {'__ALL__' if recipe_format == 'sparseml-stage' else '__ALL_PRUNABLE__'}"


def render_recipe(method: str, sparsity: float | None, structure: str | None, recipe_format: str) -> str:
    """The text of a starter recipe for `method` / `sparsity` / `structure` in `recipe_format`."""
    if recipe_format not in FORMATS:
        raise UserError(f"unknown recipe format {recipe_format!r}; use one of: {', '.join(FORMATS)}")
    step = shortcut_plan(method, sparsity, structure).steps[0]
    if not get_method(step.method).recipe_modifiers:
        raise UserError(f"no SparseML / llm-compressor modifier runs method={step.method}; prune with "
                        f"method={step.method} in model_args or the CLI instead of a recipe")
    if recipe_format == "sparseml" and step.method != "magnitude":
        raise UserError(f"SparseML v1 (!Modifier) recipes have no {step.method} modifier; write it with "
                        "--format sparseml-stage or --format llmcompressor")
    unstructured = "unstructured" if recipe_format == "sparseml" or step.method == "magnitude" else '"0:0"'
    values = {
        "sparsity": f"{step.sparsity:g}",
        "mask": f'"{step.structure}"' if step.structure else unstructured,
        "modifier": get_method(step.method).recipe_modifiers[0],
        "summary": f"{step.method}, sparsity {step.sparsity:g}, "
                   f"{step.structure or 'unstructured'} (sparse-bench shortcut: method={step.method},"
                   f"sparsity={step.sparsity:g}{f',structure={step.structure}' if step.structure else ''})",
    }
    if recipe_format != "sparseml":
        values["fields"] = _template(f"fields-{step.method}.yaml").substitute(values).rstrip("\n")
        values["targets"] = _targets_lines(step.method, recipe_format)
    return _template(f"{recipe_format}.yaml").substitute(values)


def check_round_trip(text: str, expected: PruningPlan) -> None:
    """Parse a rendered recipe and require the same pruning steps (a failure here is a bug, not user error)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "recipe.yaml")
        path.write_text(text, encoding="utf-8")
        parsed = load_recipe(path)
    if parsed.steps != expected.steps:
        raise AssertionError(f"starter recipe parses to {parsed.steps}, expected {expected.steps}")


__all__ = ["FORMATS", "render_recipe", "check_round_trip"]

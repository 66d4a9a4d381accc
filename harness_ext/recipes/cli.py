"""`sparse-bench recipe validate | explain | new`: check, explain and write pruning recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from tabulate import tabulate

from ..errors import UserError
from ..io import write_text_atomic
from ..pruning.methods import recipe_method_names
from ..pruning.plan import PruningPlan
from ..pruning.request import shortcut_plan
from .authoring import FORMATS, check_round_trip, render_recipe
from .loader import FORMAT_NAMES, LoadedRecipe, read_recipe
from .yaml_loader import parse_value

RECIPE_FILE = click.argument("recipe_file", type=click.Path(dir_okay=False, path_type=Path))
RECIPE_ARGS = click.option("--arg", "recipe_args", multiple=True, metavar="NAME=VALUE",
                           help="Set a recipe variable used by eval(...) (repeatable), like SparseML's recipe_args.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _parse_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    parsed = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--arg {pair!r}: expected NAME=VALUE; write it e.g. as --arg num_epochs=10")
        parsed[name.strip()] = parse_value(value)
    return parsed


def _load_model(name: str):
    from ..models import load_model

    return load_model(name)[0]


def _step_lines(plan: PruningPlan) -> list[str]:
    lines = []
    for index, step in enumerate(plan.steps, start=1):
        targets = ", ".join(step.targets) if step.targets else "every Linear/Conv1D in the transformer blocks"
        extra = f", per-layer {len(step.layer_sparsity)} rules" if step.layer_sparsity else ""
        extra += ", OWL" if step.owl else ""
        lines.append(f"step {index}: {step.method} sparsity {step.sparsity:g} {step.structure or 'unstructured'} "
                     f"scope={step.scope}{extra}; targets: {targets}; ignore: {', '.join(step.ignore)}")
    return lines or ["no pruning step: nothing new is pruned (the recipe only holds existing masks)"]


def _report(recipe: LoadedRecipe) -> dict[str, Any]:
    return {"recipe": str(recipe.path), "format": recipe.format, "prunes_nothing_new": recipe.prunes_nothing_new,
            "plan": recipe.plan.describe()}


@click.group("recipe")
def recipe_group() -> None:
    """Validate, explain and write SparseML / llm-compressor pruning recipes.

    \b
    Example:
      sparse-bench recipe new --method wanda --structure 2:4 --format llmcompressor --out wanda24.yaml
      sparse-bench recipe validate wanda24.yaml
      sparse-bench recipe explain wanda24.yaml --model smollm2-135m
    """


@recipe_group.command("validate")
@RECIPE_FILE
@click.option("--model", default=None, help="Also resolve targets on this model (name or directory).")
@RECIPE_ARGS
@JSON_OPTION
def validate_command(recipe_file: Path, model: str | None, recipe_args: tuple[str, ...], as_json: bool) -> None:
    """Parse and check a recipe; with --model, resolve its targets to layer names.

    \b
    Example:
      sparse-bench recipe validate recipe.yaml
      sparse-bench recipe validate recipe.md --model smollm2-135m --json
    """
    recipe = read_recipe(recipe_file, _parse_args(recipe_args))
    report = _report(recipe)
    if model is not None:
        from .check import layer_plan

        report["model"] = model
        report["layers"] = [row.layer for row in layer_plan(recipe, _load_model(model))]
    if as_json:
        click.echo(json.dumps({"valid": True, **report}, indent=2))
        return
    click.echo(f"OK {recipe.path} ({FORMAT_NAMES[recipe.format]}): {len(recipe.plan.steps)} pruning step(s)")
    for line in _step_lines(recipe.plan):
        click.echo(f"  {line}")
    for note in recipe.plan.notes[1:]:
        click.echo(f"  - {note}")
    if model is not None:
        click.echo(f"  model {model}: {len(report['layers'])} layers pruned, e.g. {', '.join(report['layers'][:3])}")


@recipe_group.command("explain")
@RECIPE_FILE
@click.option("--model", required=True, help="Model name (e.g. smollm2-135m) or directory.")
@RECIPE_ARGS
@JSON_OPTION
def explain_command(recipe_file: Path, model: str, recipe_args: tuple[str, ...], as_json: bool) -> None:
    """Per layer: method, sparsity and structure the recipe asks for, and the overall sparsity (no calibration).

    \b
    Example:
      sparse-bench recipe explain recipe.yaml --model smollm2-135m
    """
    from .check import layer_plan, summary

    recipe = read_recipe(recipe_file, _parse_args(recipe_args))
    loaded = _load_model(model)
    rows = layer_plan(recipe, loaded)
    totals = summary(rows, loaded)
    if as_json:
        click.echo(json.dumps({**_report(recipe), "model": model, "layers": [row.to_dict() for row in rows],
                               "summary": totals}, indent=2))
        return
    if recipe.prunes_nothing_new:
        click.echo(f"{recipe.path}: prunes nothing new (it only holds the masks already in the weights)")
        return
    click.echo(tabulate([[r.layer, r.method, f"{r.sparsity:.4g}", r.structure, r.params, r.zeros] for r in rows],
                        headers=["layer", "method", "sparsity", "structure", "params", "zeros"]))
    click.echo(f"\n{totals['layers']} layers, {totals['pruned_layer_params']:,} weights: "
               f"{totals['expected_zeros']:,} zeros = {totals['sparsity_of_pruned_layers']:.2%} of the pruned "
               f"layers, {totals['sparsity_of_model']:.2%} of all {totals['model_params']:,} parameters")
    if totals["owl"]:
        click.echo("OWL: the per-layer sparsities are decided from calibration data when pruning; the table "
                   "shows their mean")
    click.echo("Expected from the recipe, no calibration run; the engine measures the real zeros when it prunes.")
    for note in recipe.plan.notes:
        click.echo(f"  - {note}")


@recipe_group.command("new")
@click.option("--method", type=click.Choice(recipe_method_names()), required=True)
@click.option("--sparsity", type=float, default=None, help="Fraction of weights to zero, e.g. 0.5 (N:M fixes it).")
@click.option("--structure", default=None, help="unstructured (default) or N:M, e.g. 2:4.")
@click.option("--format", "recipe_format", type=click.Choice(FORMATS), default="llmcompressor", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: print to stdout).")
def new_command(method: str, sparsity: float | None, structure: str | None, recipe_format: str,
                out: Path | None) -> None:
    """Write a commented starter recipe for a method / sparsity / structure.

    \b
    Example:
      sparse-bench recipe new --method sparsegpt --sparsity 0.5 --format sparseml-stage --out sgpt50.yaml
      sparse-bench recipe new --method magnitude --structure 2:4 --format sparseml
    """
    text = render_recipe(method, sparsity, structure, recipe_format)
    check_round_trip(text, shortcut_plan(method, sparsity, structure))
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text_atomic(out, text)
        click.echo(f"wrote {out}", err=True)


__all__ = ["recipe_group"]

"""The request layer: pruning options from any way in -> a `PruneRequest` -> `prune_on_load` -> `PruneReport`.

`sparse-hf` and `sparse-encoder` (model_args), `sparse-bench prune` (flags) and the leaderboard (grid spec
fields) all hand their options, by the names of the one table (options.py), to `parse_request`, which checks
them before any model is loaded; `prune_on_load` then prunes the loaded model (or only measures it). A recipe
file goes through the same call (`recipe=PATH`) and builds the same plan as the equivalent options.

Rules every way in shares:
- `ignore` adds to the default `lm_head` (as a recipe's `ignore` does);
- an option that would be ignored is an error: plan options next to a recipe, plan options without a method,
  OWL's `owl_m` / `owl_lambda` without `owl=true`;
- a method's or update's options are checked against the registry (methods.py): one that does not apply is
  an error naming the methods it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UserError
from ..recipes import load_recipe
from .engine import prune
from .methods import method_names, option_fields
from .options import BY_NAME, CALIBRATION, PLAN, parse_option
from .plan import CalibrationConfig, OwlConfig, PruneStep, PruningPlan
from .report import PruneReport, report_as_loaded
from .targets import DEFAULT_IGNORE
from .values import NMStructure, parse_structure, validate_sparsity

OWL_SETTINGS = ("owl_m", "owl_lambda")


@dataclass(frozen=True)
class PruneRequest:
    """What to prune once the model is loaded (`plan` None: nothing, only measure) and with which data."""

    plan: PruningPlan | None
    calibration: CalibrationConfig


def shortcut_plan(method: str | None, sparsity: float | None, structure: str | None = None,
                  scope: str = "layer", source: str = "model_args", **step_options: Any) -> PruningPlan:
    """The one-step plan `method`, `sparsity` (or an N:M `structure`, which fixes it) and `step_options` (typed
    PruneStep fields: `update`, `options`, `targets`, `owl`, `ignore` as the complete list) describe.
    Raises UserError on anything invalid, before any model is loaded."""
    if method is None:
        raise UserError(f"sparsity/structure given without method; add method={'|'.join(method_names())}")
    nm = parse_structure(structure)
    if sparsity is None:
        if not isinstance(nm, NMStructure):  # unstructured and block:RxC need a sparsity
            raise UserError(f"method={method} needs a target; add sparsity=FRACTION (e.g. 0.5) or structure=N:M")
        sparsity = nm.sparsity
    step = PruneStep(method=method, sparsity=validate_sparsity(sparsity), structure=nm, scope=scope,
                     **step_options)
    return PruningPlan(steps=(step,), source=source)


def _owl(values: Mapping[str, Any]) -> OwlConfig | None:
    settings = [name for name in OWL_SETTINGS if name in values]
    if not values.get("owl"):
        if settings:
            raise UserError(f"{', '.join(settings)} given without owl=true would be ignored; add owl=true or "
                            f"remove {', '.join(settings)}")
        return None
    return OwlConfig(m=values.get("owl_m", OwlConfig.m), lmbda=values.get("owl_lambda", OwlConfig.lmbda))


def plan_from_options(values: Mapping[str, Any], source: str) -> PruningPlan | None:
    """The plan typed option values (`parse_option`'s) describe: a recipe, a method with its settings, or None
    when nothing asks for pruning. UserError for any option that would be ignored."""
    plan_options = [name for name in values if BY_NAME[name].group == PLAN]
    if "recipe" in values:
        if plan_options:
            raise UserError(f"a recipe already defines the pruning, so {', '.join(plan_options)} would be ignored; "
                            "give the recipe or these options, not both")
        return load_recipe(values["recipe"])
    if "method" not in values:
        if plan_options:
            raise UserError(f"{', '.join(plan_options)} given without method; add "
                            f"method={'|'.join(method_names())} (or recipe=FILE)")
        return None
    method_options = {name: value for name, value in values.items() if name in option_fields()}
    ignore = tuple(dict.fromkeys(DEFAULT_IGNORE + tuple(values.get("ignore", ()))))
    return shortcut_plan(values["method"], values.get("sparsity"), values.get("structure"),
                         scope=values.get("scope", "layer"), source=source, update=values.get("update"),
                         options=method_options, targets=tuple(values.get("targets", ())), ignore=ignore,
                         owl=_owl(values))


def parse_request(given: Mapping[str, Any], source: str) -> PruneRequest:
    """A `PruneRequest` from options by name (model_args text, CLI values or YAML); None values count as not
    given. `source` names the way in ("model_args", "cli", "grid spec") in the plan. UserError on any bad,
    unknown or ignored option."""
    values = {name: parse_option(name, value) for name, value in given.items() if value is not None}
    calibration = {name: value for name, value in values.items() if BY_NAME[name].group == CALIBRATION}
    data = calibration.pop("calibration", CalibrationConfig.data)
    return PruneRequest(plan=plan_from_options(values, source),
                        calibration=CalibrationConfig(data=data, **calibration))


def prune_on_load(model: Any, tokenizer: Any, request: PruneRequest | Mapping[str, Any], *,
                  progress: bool = False, batch_size: int | None = None) -> PruneReport:
    """Prune the loaded `model` in place as `request` asks (a `PruneRequest` or options by name), or only
    measure it when nothing is asked (or the recipe only holds masks); returns the measured report."""
    if not isinstance(request, PruneRequest):
        request = parse_request(request, source="model_args")
    if request.plan is not None and request.plan.steps:
        return prune(model, request.plan, request.calibration, tokenizer=tokenizer, progress=progress,
                     batch_size=batch_size)
    report = report_as_loaded(model)
    if request.plan is not None:
        report.plan = request.plan.describe()
        report.warnings.extend(request.plan.notes)
    return report


__all__ = ["PruneRequest", "shortcut_plan", "plan_from_options", "parse_request", "prune_on_load"]

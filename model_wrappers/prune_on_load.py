"""The pruning model_args shared by `sparse-hf` and `sparse-encoder`: parsed before loading, applied after.

    method, sparsity, structure, scope, recipe, calibration, nsamples, seqlen, seed, true_sequential

mean what they mean everywhere (docs/pruning.md); see `PruneOnLoad.from_model_args`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..harness_ext.pruning.engine import prune
from ..harness_ext.pruning.plan import (
    BlockStructure,
    CalibrationConfig,
    PruningPlan,
    parse_flag,
    parse_integer,
    plan_from_arguments,
)
from ..harness_ext.pruning.report import PruneReport, measure_sparsity

LOGGER = logging.getLogger("lm_eval.models.sparse_hf")  # under lm-eval's handler and format


@dataclass
class PruneOnLoad:
    """What to prune once the model is loaded (`plan` None: nothing, measure only) and with which data."""

    plan: PruningPlan | None
    calibration: CalibrationConfig

    @classmethod
    def from_model_args(cls, method: str | None = None, sparsity: float | None = None, structure: str | None = None,
                        scope: str = "layer", recipe: str | None = None, calibration: str = "c4",
                        nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
                        true_sequential: bool | str = False, update: str | None = None,
                        options: dict[str, Any] | None = None) -> "PruneOnLoad":
        """Parse the pruning model_args (text from lm-eval or typed values); UserError on any bad value.
        `update` and `options` (method options by name) are as in `plan_from_arguments`."""
        return cls(plan=plan_from_arguments(method, sparsity, structure, scope, recipe, update=update,
                                            options=options),
                   calibration=CalibrationConfig(data=str(calibration), nsamples=parse_integer("nsamples", nsamples),
                                                 seqlen=parse_integer("seqlen", seqlen),
                                                 seed=parse_integer("seed", seed),
                                                 true_sequential=parse_flag("true_sequential", true_sequential)))

    def block_structure(self) -> BlockStructure | None:
        """The block structure every step of the plan shares (for the `bsr` runtime kernel), else None."""
        structures = {step.structure for step in self.plan.steps} if self.plan is not None else set()
        single = structures.pop() if len(structures) == 1 else None
        return single if isinstance(single, BlockStructure) else None

    def apply(self, model: Any, tokenizer: Any, wrapper: str) -> PruneReport:
        """Prune `model` in place (or only measure it) and log the measured sparsity as `wrapper`."""
        if self.plan is not None and self.plan.steps:
            report = prune(model, self.plan, self.calibration, tokenizer=tokenizer)
        else:  # nothing to prune (no arguments, or a recipe that only holds masks): measure as loaded
            report = measure_sparsity(model)
            if self.plan is not None:
                report.plan = self.plan.describe()
                report.warnings.extend(self.plan.notes)
        LOGGER.info("%s: measured sparsity %.4f (%d of %d weights are zero in %d prunable layers); %d non-zero "
                    "parameters in the model", wrapper, report.overall_sparsity, report.zeros, report.numel,
                    len(report.layers), report.nonzero_params)
        for message in report.warnings:
            LOGGER.warning("%s: %s", wrapper, message)
        return report


__all__ = ["PruneOnLoad"]

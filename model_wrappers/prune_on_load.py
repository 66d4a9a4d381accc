"""The pruning model_args shared by `sparse-hf` and `sparse-encoder`: parsed before loading, applied after.

Every option of the one table (harness_ext/pruning/options.py; docs/pruning.md lists them) is a model_args
key with the meaning it has on the CLI, in grid specs and in recipes; lists (`targets`, `ignore`) are
separated by `;` because lm-eval splits model_args on commas. The work is the request layer's
(`parse_request`, `prune_on_load`); this adds lm-eval's logging.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..harness_ext.pruning.options import option_names
from ..harness_ext.pruning.report import PruneReport
from ..harness_ext.pruning.request import PruneRequest, parse_request, prune_on_load
from ..harness_ext.pruning.values import BlockStructure

LOGGER = logging.getLogger("lm_eval.models.sparse_hf")  # under lm-eval's handler and format


@dataclass
class PruneOnLoad:
    """The parsed pruning request of one model_args string."""

    request: PruneRequest

    @classmethod
    def from_model_args(cls, model_args: dict[str, Any]) -> "PruneOnLoad":
        """Take (pop) the pruning options out of `model_args` (text from lm-eval or typed values) and parse them;
        the rest stays for the model. UserError on any bad, unknown or ignored option."""
        given = {name: model_args.pop(name) for name in list(model_args) if name in option_names()}
        return cls(parse_request(given, source="model_args"))

    def block_structure(self) -> BlockStructure | None:
        """The block structure every step of the plan shares (for the `bsr` runtime kernel), else None."""
        plan = self.request.plan
        structures = {step.structure for step in plan.steps} if plan is not None else set()
        single = structures.pop() if len(structures) == 1 else None
        return single if isinstance(single, BlockStructure) else None

    def apply(self, model: Any, tokenizer: Any, wrapper: str) -> PruneReport:
        """Prune `model` in place (or only measure it) and log the measured sparsity as `wrapper`."""
        report = prune_on_load(model, tokenizer, self.request)
        LOGGER.info("%s: measured sparsity %.4f (%d of %d weights are zero in %d prunable layers); %d non-zero "
                    "parameters in the model", wrapper, report.overall_sparsity, report.zeros, report.numel,
                    len(report.layers), report.nonzero_params)
        for message in report.warnings:
            LOGGER.warning("%s: %s", wrapper, message)
        return report


__all__ = ["PruneOnLoad"]

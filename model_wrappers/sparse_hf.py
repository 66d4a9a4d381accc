"""`sparse-hf`: lm-eval's HFLM that prunes the model on load and reports the sparsity it measured.

    lm_eval --model sparse-hf \\
      --model_args pretrained=smollm2-135m,dtype=float16,method=wanda,sparsity=0.5,structure=2:4 ...

Everything HFLM accepts keeps working; the pruning arguments are listed in `SparseHFLM.__init__`. With no
pruning argument the model is evaluated as loaded (an already pruned checkpoint) and its sparsity is
measured all the same. The measurement lands in the results JSON under `config.sparsity`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM  # importing lm_eval.models first registers the built-ins

from ..harness_ext.checkpoints import load_checkpoint, read_record
from ..harness_ext.errors import UserError
from ..harness_ext.models import parse_dtype, resolve_model_path
from ..harness_ext.pruning.engine import prune
from ..harness_ext.pruning.plan import CalibrationConfig, parse_flag, parse_integer, plan_from_arguments
from ..harness_ext.pruning.report import measure_sparsity

LOGGER = logging.getLogger("lm_eval.models.sparse_hf")  # under lm-eval's handler and format
UNKNOWN_ARGUMENT = re.compile(r"got an unexpected keyword argument '(\w+)'")


class _CheckedAutoClass:
    """Stands in for HFLM's AUTO_MODEL_CLASS while loading: `from_pretrained` goes through our checked
    loader, which reads compressed checkpoints and refuses missing or randomly initialised weights."""

    def __init__(self, auto_class: Any) -> None:
        self.auto_class = auto_class

    def from_pretrained(self, path: str, **kwargs: Any):
        return load_checkpoint(self.auto_class, path, **kwargs)


@register_model("sparse-hf")
class SparseHFLM(HFLM):
    """HFLM + pruning on load + measured sparsity in the results."""

    def __init__(self, pretrained: Any = None, method: str | None = None, sparsity: float | None = None,
                 structure: str | None = None, scope: str = "layer", recipe: str | None = None,
                 calibration: str = "c4", nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
                 true_sequential: bool | str = False, **kwargs: Any) -> None:
        """`method`: magnitude | wanda | sparsegpt; `sparsity`: zero fraction per pruned layer in [0, 1);
        `structure`: unstructured | N:M (keep N of every M, e.g. 2:4); `scope`: layer | global (global: one
        magnitude threshold over all pruned layers); `recipe`: a SparseML / llm-compressor recipe file;
        `calibration` (c4 | wikitext2 | FILE), `nsamples`, `seqlen` (tokens), `seed`: Wanda/SparseGPT data;
        `true_sequential`: one forward per block, each layer pruned from the already pruned layers' outputs
        (faster, holds the calibration activations; see docs/pruning.md).
        """
        if pretrained is None:
            raise UserError("model_args has no pretrained=MODEL (a checkpoint folder, hub id or short name such as "
                            "smollm2-135m); check its spelling")
        plan = plan_from_arguments(method, sparsity, structure, scope, recipe)
        calibration_config = CalibrationConfig(
            data=str(calibration), nsamples=parse_integer("nsamples", nsamples),
            seqlen=parse_integer("seqlen", seqlen), seed=parse_integer("seed", seed),
            true_sequential=parse_flag("true_sequential", true_sequential))
        requested_dtype = parse_dtype(kwargs.get("dtype", "auto"))
        if isinstance(pretrained, str):
            pretrained = resolve_model_path(pretrained)
        try:
            super().__init__(pretrained=pretrained, **kwargs)
        except TypeError as error:  # an unknown model_args key reaches the model class's constructor
            unknown = UNKNOWN_ARGUMENT.search(str(error))
            if unknown is None:
                raise
            raise UserError(f"model_args: {unknown.group(1)!r} is an option of neither sparse-hf, lm-eval's hf "
                            "model nor the model's from_pretrained; check its spelling") from error
        record = read_record(Path(pretrained)) if isinstance(pretrained, str) and Path(pretrained).is_dir() else None
        self.finetune_record = (record or {}).get("finetune_record")  # a `sparse-bench finetune` output
        if requested_dtype != "auto" and self.model.dtype != requested_dtype:
            raise UserError(f"dtype={kwargs['dtype']} was asked but the model loaded as {self.model.dtype}; "
                            "pass dtype=auto or convert the checkpoint")
        if plan is not None and plan.steps:
            self.sparsity_report = prune(self.model, plan, calibration_config, tokenizer=self.tokenizer)
        else:  # nothing to prune (no arguments, or a recipe that only holds masks): measure as loaded
            self.sparsity_report = measure_sparsity(self.model)
            if plan is not None:
                self.sparsity_report.plan = plan.describe()
                self.sparsity_report.warnings.extend(plan.notes)
        report = self.sparsity_report
        LOGGER.info("sparse-hf: measured sparsity %.4f (%d of %d weights are zero in %d prunable layers); "
                       "%d non-zero parameters in the model", report.overall_sparsity, report.zeros, report.numel,
                       len(report.layers), report.nonzero_params)
        for message in report.warnings:
            LOGGER.warning("sparse-hf: %s", message)

    def _create_model(self, pretrained: str, **kwargs: Any) -> None:
        auto_class = self.AUTO_MODEL_CLASS
        self.AUTO_MODEL_CLASS = _CheckedAutoClass(auto_class)
        try:
            super()._create_model(pretrained, **kwargs)
        finally:
            self.AUTO_MODEL_CLASS = auto_class

    def get_model_info(self) -> dict:
        """HFLM's model info plus `sparsity` (what was pruned, the zeros measured in the weights) and, for a
        fine-tuned checkpoint, `finetune` (its record: mode, data, steps, precision, zeros before/after)."""
        finetuned = {"finetune": self.finetune_record} if self.finetune_record else {}
        return {**super().get_model_info(), "sparsity": self.sparsity_report.to_dict(), **finetuned}

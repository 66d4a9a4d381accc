"""`sparse-hf`: lm-eval's HFLM that prunes the model on load and reports the sparsity it measured.

    lm_eval --model sparse-hf \\
      --model_args pretrained=smollm2-135m,dtype=float16,method=wanda,sparsity=0.5,structure=2:4 ...

Everything HFLM accepts keeps working; the pruning arguments are listed in `SparseHFLM.__init__`. With no
pruning argument the model is evaluated as loaded (an already pruned checkpoint) and its sparsity is
measured all the same. The measurement lands in the results JSON under `config.sparsity`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM  # importing lm_eval.models first registers the built-ins

from ..harness_ext.checkpoints import load_checkpoint, read_record
from ..harness_ext.errors import UserError
from ..harness_ext.models import find_or_prepare_model, model_family, parse_dtype
from ..harness_ext.runtime.choose import apply_runtime, parse_runtime, runtime_shapes
from .prune_on_load import PruneOnLoad

UNKNOWN_ARGUMENT = re.compile(r"got an unexpected keyword argument '(\w+)'")


class _CheckedAutoClass:
    """Stands in for HFLM's AUTO_MODEL_CLASS while loading: `from_pretrained` goes through our checked
    loader, which reads compressed checkpoints and refuses missing or randomly initialised weights."""

    def __init__(self, auto_class: Any) -> None:
        self.auto_class = auto_class

    def from_pretrained(self, path: str, **kwargs: Any):
        return load_checkpoint(self.auto_class, path, **kwargs)


def check_backend(config: Any, backend: str) -> None:
    """UserError when HFLM's `backend` (default | causal | seq2seq) cannot evaluate a model of this family."""
    family, name = model_family(config), getattr(config, "model_type", "this model")
    if family == "encoder-only":
        raise UserError(f"{name} is an encoder-only model, which sparse-hf (causal or seq2seq language models) "
                        "cannot evaluate; use --model sparse-encoder")
    if family == "encoder-decoder" and backend == "causal":
        raise UserError(f"{name} is an encoder-decoder model and backend=causal would load its decoder alone; "
                        "use backend=seq2seq or leave backend out")
    if family == "decoder-only" and backend == "seq2seq":
        raise UserError(f"{name} is a decoder-only model and has no seq2seq form; use backend=causal or leave "
                        "backend out")


@register_model("sparse-hf")
class SparseHFLM(HFLM):
    """HFLM + pruning on load + measured sparsity in the results."""

    def __init__(self, pretrained: Any = None, runtime: str = "dense", **kwargs: Any) -> None:
        """`pretrained`: a checkpoint folder, hub id or short name; the pruning options of docs/pruning.md
        (`method`, `sparsity`, `structure`, `scope`, `targets`, `ignore`, `owl`, each method's and update's
        options, `recipe`, `calibration`, `nsamples`, `seqlen`, `seed`, `true_sequential`); `runtime`: dense |
        sparse | auto | a kernel name, which kernel runs each pruned layer (docs/runtime.md); every other key
        is lm-eval's hf model's.
        """
        if pretrained is None:
            raise UserError("model_args has no pretrained=MODEL (a checkpoint folder, hub id or short name such as "
                            "smollm2-135m); check its spelling")
        pruning = PruneOnLoad.from_model_args(kwargs)
        runtime = parse_runtime(runtime)
        requested_dtype = parse_dtype(kwargs.get("dtype", "auto"))
        if isinstance(pretrained, str):
            pretrained = find_or_prepare_model(pretrained)
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
        self.sparsity_report = pruning.apply(self.model, self.tokenizer, "sparse-hf")
        self.runtime_report = apply_runtime(self.model, runtime, runtime_shapes(self.batch_size),
                                            pruning.block_structure())

    def _get_backend(self, config: Any, backend: str = "default", trust_remote_code: bool | None = False) -> None:
        """HFLM's backend choice, refused (before any weights load) where it cannot fit the model's family."""
        check_backend(config, backend)
        super()._get_backend(config, backend=backend, trust_remote_code=trust_remote_code)

    def _create_model(self, pretrained: str, **kwargs: Any) -> None:
        auto_class = self.AUTO_MODEL_CLASS
        self.AUTO_MODEL_CLASS = _CheckedAutoClass(auto_class)
        try:
            super()._create_model(pretrained, **kwargs)
        finally:
            self.AUTO_MODEL_CLASS = auto_class

    def get_model_info(self) -> dict:
        """HFLM's model info plus `sparsity` (what was pruned, the zeros measured in the weights) and, for a
        fine-tuned checkpoint, `finetune` (its record: mode, data, steps, precision, zeros before/after), and
        `runtime` (the kernel chosen per pruned layer, its timings and any run-time fallback)."""
        finetuned = {"finetune": self.finetune_record} if self.finetune_record else {}
        return {**super().get_model_info(), "sparsity": self.sparsity_report.to_dict(), **finetuned,
                "runtime": self.runtime_report.to_dict()}
